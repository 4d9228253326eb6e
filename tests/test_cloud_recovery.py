"""`launch --recover` on the clouds (issue 15): a preempted spot node is found through the cloud's
account and replaced through the cluster's own Pulumi stack.

No Pulumi engine or cloud runs here, so the two boundaries are doubles, as in test_failover.py:
the stack (ClusterStack's shape: `refresh()`, `up(config)`, `destroy()`, `state()`) records
each call and keeps a small model of the VMs the program would make (a deleted one leaves the
state at refresh; `up` creates what is missing, or every node when the placement changed), and
EC2 is moto (real boto3 calls, EC2's own response shapes). The rest is the real flow: the
catalog's candidates, the host keys and the cluster record in a real home, the stack config
each update writes.
"""

from __future__ import annotations

import json
import types
from urllib.parse import parse_qs
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from test_failover import CIDR, Preflight, pulumi_failure, where

from cloudtrain import bucket_restore, recovery
from cloudtrain.jobs.runner import JobRunner
from cloudtrain.errors import NoCapacity, ProvisionError
from cloudtrain.machine import Cluster, Node
from cloudtrain.provisioner import cloud, power_aws
from cloudtrain.provisioner.contract import CLUSTER_TAG
from cloudtrain.provisioner.preflight import pulumi_cli
from cloudtrain.spec import ClusterSpec
from cloudtrain.state import ClusterRecord, Store

REGION = "us-east-1"
NO_CAPACITY = ("Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity available that "
               "matches your request. Launching EC2 instance failed.")  # cortexlabs/cortex#1258, as in test_failover


@pytest.fixture
def ec2(monkeypatch: pytest.MonkeyPatch):
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(pulumi_cli, "require", lambda: "pulumi-cli")
    with mock_aws():
        yield boto3.client("ec2", region_name=REGION)


class RecordingStack:
    """The cluster's stack. `vms` maps a node index to its VM's address in the state; the cloud
    deleting a VM (`preempt`) leaves the state only at the next refresh, as with the engine."""

    def __init__(self, host_keys: Path, fail: dict[str, str] | None = None) -> None:
        self.host_keys, self.fail = host_keys, fail or {}
        self.log: list[tuple[str, ...]] = []
        self.configs: list[dict[str, str]] = []
        self.vms: dict[int, str] = {}
        self.deleted: set[int] = set()
        self.place: str | None = None
        self.made = 0

    def state(self) -> dict[str, Any]:
        return {"stack": "c1", "project": "cloudtrain", "backend_url": "file:///double", "work_dir": "/double"}

    def preempt(self, index: int) -> None:
        self.deleted.add(index)

    def refresh(self) -> None:
        self.log.append(("refresh",))
        for i in self.deleted:
            self.vms.pop(i, None)
        self.deleted.clear()

    def up(self, config: dict[str, str]) -> dict[str, Any]:
        place = where(config)
        self.log.append(("up", place))
        self.configs.append(config)
        if place in self.fail:
            err = pulumi_failure(self.fail[place])
            raise ProvisionError(f"pulumi up failed: {self.fail[place]}", "fix the cause, then rerun") from err
        if place != self.place:  # the zone is in every VM's (and subnet's) inputs: all replaced
            self.vms, self.place = {}, place
        nodes = []
        for i in range(int(config["cloudtrain:nodes"])):
            if i not in self.vms:
                self.made += 1
                self.vms[i] = f"203.0.113.{self.made}"
            key = json.loads((self.host_keys / f"c1-{i}.json").read_text())["public"]  # what the program puts in user data
            nodes.append({"name": f"c1-{i}", "publicIp": self.vms[i], "privateIp": f"10.0.0.{i + 4}", "sshUser": "ubuntu", "sshPort": 22, "hostKey": key})
        return {"nodes": nodes}

    def destroy(self) -> bool:
        self.log.append(("destroy",))
        return True


def _provisioner(stack: RecordingStack, lines: list[str]) -> cloud.AwsProvisioner:
    preflight = Preflight(pin_zone=True)

    class Prov(cloud.AwsProvisioner):
        def preflight(self, spec, choice):
            return preflight(spec, choice)

    return Prov(on_output=None, say=lines.append, stack_factory=lambda *a: stack)


def _up(home: Path, fail: dict[str, str] | None = None, **kw: Any) -> tuple[cloud.AwsProvisioner, RecordingStack, Any, ClusterRecord, list[str]]:
    """A 2-node spot cluster made by the real `create` through the recording stack."""
    spec = ClusterSpec(name="c1", provider="aws", gpu="t4", nodes=2, spot=True, ssh_cidr=CIDR, **kw)
    cdir = Store().cluster_dir("c1")
    cdir.create(provider="aws")
    stack = RecordingStack(cdir.provider_dir / "host-keys", fail)
    lines: list[str] = []
    prov = _provisioner(stack, lines)
    record = ClusterRecord(spec=spec)
    record.cluster = prov.create(spec, cdir, record)
    record.status = "ready"
    cdir.save(record)
    stack.log.clear()
    return prov, stack, cdir, record, lines


def test_a_preempted_node_is_replaced_in_the_same_zone_through_a_refresh_then_an_update(home, ec2) -> None:
    prov, stack, cdir, record, lines = _up(home)
    assert prov.replaces_nodes  # `launch --recover` is no longer refused on the clouds
    recovery.check(record.spec, recovery.RecoveryPolicy())
    first = stack.configs[-1]
    before = record.cluster.nodes
    stack.preempt(1)
    out = prov.replace_nodes(cdir, record, [1])
    # The lost VM leaves the state before the update that makes it again, at the same placement
    # with the same config: nothing else of the cluster changes.
    assert stack.log == [("refresh",), ("up", record.spec.zone)]
    assert stack.configs[-1] == first
    after = cdir.load().cluster.nodes
    assert after[0] == before[0]  # the survivor, untouched (its pin is the rotated key)
    assert after[1].host != before[1].host and after[1].name == "c1-1"
    # A first-boot key of its own, not the one the lost VM's user data exposed.
    assert after[1].host_key != before[1].host_key
    assert after[1].host_key == json.loads((cdir.provider_dir / "host-keys" / "c1-1.json").read_text())["public"]
    assert out == [f"c1-1: replaced by a new VM at {after[1].host} in {record.spec.zone}"]


def test_no_capacity_in_its_zone_moves_the_cluster_along_failovers_order_and_every_node_is_new(home, ec2) -> None:
    prov, stack, cdir, record, lines = _up(home)
    zone = record.spec.zone
    stack.fail = {zone: NO_CAPACITY}
    before = record.cluster.nodes
    stack.preempt(0)
    out = prov.replace_nodes(cdir, record, [0])
    (_, (_, tried), (_, placed)) = stack.log
    assert tried == zone and placed != zone and ("destroy",) not in stack.log  # the bucket and the stack stay
    saved = cdir.load()
    assert saved.spec.zone == placed and saved.spec.region == REGION  # the next zone of its region first
    assert all(a.host != b.host for a, b in zip(saved.cluster.nodes, before))
    assert any(f"{zone}: no capacity (InsufficientInstanceCapacity); trying {placed}" in line for line in lines)
    assert out[0].startswith(f"{placed} took the cluster") and len(out) == 3


def test_a_cluster_pinned_to_its_zone_is_not_moved(home, ec2) -> None:
    prov, stack, cdir, record, lines = _up(home, zone="us-east-1a")
    stack.fail = {"us-east-1a": NO_CAPACITY}
    stack.preempt(1)
    with pytest.raises(NoCapacity, match="us-east-1a: no capacity") as err:
        prov.replace_nodes(cdir, record, [1])
    assert "drop --zone" in err.value.hint
    assert stack.log == [("refresh",), ("up", "us-east-1a")]


# --- which nodes are lost: EC2's account and the watchdog's notice -------------------------


def _ec2_cluster(ec2, nodes: int = 2) -> tuple[ClusterRecord, list[str]]:
    """Instances tagged as the program tags them; the nodes' SSH at a loopback port nothing
    listens on (a gone node does not answer)."""
    vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.1.0/24")["Subnet"]["SubnetId"]
    made = ec2.run_instances(
        ImageId="ami-0cloudtrain0000000", MinCount=nodes, MaxCount=nodes, InstanceType="g4dn.xlarge", SubnetId=subnet,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": CLUSTER_TAG, "Value": "c1"}]}],
    )["Instances"]
    members = tuple(Node(f"c1-{n}", "127.0.0.1", 9, "ubuntu", "ssh-ed25519 AAAA", i["PrivateIpAddress"]) for n, i in enumerate(made))
    spec = ClusterSpec(name="c1", provider="aws", gpu="t4", nodes=nodes, region=REGION, zone="us-east-1a", spot=True, ssh_cidr=CIDR)
    ids = [i["InstanceId"] for i in made]
    return ClusterRecord(spec=spec, cluster=Cluster("c1", members, Path("/nonexistent")), status="ready", provider_state={"instance_ids": ids}), ids


def test_a_terminated_spot_instance_is_lost_and_a_running_one_only_with_the_watchdogs_notice(home, ec2) -> None:
    record, ids = _ec2_cluster(ec2)
    prov = cloud.AwsProvisioner(on_output=None)
    assert prov.lost_nodes(None, record) == []  # both run: a silent node alone is no preemption
    ec2.terminate_instances(InstanceIds=[ids[1]])
    assert prov.lost_nodes(None, record) == [1]
    assert prov.lost_nodes(None, record, marked=[0]) == [0, 1]
    # Nothing known to EC2 under the recorded ids (an hour after termination): gone too.
    assert power_aws.gone(ClusterRecord(spec=record.spec, cluster=record.cluster, provider_state={"instance_ids": ["i-0", "i-1"]})) == [0, 1]


def test_no_credentials_means_only_the_notice_counts(home, ec2, monkeypatch: pytest.MonkeyPatch) -> None:
    record, ids = _ec2_cluster(ec2)
    ec2.terminate_instances(InstanceIds=ids)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert power_aws.gone(record) is None
    assert cloud.AwsProvisioner(on_output=None).lost_nodes(None, record, marked=[1]) == [1]


def test_recovery_takes_a_terminated_spot_node_for_a_preemption_not_a_watchdog_stop(home, ec2, tmp_path: Path) -> None:
    """observed_stop reports a terminated spot node as a stop (for `status`); the loop must still
    ask lost_nodes, which tells the cloud's preemption from the node's own shutdown."""
    record, ids = _ec2_cluster(ec2)
    cdir = Store().cluster_dir("c1")
    cdir.create(provider="aws")
    cdir.save(record)
    ec2.terminate_instances(InstanceIds=[ids[0]])
    loop = recovery.Recovering(Store(), cdir, recovery.RecoveryPolicy(), say=lambda line: None)
    job = types.SimpleNamespace(output=str(tmp_path / "out"), job_id="j1")
    assert loop._lost(None, job) == [0]  # type: ignore[arg-type]
    # The watchdog's notice came home with the job's files: every silent node carries it.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / recovery.PREEMPTED).write_text(json.dumps({"time": "2026-12-01T18:00:00Z", "cloud": "aws", "notice": "terminate"}))
    assert loop._lost(None, job) == [0, 1]  # type: ignore[arg-type]


def test_gcp_counts_a_deleted_or_preempted_spot_vm_and_not_one_its_watchdog_stopped() -> None:
    from test_power_gcp import API, PROJECT, ZONE, FakeCompute, _reply, _record as gcp_record

    from cloudtrain.provisioner import power_gcp

    class WithOperations(FakeCompute):
        """Zone operations too (compute/v1 zoneOperations.list, filtered by operationType)."""

        preempted: list[str] = []

        def get(self, url: str):
            path, _, query = url.partition("?")
            if path != f"{API}/projects/{PROJECT}/zones/{ZONE}/operations":
                return super().get(url)
            assert parse_qs(query)["filter"] == ['operationType="compute.instances.preempted"']
            items = [{"kind": "compute#operation", "operationType": "compute.instances.preempted", "status": "DONE",
                      "targetLink": f"{API}/projects/{PROJECT}/zones/{ZONE}/instances/{n}"} for n in self.preempted]
            return _reply({"kind": "compute#operationList", **({"items": items} if items else {})})

    fake = WithOperations()
    record = gcp_record(fake, spot=True)
    fake.stop("ct-test-0-a1b2c3d")  # a guest shutdown (its watchdog) ends TERMINATED too
    assert power_gcp.gone(record, fake, PROJECT, API) == []
    fake.preempted = ["ct-test-0-a1b2c3d"]  # ... and so does a preemption, which leaves this operation
    assert power_gcp.gone(record, fake, PROJECT, API) == [0]
    assert power_gcp.absent(record, fake, PROJECT, API) == []  # still in the state at a refresh: waited for
    del fake.vms["ct-test-1-a1b2c3d"]  # preempted: instanceTerminationAction DELETE
    assert power_gcp.gone(record, fake, PROJECT, API) == [0, 1] and power_gcp.absent(record, fake, PROJECT, API) == [1]
    assert power_gcp.gone(record, object(), PROJECT, API) is None  # cannot be asked: unknown


def test_azure_counts_a_vm_its_group_no_longer_holds() -> None:
    from test_power_azure import ARM, SUB, FakeArm, _record as azure_record

    from cloudtrain.provisioner import power_azure

    arm = FakeArm()
    arm.add("ct-test-rgaaaa", "ct-test", ["20.1.0.0", "20.1.0.1"], power="deallocated")  # autostop: not gone
    arm.add("ct-test-rgbbbb", "ct-test", ["20.9.0.0", "20.9.0.1"])  # same name, another home
    assert power_azure.gone(azure_record(), arm, SUB, ARM) == []
    del arm.groups["ct-test-rgaaaa"]["vms"]["ct-test-0-aaaa"]  # evicted: eviction policy Delete
    assert power_azure.gone(azure_record(), arm, SUB, ARM) == [0]
    del arm.groups["ct-test-rgaaaa"]
    assert power_azure.gone(azure_record(), arm, SUB, ARM) is None


# --- the new node, pinned and rotated as after `up`, the others left alone (real sshd) ------


def test_only_the_new_node_gets_its_first_boot_key_replaced_and_is_bootstrapped(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local nodes whose first-boot key counts as exposed (as test_hostkey_rotation.py does):
    the very rotation a cloud node gets, over real SSH, after a real replacement of node 1."""
    from test_hostkey_rotation import RotatingLocal, _node_key_on_disk

    from cloudtrain import lifecycle
    from cloudtrain import provisioner as provisioners
    from cloudtrain.provisioner.local_processes import stop_node_processes
    from cloudtrain.remote import SshRemote
    from cloudtrain.spec import FrameworkSpec

    prov = RotatingLocal()
    monkeypatch.setattr(provisioners, "get", lambda name: prov)
    store = Store()
    record = lifecycle.up(store, ClusterSpec(name="rot", provider="local", nodes=2, framework=FrameworkSpec("none")), lambda line: None)
    cdir = store.cluster_dir("rot")
    try:
        before = record.cluster.nodes
        node_dir = Path(record.provider_state["node_dirs"][1])
        stop_node_processes(node_dir / "root")  # the local stand-in for a preemption
        RotatingLocal._stop_pidfile(node_dir / "sshd.pid")
        prov.replace_nodes(cdir, record, [1])
        first_boot = record.cluster.nodes[1].host_key
        said: list[str] = []
        assert recovery.renew(prov, cdir, record, before, said.append) == [1]
        saved = cdir.load().cluster.nodes
        assert saved[0] == before[0]  # the survivor's pin: what `up` rotated it to, untouched
        assert saved[1].host_key != first_boot and saved[1].host_key == _node_key_on_disk(record, 1)
        assert said == ["bootstrapping the new node(s) of cluster rot: rot-1"]
        with SshRemote(saved[1], record.cluster.identity_file) as remote:
            assert remote.run("true").ok
    finally:
        lifecycle.down(store, "rot", lambda line: None, force=True)


def test_the_stacks_refresh_never_creates_a_stack_and_its_failures_are_one_line(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ClusterStack.refresh at the pulumi.automation boundary (test_stack.py's recorder)."""
    import pulumi.automation as auto
    from test_stack import FakeEngine, FakeStack, _result

    from cloudtrain.provisioner.stack import ClusterStack

    engine = FakeEngine()
    monkeypatch.setattr(auto, "create_or_select_stack", engine.create_or_select_stack)
    monkeypatch.setattr(auto, "select_stack", engine.select_stack)

    def refresh(self, **kw) -> None:
        engine.calls.append(("refresh", self.name))
        if engine.fail:
            raise engine.fail

    monkeypatch.setattr(FakeStack, "refresh", refresh, raising=False)
    st = ClusterStack("c1", tmp_path / "w")
    with pytest.raises(ProvisionError, match="stack is gone"):
        st.refresh()
    assert engine.stacks == set()  # no stack made for it
    st.up({})
    st.refresh()
    assert engine.calls[-1] == ("refresh", "c1") and engine.opened[-1]["create"] is False
    engine.fail = auto.CommandError(_result("error: reading EC2 Instance (i-0abc): UnauthorizedOperation\n"))
    with pytest.raises(ProvisionError) as err:
        st.refresh()
    line = err.value.line()
    assert line.startswith("pulumi refresh failed:") and "UnauthorizedOperation" in line and "cloudtrain down --cluster c1" in line and "\n" not in line
    assert isinstance(err.value.__cause__, auto.CommandError)
    engine.fail = auto.ConcurrentUpdateError(_result("error: the stack is currently locked by 1 lock(s)"))
    with pytest.raises(ProvisionError, match="locked"):
        st.refresh()


def test_a_spot_attempts_cost_is_at_the_spot_price_not_on_demand() -> None:
    from cloudtrain import catalog

    spec = ClusterSpec(name="c1", provider="aws", gpu="t4", nodes=2, spot=True, region=REGION)
    prov = cloud.AwsProvisioner(on_output=None)
    price, basis = recovery.attempt_price(prov, spec)
    spot = catalog.choose(spec).offer.price_in(REGION, spot=True)
    assert basis == "spot" and price == pytest.approx(2 * spot) and price < prov.hourly_price(spec)
    assert recovery.attempt_price(prov, ClusterSpec(name="c1", provider="aws", gpu="t4", nodes=2, region=REGION)) == (prov.hourly_price(spec), "on-demand")


def test_a_node_named_by_its_notice_is_refreshed_only_once_the_cloud_has_deleted_it(home, ec2, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refresh while the VM still runs would keep it in the state and `up` would make nothing."""
    import time

    from cloudtrain.provisioner import replace

    record, ids = _ec2_cluster(ec2)
    polls: list[float] = []

    def sleep(seconds: float) -> None:  # the cloud deletes it while cloudtrain waits
        polls.append(seconds)
        ec2.terminate_instances(InstanceIds=[ids[1]])

    monkeypatch.setattr(replace, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    replace._wait_gone(cloud.AwsProvisioner(on_output=None), record, [1])
    assert polls == [replace.GONE_POLL_S] and power_aws.gone(record) == [1]


# --- the new node's checkpoints: the cluster's bucket first, then the copy at home (real sshd) --


def _spot_local_cluster(monkeypatch: pytest.MonkeyPatch, store: dict) -> tuple[Any, Any, Store, Any]:
    """Local nodes standing in for a spot cloud cluster with a checkpoint bucket: `_replace`
    ships and starts the watchdog with the store, as on a cloud, and the nodes reach the
    metadata/store stand-in (tests/metadata_standin.py) for their own credentials."""
    from cloudtrain import lifecycle
    from cloudtrain import provisioner as provisioners
    from cloudtrain.provisioner.local import LocalProvisioner
    from cloudtrain.spec import FrameworkSpec

    class SpotLocal(LocalProvisioner):
        def checkpoint_store(self, record):  # type: ignore[no-untyped-def]
            return store

    prov = SpotLocal()
    monkeypatch.setattr(provisioners, "get", lambda name: prov)
    st = Store()
    record = lifecycle.up(st, ClusterSpec(name="bk", provider="local", nodes=2, framework=FrameworkSpec("none")), lambda line: None)
    return prov, record, st, st.cluster_dir("bk")


def _node_checkpoints(record: ClusterRecord, index: int) -> dict[str, bytes]:
    folder = Path(record.provider_state["node_dirs"][index]) / "root" / "jobs" / "job-1" / "checkpoints"
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_replaced_node_restores_the_buckets_newer_checkpoints_and_home_fills_in_the_rest(
        home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The caller missed the last checkpoint (step-3) and holds an older step-2 than the one the
    node's watchdog pushed at the notice: every node restarts from the bucket's, as the nodes
    themselves read it (S3 SigV4 with the instance profile's credentials, checked by botocore's
    signer in moto), and the caller's copy adds only what the bucket lacked (step-1)."""
    import boto3

    import metadata_standin as standin
    from test_preempt import store_for

    from cloudtrain import lifecycle
    from cloudtrain.jobs import checkpoints
    from cloudtrain.provisioner.local_processes import stop_node_processes
    from cloudtrain.provisioner.local import LocalProvisioner

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        state = standin.State()
        state.s3 = boto3.client("s3", region_name=REGION)
        state.s3.create_bucket(Bucket="ckpt")
        for rel, body in {"step-2.json": b"bucket 2", "sub/step-3.json": b"bucket 3"}.items():
            state.s3.put_object(Bucket="ckpt", Key=f"job-1/{rel}", Body=body)
        state.s3.put_object(Bucket="ckpt", Key="job-10/step-9.json", Body=b"another job's")
        server, url = standin.serve(state)
        monkeypatch.setenv("CLOUDTRAIN_METADATA_URL", url)
        monkeypatch.setenv("CLOUDTRAIN_WATCHDOG_POLL", "0.2")
        prov, record, st, cdir = _spot_local_cluster(monkeypatch, store_for("aws", url))
        try:
            out = tmp_path / "out"
            (out / "checkpoints").mkdir(parents=True)
            (out / "checkpoints" / "step-1.json").write_bytes(b"home 1")
            (out / "checkpoints" / "step-2.json").write_bytes(b"home 2, older")
            survivor = Path(record.provider_state["node_dirs"][0]) / "root" / "jobs" / "job-1" / "checkpoints"
            survivor.mkdir(parents=True)
            (survivor / "step-0.json").write_bytes(b"the lost attempt's")
            node_dir = Path(record.provider_state["node_dirs"][1])
            stop_node_processes(node_dir / "root")  # the local stand-in for a preemption
            LocalProvisioner._stop_pidfile(node_dir / "sshd.pid")
            said: list[str] = []
            loop = recovery.Recovering(st, cdir, recovery.RecoveryPolicy(), said.append)
            job = types.SimpleNamespace(job_id="job-1", output=str(out))
            runner = loop._replace(job, [1], {})  # type: ignore[arg-type]
            try:
                after = cdir.load()
                for node in after.cluster.nodes:  # what submit does next on each node
                    remote = runner.remote(node)
                    assert checkpoints.restore(remote, runner.paths(remote).job("job-1"), checkpoints.local_dir(out)) == ["step-1.json"]
                # The bucket's newer files come home as the restarted job's checkpoints do (rank 0's pull).
                puller = checkpoints.Puller(runner.remote(after.cluster.nodes[0]), runner.paths, "job-1", out, said.append)
                assert sorted(puller.poll(final=True)) == ["step-2.json", "sub/step-3.json"]
            finally:
                runner.close()
            want = {"step-1.json": b"home 1", "step-2.json": b"bucket 2", "sub/step-3.json": b"bucket 3"}
            assert _node_checkpoints(after, 0) == want and _node_checkpoints(after, 1) == want
            assert {p.relative_to(out / "checkpoints").as_posix(): p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()} == want
            assert state.rejected == [] and ("GET", "/s3/ckpt/") in state.calls
            assert "job job-1: bk-1 restored 2 checkpoint file(s) from bucket ckpt" in said, said

            # Nodes that cannot get their credentials (no metadata service answers): one line each,
            # and every node restarts from home alike, the bucket's files gone from its folder.
            monkeypatch.setenv("CLOUDTRAIN_METADATA_URL", "http://127.0.0.1:9")
            out = tmp_path / "out2"
            (out / "checkpoints").mkdir(parents=True)
            (out / "checkpoints" / "step-1.json").write_bytes(b"home 1")
            (out / "checkpoints" / "step-2.json").write_bytes(b"home 2, older")
            runner = JobRunner(st, cdir, after.cluster, say=said.append)
            try:
                assert bucket_restore.restore(runner, after.cluster.nodes, store_for("aws", url), "job-1", said.append) == {}
                failed = [line for line in said if "could not restore checkpoints from bucket" in line]
                assert len(failed) == 2 and all("\n" not in line and "restoring the copy at home instead" in line for line in failed), failed
                for node in after.cluster.nodes:
                    remote = runner.remote(node)
                    checkpoints.restore(remote, runner.paths(remote).job("job-1"), checkpoints.local_dir(out))
            finally:
                runner.close()
            home_only = {"step-1.json": b"home 1", "step-2.json": b"home 2, older"}
            assert _node_checkpoints(after, 0) == home_only and _node_checkpoints(after, 1) == home_only
        finally:
            lifecycle.down(st, "bk", lambda line: None, force=True)
            server.shutdown()
            server.server_close()
