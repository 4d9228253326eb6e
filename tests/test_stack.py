"""The Automation API wrapper and the cloud provisioners' flow, with no Pulumi CLI.

`pulumi.automation.create_or_select_stack` / `select_stack` are replaced by a recorder (the
boundary where the SDK would start the CLI), so the tests see exactly what cloudtrain asks of
the engine: stack and project names, backend URL, secrets provider, passphrase, config values.
The recorded inline program is then run under Pulumi mocks, closing the loop between the config
cloudtrain writes and the config the program reads.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pulumi
import pulumi.automation as auto
import pytest
from moto import mock_aws

from cloudtrain import provisioner
from cloudtrain.errors import BadInput, MissingTool, PreflightError, ProvisionError
from cloudtrain.provisioner import cloud, myip, stack as stackmod
from cloudtrain.provisioner.preflight import pulumi_cli
from cloudtrain.provisioner.pulumi_run import KILLED_MARKER
from cloudtrain.spec import ClusterSpec
from cloudtrain.state import ClusterRecord, Store
from pulumi_mocks import run_mocked

CIDR = "198.51.100.7/32"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: these tests must stay offline."""

    def refuse(*a, **k):
        raise AssertionError("test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUDTRAIN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PULUMI_BACKEND_URL", raising=False)
    return tmp_path / "home"


def _result(stderr: str = "", stdout: str = "") -> auto.CommandResult:
    return auto.CommandResult(stdout=stdout, stderr=stderr, code=1)


class FakeCli:
    """The workspace's `pulumi_command`: the raw CLI calls destroy makes (cancel, export, import)."""

    def __init__(self, engine: "FakeEngine") -> None:
        self.engine = engine

    def run(self, args, cwd, env) -> auto.CommandResult:
        self.engine.calls.append(("cli", " ".join(args[:2])))
        if args[:2] == ["stack", "export"]:
            return auto.CommandResult(stdout=json.dumps(self.engine.exported), stderr="", code=0)
        if args[:2] == ["stack", "import"]:
            path = Path(args[args.index("--file") + 1])
            self.engine.imported = (json.loads(path.read_text()), stat.S_IMODE(path.stat().st_mode))
        return auto.CommandResult(stdout="", stderr="", code=0)


class FakeWorkspace:
    def __init__(self, engine: "FakeEngine") -> None:
        self.engine = engine
        self.pulumi_command = FakeCli(engine)
        self.work_dir = "/nonexistent"
        self.env_vars: dict[str, str] = {}

    def remove_stack(self, name: str) -> None:
        self.engine.calls.append(("remove_stack", name))
        self.engine.stacks.discard(name)


class FakeStack:
    def __init__(self, engine: "FakeEngine", name: str) -> None:
        self.engine = engine
        self.name = name
        self.workspace = FakeWorkspace(engine)

    def set_all_config(self, config: dict[str, auto.ConfigValue]) -> None:
        self.engine.config = {k: (v.value, v.secret) for k, v in config.items()}

    def up(self, **kw) -> Any:
        self.engine.calls.append(("up", self.name))
        if self.engine.fail:
            raise self.engine.fail
        if self.engine.on_up:
            self.engine.on_up()
        outputs = {"nodes": auto.OutputValue(value=self.engine.nodes, secret=False)}
        return type("UpResult", (), {"outputs": outputs})()

    def preview(self, on_output=None, **kw) -> Any:
        self.engine.calls.append(("preview", self.name))
        on_output("+ 12 to create\n")
        return type("PreviewResult", (), {"stdout": "+ 12 to create\n"})()

    def destroy(self, **kw) -> None:
        self.engine.calls.append(("destroy", self.name))
        if self.engine.fail:
            raise self.engine.fail

    def outputs(self) -> dict[str, auto.OutputValue]:
        return {"nodes": auto.OutputValue(value=self.engine.nodes, secret=False)}


class FakeEngine:
    """Stands in for the Pulumi CLI at the pulumi.automation boundary and records requests."""

    def __init__(self) -> None:
        self.opened: list[dict[str, Any]] = []
        self.calls: list[tuple[str, str]] = []
        self.stacks: set[str] = set()
        self.config: dict[str, tuple[str, bool]] = {}
        self.fail: Exception | None = None
        self.on_up = None
        self.exported: dict[str, Any] = {"version": 3, "deployment": {"resources": [], "pending_operations": []}}
        self.imported: tuple[dict[str, Any], int] | None = None
        self.nodes = [
            {"name": "c1-0", "publicIp": "203.0.113.5", "privateIp": "10.77.1.5", "sshUser": "ubuntu", "sshPort": 22, "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA host"}
        ]

    def create_or_select_stack(self, stack_name, project_name=None, program=None, work_dir=None, opts=None):
        self.opened.append(dict(stack_name=stack_name, project_name=project_name, program=program, opts=opts, create=True))
        self.stacks.add(stack_name)
        return FakeStack(self, stack_name)

    def select_stack(self, stack_name, project_name=None, program=None, work_dir=None, opts=None):
        self.opened.append(dict(stack_name=stack_name, project_name=project_name, program=program, opts=opts, create=False))
        if stack_name not in self.stacks:
            raise auto.StackNotFoundError(_result(f"error: no stack named '{stack_name}' found"))
        return FakeStack(self, stack_name)


@pytest.fixture
def engine(monkeypatch):
    eng = FakeEngine()
    monkeypatch.setattr(auto, "create_or_select_stack", eng.create_or_select_stack)
    monkeypatch.setattr(auto, "select_stack", eng.select_stack)
    return eng


# --- the wrapper's requests ---------------------------------------------------------------


def test_default_backend_is_a_file_backend_under_the_home_with_a_passphrase(home, engine, tmp_path):
    st = stackmod.ClusterStack("c1", tmp_path / "work")
    st.up({"cloudtrain:gpu": "t4"})
    req = engine.opened[0]
    assert (req["stack_name"], req["project_name"], req["create"]) == ("c1", "cloudtrain", True)
    opts: auto.LocalWorkspaceOptions = req["opts"]
    url = (home / "pulumi" / "state").as_uri()
    assert opts.env_vars["PULUMI_BACKEND_URL"] == url and url.startswith("file:///")
    assert opts.project_settings.name == "cloudtrain" and opts.project_settings.backend.url == url
    assert opts.secrets_provider == "passphrase"
    assert opts.work_dir == str(tmp_path / "work")
    pf = Path(opts.env_vars["PULUMI_CONFIG_PASSPHRASE_FILE"])
    assert pf == home / "pulumi" / "passphrase"
    assert stat.S_IMODE(pf.stat().st_mode) == 0o600 and len(pf.read_text().strip()) >= 32
    assert stat.S_IMODE(pf.parent.stat().st_mode) == 0o700
    first = pf.read_text()
    stackmod.ClusterStack("c2", tmp_path / "work2").up({})
    assert pf.read_text() == first, "the passphrase is generated once and reused"


def test_pulumi_backend_url_wins(home, engine, tmp_path, monkeypatch):
    monkeypatch.setenv("PULUMI_BACKEND_URL", "s3://team-bucket/pulumi")
    st = stackmod.ClusterStack("c1", tmp_path / "w")
    st.up({})
    assert engine.opened[0]["opts"].env_vars["PULUMI_BACKEND_URL"] == "s3://team-bucket/pulumi"
    assert st.state()["backend_url"] == "s3://team-bucket/pulumi"
    assert not (home / "pulumi" / "state").exists()


def test_config_values_and_secrets_are_passed(home, engine, tmp_path):
    out = stackmod.ClusterStack("c1", tmp_path / "w").up({"aws:region": "us-east-1", "cloudtrain:x": "s"}, frozenset({"cloudtrain:x"}))
    assert engine.config == {"aws:region": ("us-east-1", False), "cloudtrain:x": ("s", True)}
    assert out["nodes"][0]["publicIp"] == "203.0.113.5"


def test_pulumi_errors_become_one_line_provision_errors(home, engine, tmp_path):
    engine.fail = auto.CommandError(_result("warning: x\nerror: creating EC2 Instance: InsufficientInstanceCapacity\n"))
    with pytest.raises(ProvisionError) as e:
        stackmod.ClusterStack("c1", tmp_path / "w").up({})
    assert "InsufficientInstanceCapacity" in e.value.line() and "cloudtrain down" in e.value.line()
    assert isinstance(e.value.__cause__, auto.CommandError)
    assert "\n" not in e.value.line()

    engine.fail = auto.ConcurrentUpdateError(_result("error: the stack is currently locked by 1 lock(s)"))
    with pytest.raises(ProvisionError, match="locked"):
        stackmod.ClusterStack("c1", tmp_path / "w").up({})


def test_missing_cli_is_missing_tool(home, tmp_path, monkeypatch):
    def no_cli(**kw):
        raise FileNotFoundError("pulumi")

    monkeypatch.setattr(auto, "create_or_select_stack", no_cli)
    with pytest.raises(MissingTool) as e:
        stackmod.ClusterStack("c1", tmp_path / "w").up({})
    assert "install-pulumi" in e.value.line()


def test_destroy_removes_the_stack_and_is_idempotent(home, engine, tmp_path):
    st = stackmod.ClusterStack("c1", tmp_path / "w")
    st.up({})
    assert st.destroy() is True
    assert ("destroy", "c1") in engine.calls and ("remove_stack", "c1") in engine.calls
    assert st.destroy() is False  # second time: no stack, nothing to do
    assert engine.opened[-1]["create"] is False  # destroy never creates a stack


def test_the_locked_hint_names_backend_passphrase_file_and_the_project_scoped_stack(home, engine, tmp_path):
    # Defect 5: a bare `pulumi cancel -s NAME` in the user's shell hits their default backend.
    engine.fail = auto.ConcurrentUpdateError(_result("error: the stack is currently locked by 1 lock(s)"))
    st = stackmod.ClusterStack("c1", tmp_path / "w")
    with pytest.raises(ProvisionError) as e:
        st.destroy() if engine.stacks.add("c1") is None else None
    line = e.value.line()
    url = (home / "pulumi" / "state").as_uri()
    assert f"PULUMI_BACKEND_URL={url} PULUMI_CONFIG_PASSPHRASE_FILE={home / 'pulumi' / 'passphrase'} pulumi cancel --yes" in line
    assert f"--stack organization/cloudtrain/c1 --cwd {tmp_path / 'w'}" in line


def test_destroy_drops_pending_operations_first_and_reports_them(home, engine, tmp_path):
    vm = "urn:pulumi:c1::cloudtrain::aws:ec2/instance:Instance::c1-0"
    vpc = {"urn": "urn:pulumi:c1::cloudtrain::aws:ec2/vpc:Vpc::c1-vpc", "id": "vpc-1"}
    engine.exported = {"version": 3, "deployment": {"resources": [vpc], "pending_operations": [{"resource": {"urn": vm}, "type": "creating"}]}}
    said: list[str] = []
    st = stackmod.ClusterStack("c1", tmp_path / "w", on_output=said.append)
    st.up({})
    assert st.destroy() is True
    calls = [c for c in engine.calls if c[0] in ("cli", "destroy")]
    assert calls == [("cli", "stack export"), ("cli", "stack import"), ("destroy", "c1")]
    state, mode = engine.imported
    assert state["deployment"] == {"resources": [vpc], "pending_operations": []}  # only the pending op goes
    assert mode == 0o600 and not list((tmp_path / "w").glob("state-*"))  # private, and not left behind
    assert st.pending == [f"creating {vm}"]
    assert any(vm in line for line in said)


def test_destroy_releases_the_lock_only_of_a_cli_cloudtrain_killed(home, engine, tmp_path):
    st = stackmod.ClusterStack("c1", tmp_path / "w")
    st.up({})
    st.destroy()
    assert ("cli", "cancel --yes") not in engine.calls  # a live update elsewhere is never broken
    assert ("cli", "stack import") not in engine.calls  # nothing pending: state untouched
    st.up({})
    (tmp_path / "w" / KILLED_MARKER).touch()
    engine.calls.clear()
    st.destroy()
    assert engine.calls[:2] == [("cli", "cancel --yes"), ("cli", "stack export")]
    assert not (tmp_path / "w" / KILLED_MARKER).exists()


def test_preview_removes_a_stack_made_only_for_it(home, engine, tmp_path):
    text = stackmod.ClusterStack("c1", tmp_path / "w").preview({})
    assert "to create" in text
    assert ("remove_stack", "c1") in engine.calls and "c1" not in engine.stacks
    assert ("up", "c1") not in engine.calls


# --- the provisioners' flow ----------------------------------------------------------------


@pytest.fixture
def offline_cloud(home, engine, monkeypatch):
    """A CLI 'present', pre-flight passing, the caller's address stubbed at the HTTP boundary."""
    monkeypatch.setattr(pulumi_cli, "require", lambda: SimpleNamespace(command="pulumi", version=None))
    monkeypatch.setattr(cloud.AwsProvisioner, "preflight", lambda self, spec, choice: (choice, {}))
    monkeypatch.setattr(cloud.GcpProvisioner, "preflight", lambda self, spec, choice: (choice, {"gcp:project": "proj-1"}))
    monkeypatch.setattr(myip, "urlopen", lambda url, timeout: _Body(b"192.0.2.44\n"))
    # The sweep by tag after a destroy talks to EC2: moto serves it.
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        yield engine


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = -1) -> bytes:
        return self.data

    def __enter__(self):
        return self

    def __exit__(self, *a) -> None:
        return None


def new_cluster(name: str, provider: str, **kw):
    spec = ClusterSpec(name=name, provider=provider, gpu="t4", **kw)
    cdir = Store().cluster_dir(name)
    cdir.create()
    return spec, cdir, ClusterRecord(spec=spec)


def test_registry_names_the_cloud_provisioners():
    for name in ("aws", "gcp", "azure"):
        p = provisioner.get(name)
        assert p.name == name and p.needs_gpu and p.bills and p.supports_preview


def test_create_sends_design_config_and_saves_the_stack_before_up(offline_cloud, home):
    spec, cdir, record = new_cluster("c1", "aws", nodes=1, disk_gb=120)
    seen = {}
    offline_cloud.on_up = lambda: seen.update(saved=cdir.load().provider_state)
    cluster = provisioner.get("aws").create(spec, cdir, record)

    assert seen["saved"]["stack"] == "c1", "the record names the stack before any resource exists"
    assert seen["saved"]["backend_url"] == (home / "pulumi" / "state").as_uri()
    values = {k: v for k, (v, _) in offline_cloud.config.items()}
    assert values == {
        "cloudtrain:provider": "aws",
        "cloudtrain:gpu": "t4",
        "cloudtrain:gpuCount": "1",
        "cloudtrain:nodes": "1",
        "cloudtrain:spot": "false",
        "cloudtrain:diskGb": "120",
        "cloudtrain:image": "dl",
        "cloudtrain:sshCidr": "192.0.2.44/32",  # discovered, stubbed at urlopen
        "cloudtrain:sshPublicKey": cdir.client_public_key(),
        "cloudtrain:clusterName": "c1",
        "aws:region": "us-east-1",
        "cloudtrain:zone": "us-east-1a",  # the catalog's first offering zone (moto's AZ offerings)
    }
    assert record.spec.ssh_cidr == "192.0.2.44/32"
    assert cluster.identity_file == cdir.identity_file
    assert [n.host for n in cluster.nodes] == ["203.0.113.5"] and cluster.head.user == "ubuntu"
    keys_dir = cdir.provider_dir / "host-keys"
    assert stat.S_IMODE((keys_dir / "c1-0.json").stat().st_mode) == 0o600


def test_inline_program_reads_back_what_create_wrote(offline_cloud):
    """Run the program create() handed to Pulumi, under mocks, with the config it set."""
    spec, cdir, record = new_cluster("c2", "gcp", nodes=2, ssh_cidr=CIDR, spot=True)
    provisioner.get("gcp").create(spec, cdir, record)
    program_fn = offline_cloud.opened[-1]["program"]
    config = {k: v for k, (v, _) in offline_cloud.config.items()}
    exported = {}

    def body():
        pulumi.runtime.set_all_config(config)
        original = pulumi.export
        pulumi.export = lambda k, v: exported.__setitem__(k, v)
        try:
            program_fn()
        finally:
            pulumi.export = original
        return exported["nodes"]

    rec, nodes = run_mocked(body)
    vms = rec.of("gcp:compute/instance:Instance")
    assert sorted(n for n, _ in vms) == ["c2-0", "c2-1"]
    assert all(vm["scheduling"]["provisioningModel"] == "SPOT" and vm["zone"] == "us-central1-a" for _, vm in vms)
    (_, fw), = [r for r in rec.of("gcp:compute/firewall:Firewall") if r[1].get("sourceRanges")]
    assert fw["sourceRanges"] == [CIDR]
    # The host keys the program installed are the ones kept in the cluster's folder.
    import json

    kept = json.loads((cdir.provider_dir / "host-keys" / "c2-1.json").read_text())
    assert [n for n in nodes if n["name"] == "c2-1"][0]["hostKey"] == kept["public"]


def test_bad_input_is_refused_before_any_tool_or_network(home, engine, monkeypatch):
    monkeypatch.setattr(pulumi_cli, "require", lambda: pytest.fail("CLI looked up before the catalog check"))
    spec, cdir, record = new_cluster("c3", "aws", region="il-central-1")
    with pytest.raises(BadInput) as e:
        provisioner.get("aws").create(spec, cdir, record)
    assert e.value.exit_code == 2 and "us-east-1" in e.value.line()
    assert engine.opened == [] and record.provider_state == {}


def test_missing_cli_stops_create_before_any_stack(home, engine, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("HOME", str(home))
    spec, cdir, record = new_cluster("c4", "azure", ssh_cidr=CIDR)
    with pytest.raises(MissingTool) as e:
        provisioner.get("azure").create(spec, cdir, record)
    assert "cloudtrain install-pulumi" in e.value.line() and e.value.exit_code == 1
    assert engine.opened == [] and record.provider_state == {}


def test_public_address_failure_is_actionable(home, monkeypatch):
    def down(url, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(myip, "urlopen", down)
    with pytest.raises(PreflightError) as e:
        myip.public_cidr()
    assert "--ssh-cidr" in e.value.line()
    monkeypatch.setattr(myip, "urlopen", lambda url, timeout: _Body(b"2001:db8::7\n"))
    assert myip.public_cidr() == "2001:db8::7/128"


def test_destroy_uses_the_saved_state_and_is_idempotent(offline_cloud):
    spec, cdir, record = new_cluster("c5", "aws", ssh_cidr=CIDR)
    prov = provisioner.get("aws")
    prov.create(spec, cdir, record)
    prov.destroy(cdir, record)
    prov.destroy(cdir, record)
    assert offline_cloud.calls.count(("destroy", "c5")) == 1
    # A record whose create never reached the stack: nothing to do, no CLI needed.
    prov.destroy(cdir, ClusterRecord(spec=spec))


def test_preview_creates_nothing_in_the_cluster_folder(offline_cloud):
    spec, cdir, record = new_cluster("c6", "gcp", ssh_cidr=CIDR)
    before = sorted(p.name for p in cdir.provider_dir.iterdir())
    text = provisioner.get("gcp").preview(spec, cdir)
    assert "to create" in text
    assert sorted(p.name for p in cdir.provider_dir.iterdir()) == before
    assert ("up", "c6") not in offline_cloud.calls and "c6" not in offline_cloud.stacks


def test_describe_states_price_and_spot():
    p = provisioner.get("aws")
    text = p.describe(ClusterSpec(name="d", provider="aws", gpu="t4", nodes=3, ssh_cidr=CIDR))
    assert "3 x g4dn.xlarge" in text and "3 x $0.526/h = $1.58/h on demand" in text and CIDR in text
    spot = p.describe(ClusterSpec(name="d", provider="aws", gpu="t4", nodes=3, spot=True))
    assert "spot" in spot and "$1.58/h" in spot and "your public address" in spot
    gcp = provisioner.get("gcp").describe(ClusterSpec(name="d", provider="gcp", gpu="t4"))
    assert "n1-standard-4 + 1 x nvidia-tesla-t4" in gcp and "derived" in gcp


def test_the_pulumi_state_folder_is_owner_only_whatever_the_umask(home) -> None:
    old = os.umask(0)
    try:
        url = stackmod.backend_url()
    finally:
        os.umask(old)
    assert url == (home / "pulumi" / "state").as_uri()
    for folder in (home / "pulumi", home / "pulumi" / "state"):
        assert folder.stat().st_mode & 0o777 == 0o700, oct(folder.stat().st_mode)


def _tagged_vm(name: str) -> str:
    import boto3

    ec2 = boto3.client("ec2", region_name="us-east-1")
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    tag = [{"ResourceType": "instance", "Tags": [{"Key": "cloudtrain-cluster", "Value": name}]}]
    return ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="g4dn.xlarge", TagSpecifications=tag)["Instances"][0]["InstanceId"]


def _vm_state(vm: str) -> str:
    import boto3

    ec2 = boto3.client("ec2", region_name="us-east-1")
    return ec2.describe_instances(InstanceIds=[vm])["Reservations"][0]["Instances"][0]["State"]["Name"]


def _pending_create(engine, name: str) -> None:
    vm = f"urn:pulumi:{name}::cloudtrain::aws:ec2/instance:Instance::{name}-0"
    engine.exported = {"version": 3, "deployment": {"resources": [], "pending_operations": [{"resource": {"urn": vm}, "type": "creating"}]}}


def test_destroy_found_sweeps_by_tag_in_the_region_the_stack_settings_name(offline_cloud):
    # A cluster whose record is lost: its stack settings still say which cloud and region.
    spec, cdir, record = new_cluster("c9", "aws", ssh_cidr=CIDR, region="us-east-1")
    prov = provisioner.get("aws")
    prov.create(spec, cdir, record)
    work = cdir.provider_dir / "pulumi"
    (work / "Pulumi.c9.yaml").write_text("config:\n  cloudtrain:provider: aws\n  aws:region: us-east-1\n")
    vm = _tagged_vm("c9")
    _pending_create(offline_cloud, "c9")
    said: list[str] = []
    prov.on_output = said.append
    prov.destroy_found(cdir)
    assert ("destroy", "c9") in offline_cloud.calls
    assert _vm_state(vm) in ("shutting-down", "terminated")
    assert any(vm in line and line.startswith("cloudtrain: found 1 resource") for line in said)


def test_the_sweep_runs_only_when_state_lost_a_create_and_stays_owed_until_it_succeeds(offline_cloud, monkeypatch):
    spec, cdir, record = new_cluster("c10", "aws", ssh_cidr=CIDR, region="us-east-1")
    prov = provisioner.get("aws")
    prov.create(spec, cdir, record)
    # A VM of a cluster of the same name made from another cloudtrain home: state lost nothing,
    # so nothing is looked for by tag and it keeps running.
    theirs = _tagged_vm("c10")
    prov.destroy(cdir, record)
    assert _vm_state(theirs) == "running"

    # An interrupted up: a pending create dropped. The sweep fails once (EC2 unreachable): down
    # fails naming it, and the rerun (no stack left) sweeps again.
    prov.create(spec, cdir, record)
    _pending_create(offline_cloud, "c10")
    from cloudtrain.provisioner.leftovers import aws as aws_leftovers

    real_find = aws_leftovers.find
    monkeypatch.setattr(aws_leftovers, "find", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("EC2 unreachable")))
    with pytest.raises(ProvisionError, match="could not look for leftovers tagged c10"):
        prov.destroy(cdir, record)
    monkeypatch.setattr(aws_leftovers, "find", real_find)
    offline_cloud.exported = {"version": 3, "deployment": {"resources": [], "pending_operations": []}}
    prov.destroy(cdir, record)
    assert _vm_state(theirs) in ("shutting-down", "terminated")  # same tag: the sweep cannot tell them apart
    monkeypatch.setattr(aws_leftovers, "find", lambda *a, **k: (_ for _ in ()).throw(AssertionError("swept again")))
    prov.destroy(cdir, record)  # done: no sweep owed any more, nothing asked of EC2
