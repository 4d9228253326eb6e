"""`status --cloud` and `down --cluster NAME` for what the clouds hold under cloudtrain's tag that
this machine's records do not know (issue 12 item 5).

AWS through boto3 against moto; GCP and Azure against fakes of their REST APIs over real HTTP
(tests/test_leftovers_rest.py's, taught the two list calls this adds: an aggregated list with a
`labels.KEY:*` presence filter, and ARM's `tagName eq` filter plus Resources - List By Resource
Group); no credentials through the real CLI.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws

from conftest import one_line_error
from test_leftovers_rest import SUB, P, FakeArm, FakeCompute, _gcp_error, plant_gcp, serve

from cloudtrain import lifecycle
from cloudtrain.errors import BadInput, CloudtrainError, NotFound, ProvisionError
from cloudtrain.provisioner import inventory
from cloudtrain.provisioner.contract import CLUSTER_TAG
from cloudtrain.provisioner.rest import Bearer
from cloudtrain.spec import ClusterSpec
from cloudtrain.state import ClusterRecord, Store

REGION = "us-east-1"
_CLOUD_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "GOOGLE_APPLICATION_CREDENTIALS",
              "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CONFIG", "ARM_CLIENT_ID", "ARM_CLIENT_SECRET", "ARM_SUBSCRIPTION_ID", "ARM_USE_MSI", "AZURE_CONFIG_DIR")


@pytest.fixture
def bare(monkeypatch, tmp_path, home):
    """No cloud's credentials anywhere: an empty HOME, no cloud variables."""
    for k in _CLOUD_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return home


@pytest.fixture
def ec2(bare, monkeypatch):
    # MOTO_EC2_LOAD_DEFAULT_AMIS: moto builds each region's backend without its ~1,000 images
    # (it does not check an instance's AMI), so asking every region stays quick.
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        yield boto3.client("ec2", region_name=REGION)
    # moto keeps each region's backend across mocks (its end re-inits them in place, under the
    # setting above): drop them, so later tests' backends are built with the default images.
    from moto.core.base_backend import BackendDict

    for backends in BackendDict._instances:
        backends.clear()
    BackendDict._instances.clear()


def _vm(ec2, cluster: str | None, region_client=None) -> str:
    client = region_client or ec2
    tags = [{"Key": "managed-by", "Value": "cloudtrain"}] + ([{"Key": CLUSTER_TAG, "Value": cluster}] if cluster else [])
    spec = [{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}]
    return client.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="g4dn.xlarge", TagSpecifications=spec)["Instances"][0]["InstanceId"]


def _record(store: Store, name: str, provider: str) -> None:
    cdir = store.cluster_dir(name)
    cdir.create(provider=provider)
    cdir.save(ClusterRecord(spec=ClusterSpec(name=name, provider=provider, gpu="t4", region=REGION)))


def _alive(ec2) -> set[str]:
    return {i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"] if i["State"]["Name"] not in ("terminated", "shutting-down")}


@pytest.fixture
def aws_three(ec2):
    """An instance (+ its volume, an elastic IP) of a cluster no record knows, one of a cluster
    recorded here, and an untagged one."""
    ghost = _vm(ec2, "ghost")
    eip = ec2.allocate_address(Domain="vpc", TagSpecifications=[{"ResourceType": "elastic-ip", "Tags": [{"Key": CLUSTER_TAG, "Value": "ghost"}]}])["AllocationId"]
    west = boto3.client("ec2", region_name="eu-west-1")
    ghost_west = _vm(ec2, "ghost", west)  # the same cluster in another region: found too
    store = Store()
    _record(store, "kept", "aws")
    return {"store": store, "ghost": ghost, "ghost_west": ghost_west, "eip": eip, "kept": _vm(ec2, "kept"), "plain": _vm(ec2, None), "west": west}


def test_aws_listing_shows_only_what_no_record_knows_across_regions(aws_three):
    seen = inventory.unknown(aws_three["store"], None)
    assert seen.asked == ["aws"] and seen.failed == []
    assert len(seen.skipped) == 2 and seen.skipped[0].startswith("gcp: not asked, no credentials found")
    rows = {(t.kind, t.id, t.cluster) for t in seen.found}
    assert ("instance", aws_three["ghost"], "ghost") in rows and ("instance", aws_three["ghost_west"], "ghost") in rows
    assert ("elastic-ip", aws_three["eip"], "ghost") in rows
    assert any(k == "volume" for k, _, _ in rows)
    assert {t.cluster for t in seen.found} == {"ghost"}, "a recorded or untagged instance was listed"
    text = "\n".join(inventory.lines(seen.found))
    assert "us-east-1" in text and "eu-west-1" in text and "g4dn.xlarge" in text and "running" in text
    assert "$" in text  # the catalog prices a running g4dn.xlarge


def test_aws_down_of_an_unrecorded_name_removes_its_resources_and_nothing_else(aws_three, capsys):
    ec2 = boto3.client("ec2", region_name=REGION)
    said: list[str] = []
    assert lifecycle.down(aws_three["store"], "ghost", said.append, force=True) is True
    assert _alive(ec2) == {aws_three["kept"], aws_three["plain"]}
    assert _alive(aws_three["west"]) == set()
    assert ec2.describe_addresses()["Addresses"] == []
    assert "ghost" in capsys.readouterr().out  # what was deleted was shown first
    assert said[-1].startswith("cluster ghost is down")
    with pytest.raises(NotFound):  # now nothing holds the name: a typo again
        lifecycle.down(aws_three["store"], "ghost", said.append, force=True)


def test_down_of_a_name_no_cloud_holds_is_still_a_typo_and_a_destroyed_ones_leak_goes(ec2):
    kept = _vm(ec2, "someone")
    store, said = Store(), []
    with pytest.raises(NotFound, match="unknown cluster 'nobody'"):
        lifecycle.down(store, "nobody", said.append, force=True)
    store.bury("old", {"provider": "aws", "created_at": 0})  # destroyed from here, yet a machine of it bills
    leak = _vm(ec2, "old")
    assert lifecycle.down(store, "old", said.append, force=True) is True
    assert leak not in _alive(ec2)
    assert lifecycle.down(store, "old", said.append, force=True) is False and "already destroyed" in said[-1]
    assert _alive(ec2) == {kept}


# --- GCP and Azure, REST fakes ---------------------------------------------------------------


class ListingCompute(FakeCompute):
    """Also answers the presence filter `labels.KEY:*` of an aggregated list (403 when
    "aggregated" is in `forbidden`)."""

    def handle(self, method, path, query, headers):
        flt = (query.get("filter") or [""])[0]
        if "/aggregated/" in path and "aggregated" in self.forbidden:
            return _gcp_error(403, "forbidden", f"Required 'compute.instances.list' permission for 'projects/{P}'")
        if method == "GET" and "/aggregated/" in path and flt.endswith(":*"):
            plural, key = path.rstrip("/").rsplit("/", 1)[1], flt[: -2].removeprefix("labels.")
            self.filters.append(flt)
            items: dict[str, dict] = {"zones/europe-west4-a": {"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "There are no results for scope 'zones/europe-west4-a' on this page."}}}
            for (pl, scope, _), r in sorted(self.res.items()):
                if pl == plural and key in (r.get("labels") or {}):
                    items.setdefault(scope, {plural: []})[plural].append(r)
            return 200, {"kind": f"compute#{plural[:-1]}AggregatedList", "id": f"projects/{P}/aggregated/{plural}", "items": items}, None
        return super().handle(method, path, query, headers)


def test_gcp_listing_and_down_of_an_unrecorded_cluster(bare):
    fake = ListingCompute()
    server, url = serve(fake)
    try:
        plant_gcp(fake, "lost")
        fake.res[("instances", "zones/us-central1-a", "lost-0")] |= {"status": "RUNNING", "machineType": f"https://www.googleapis.com/compute/v1/projects/{P}/zones/us-central1-a/machineTypes/n1-standard-4",
                                                                   "guestAccelerators": [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}]}
        plant_gcp(fake, "mine")
        fake.add("instances", "zones/us-central1-b", "by-hand", labels={"team": "x"})
        store = Store()
        _record(store, "mine", "gcp")
        http = Bearer("ya29.test")  # the real transport; the fake API does not check the token
        conns = {"gcp": {"http": http, "project": P, "api": f"{url}/compute/v1"}}
        seen = inventory.unknown(store, "gcp", conns=conns)
        assert {(t.kind, t.id, t.where, t.cluster) for t in seen.found} == {("instance", "lost-0", "us-central1-a", "lost"), ("disk", "lost-data", "us-central1-a", "lost")}
        assert "n1-standard-4 + 1x nvidia-tesla-t4" in "\n".join(inventory.lines(seen.found))
        mine_before = {n for n in fake.names() if "mine" in n or "by-hand" in n}
        assert lifecycle_down(store, "lost", conns)
        assert fake.names() == mine_before, "the sweep left the lost cluster's network or touched another"

        fake.forbidden.add("aggregated")  # a cloud that cannot be listed: one line, and no typo verdict
        seen = inventory.unknown(store, None, conns=conns)
        assert seen.failed and "HTTP 403 forbidden" in seen.failed[0] and seen.found == []
        with pytest.raises(CloudtrainError, match="a cloud could not be asked") as e:
            inventory.down_unrecorded(store, "lost", lambda _: None, True, None, conns=conns)
        assert not isinstance(e.value, BadInput)  # exit 1, not 2: a typo is not what we know
    finally:
        server.shutdown()
        server.server_close()


class ListingArm(FakeArm):
    """Also answers `tagName eq` alone and Resources - List By Resource Group."""

    def __init__(self) -> None:
        super().__init__(polls=1)
        self.contents: dict[str, list[dict]] = {}

    def handle(self, method, path, query, headers):
        parts = path.strip("/").split("/")
        flt = (query.get("$filter") or [""])[0]
        if method == "GET" and parts[2:] == ["resourcegroups"] and "tagValue" not in flt:
            key = flt.split("tagName eq ", 1)[1].strip("'")
            return 200, {"value": [g for g in self.groups.values() if any(k.lower() == key for k in g["tags"])]}, None
        if method == "GET" and len(parts) == 5 and parts[4] == "resources":
            rg = parts[3]
            return 200, {"value": [{"id": f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/{t}/{n}", "name": n, "type": t, "location": "eastus"} for t, n in self.contents.get(rg, [])]}, None
        return super().handle(method, path, query, headers)


def test_azure_listing_and_down_of_an_unrecorded_cluster(bare, monkeypatch):
    fake = ListingArm()
    server, fake.url = serve(fake)
    try:
        fake.add("lost-rg", "eastus", {CLUSTER_TAG: "lost", "managed-by": "cloudtrain"})
        fake.contents["lost-rg"] = [("Microsoft.Compute/virtualMachines", "lost-0"), ("Microsoft.Compute/disks", "lost-0-os"),
                                    ("Microsoft.Network/publicIPAddresses", "lost-0-ip"), ("Microsoft.Network/virtualNetworks", "lost-net")]
        fake.add("mine-rg", "westus2", {CLUSTER_TAG: "mine"})
        fake.add("other", "eastus", {"team": "x"})
        store = Store()
        _record(store, "mine", "azure")
        conns = {"azure": {"http": Bearer("t"), "subscription_id": SUB, "arm": fake.url}}
        seen = inventory.unknown(store, "azure", conns=conns)
        assert [(t.id, t.where, t.cluster, t.bills) for t in seen.found] == [("lost-rg", "eastus", "lost", "1 VM(s), 1 disk(s), 1 public IP(s)")]
        monkeypatch.setattr("cloudtrain.provisioner.leftovers.azure.time.sleep", lambda s: None)
        fake.locked.add("lost-rg")  # a lock on the group: down fails naming what remains, exit 1
        with pytest.raises(ProvisionError, match="could not remove 1 resource.*lost-rg.*ScopeLocked"):
            lifecycle_down(store, "lost", conns)
        fake.locked.clear()
        assert lifecycle_down(store, "lost", conns)
        assert set(fake.groups) == {"mine-rg", "other"}
    finally:
        server.shutdown()
        server.server_close()


def lifecycle_down(store: Store, name: str, conns: dict) -> bool:
    return inventory.down_unrecorded(store, name, lambda _: None, force=True, confirm=None, show=lambda _: None, conns=conns)


# --- the real CLI, no credentials -------------------------------------------------------------


def test_cli_without_credentials_says_one_line_per_cloud_and_down_stays_a_typo(bare, cli):
    proc = cli("status", "--cloud")
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert [x.split(":")[1].strip() for x in lines] == ["aws", "gcp", "azure"], proc.stderr
    assert all("not asked, no credentials found. Run" in x for x in lines) and "Traceback" not in proc.stderr
    assert "asked: none" in proc.stdout
    data = json.loads(cli("status", "--cloud", "--json").stdout)["cloud"]
    assert data["asked"] == [] and data["unknown"] == [] and len(data["skipped"]) == 3
    proc = cli("status", "--cloud", "--provider", "gcp")  # asked for by name: its failure is the answer
    assert proc.returncode == 1 and one_line_error(proc).startswith("cloudtrain: error: gcp: not asked, no usable Google application default credentials")
    proc = cli("down", "--cluster", "ghost", "--provider", "azure")
    assert proc.returncode == 1 and "cloudtrain: error: azure: not asked, no Azure login found. Run `az login`" in one_line_error(proc)
    proc = cli("status", "--cloud", "--provider", "local")
    assert proc.returncode == 2 and "is not a cloud to look in" in one_line_error(proc)
    proc = cli("down", "--cluster", "ghost")
    assert proc.returncode == 2 and "unknown cluster 'ghost'" in one_line_error(proc)


# --- the real CLI against moto: the listing and the prompt on a terminal ----------------------

_RUNNER = '''
import json, sys
import boto3
from moto import mock_aws

with mock_aws():
    ec2 = boto3.client("ec2", region_name="us-east-1")
    def vm(value):
        tags = [{"ResourceType": "instance", "Tags": [{"Key": "cloudtrain-cluster", "Value": value}]}]
        return ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="g4dn.xlarge", TagSpecifications=tags)["Instances"][0]["InstanceId"]
    ids = {"ghost": vm("ghost"), "other": vm("other")}
    from cloudtrain.cli import main
    from cloudtrain.provisioner.leftovers import aws
    aws.regions = lambda session=None: ["us-east-1"]  # every region is asked in the tests in-process; here, speed
    code = 0
    try:
        main(sys.argv[2:])
    except SystemExit as e:
        code = e.code
    states = {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    with open(sys.argv[1], "w") as f:
        json.dump({"ids": ids, "states": states}, f)
    sys.exit(code)
'''


def _cli_under_moto(tmp_path, *args: str, typed: bytes | None = None) -> tuple[int, str, str, dict]:
    """The real CLI in a process of its own whose EC2 is moto: (exit code, stdout, stderr,
    instance states after). With `typed`, stdin and stdout are a terminal that gets those keys."""
    import os
    import pty
    import subprocess
    import sys

    runner, result = tmp_path / "runner.py", tmp_path / "result.json"
    runner.write_text(_RUNNER)
    cmd = [sys.executable, str(runner), str(result), *args]
    if typed is None:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        return proc.returncode, proc.stdout, proc.stderr, json.loads(result.read_text())
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    os.write(master, typed)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the terminal's other end closed
            break
        if not chunk:
            break
        out += chunk
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    os.close(master)
    return proc.returncode, out.decode(errors="replace"), err, json.loads(result.read_text())


def test_cli_lists_and_removes_an_unrecorded_cluster_only_with_force_or_its_name_typed(ec2, tmp_path):
    store = Store()
    _record(store, "other", "aws")
    code, out, err, after = _cli_under_moto(tmp_path, "status", "--cloud", "--provider", "aws")
    assert code == 0, err
    assert "unknown to the records here" in out and after["ids"]["ghost"] in out and after["ids"]["other"] not in out

    code, out, err, after = _cli_under_moto(tmp_path, "down", "--cluster", "ghost")  # not a terminal, no --force
    assert code == 2 and "without confirmation" in one_line_error(SimpleNamespace(stderr=err)) and "--force" in err
    assert after["ids"]["ghost"] in out and set(after["states"].values()) == {"running"}

    code, out, err, after = _cli_under_moto(tmp_path, "down", "--cluster", "ghost", typed=b"nope\n")
    assert code == 2 and "not confirmed" in err and "type ghost to delete them" in out + err  # input() prompts on stderr at a terminal
    assert "i-" in out and "running" in out  # what would go was shown first
    assert set(after["states"].values()) == {"running"}

    code, out, err, after = _cli_under_moto(tmp_path, "down", "--cluster", "ghost", typed=b"ghost\n")
    assert code == 0, err
    assert after["states"] == {after["ids"]["ghost"]: "terminated", after["ids"]["other"]: "running"}
    assert "cluster ghost is down" in err
