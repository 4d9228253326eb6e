"""The node side of spot recovery (issue 15): the real watchdog process, with the files
autostop.py ships beside it, reads each cloud's preemption notice from a metadata stand-in
(tests/metadata_standin.py, the documented shapes), marks the running job `preempted.json`,
and copies the job's complete checkpoints into the cluster's bucket as the node itself: S3 with
SigV4 from the instance profile (checked by botocore's signer, stored in moto), GCS and Azure
Blob with the metadata server's token."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

import metadata_standin as standin
from cloudtrain import autostop
from conftest import REPO

NOTICES: dict[str, dict[str, Any]] = {
    # EC2 User Guide, "Spot Instance interruption notices": instance-action
    "aws": {"action": "terminate", "time": "2026-12-01T18:30:00Z"},
    # GCE: instance/preempted says TRUE; the marker keeps that as {"preempted": "TRUE"}
    "gcp": {"preempted": "TRUE"},
    # Azure Scheduled Events: one Preempt event naming this VM
    "azure": {"EventId": "602d9444-d2cd-49c7-8624-8643e7171297", "EventType": "Preempt", "ResourceType": "VirtualMachine",
              "Resources": [standin.VM], "EventStatus": "Scheduled", "NotBefore": "Tue, 01 Dec 2026 18:30:00 GMT",
              "Description": "", "EventSource": "Platform", "DurationInSeconds": -1},
}


@pytest.fixture
def cloud_side(monkeypatch: pytest.MonkeyPatch):
    moto = pytest.importorskip("moto")
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    with moto.mock_aws():
        state = standin.State()
        state.s3 = boto3.client("s3", region_name="us-east-1")
        state.s3.create_bucket(Bucket="ckpt")
        server, url = standin.serve(state)
        try:
            yield state, url
        finally:
            state.hold.set()  # no upload left waiting
            server.shutdown()
            server.server_close()


def store_for(cloud: str, url: str) -> dict[str, str]:
    """The `checkpoints` output's shape (contract.py), pointed at the stand-in."""
    return {"aws": {"cloud": "aws", "bucket": "ckpt", "url": f"{url}/s3/ckpt", "region": "us-east-1"},
            "gcp": {"cloud": "gcp", "bucket": "ckpt", "url": url, "region": "us-central1"},
            "azure": {"cloud": "azure", "bucket": "acct/ckpt", "url": f"{url}/blob/ckpt", "region": "eastus"}}[cloud]


def stored(state: standin.State, cloud: str) -> dict[str, bytes]:
    if cloud == "aws":
        out = {}
        for o in state.s3.list_objects_v2(Bucket="ckpt").get("Contents", []):
            out[o["Key"]] = state.s3.get_object(Bucket="ckpt", Key=o["Key"])["Body"].read()
        return out
    return {k.split("/", 1)[1]: v for k, v in state.objects.items()}


def wait_for(what: Callable[[], Any], timeout: float = 30.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("timed out")


def plain_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # straight to the stand-in
    return {**env, "CLOUDTRAIN_IMDS_URL": url, "CLOUDTRAIN_GCE_METADATA_URL": url}


class Node:
    """A cloud node's cloudtrain folder: a running job, an ended one, the watchdog's folder as
    autostop.py fills it, and the real watchdog process over it."""

    def __init__(self, tmp: Path) -> None:
        self.root, self.wd = tmp / "node", tmp / "node" / "watchdog"
        self.wd.mkdir(parents=True)
        for name, text in autostop.node_scripts().items():
            (self.wd / name).write_text(text)
        self.job = self.root / "jobs" / "job-1"
        (self.job / "checkpoints").mkdir(parents=True)
        self.sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)
        (self.job / "pid").write_text(str(self.sleeper.pid))  # a live session: a running job
        ended = self.root / "jobs" / "job-0"
        (ended / "checkpoints").mkdir(parents=True)
        (ended / "checkpoints" / "final.pt").write_bytes(b"job-0's last")
        (ended / "exit_code").write_text("0")
        self.proc: subprocess.Popen | None = None

    def start(self, cloud: str | None, store: dict | None, url: str) -> None:
        config = {"root": str(self.root), "autostop_s": 0, "max_duration_s": 0, "poll_s": 0.2, "grace_s": 1,
                  "session_marker": "", "stop_command": ["true"], "preempt": cloud, "checkpoints": store}
        (self.wd / "config.json").write_text(json.dumps(config))
        self.proc = subprocess.Popen([sys.executable, str(self.wd / "watchdog.py"), str(self.wd)], env=plain_env(url),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def close(self) -> None:
        for p in (self.proc, self.sleeper):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()

    def log(self) -> str:
        return (self.wd / "log.txt").read_text() if (self.wd / "log.txt").exists() else ""

    def marker(self) -> dict | None:
        try:
            return json.loads((self.job / "preempted.json").read_text())
        except (OSError, ValueError):
            return None


@pytest.fixture
def node(tmp_path: Path):
    n = Node(tmp_path)
    yield n
    n.close()


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_watchdog_marks_a_preempted_job_and_pushes_its_checkpoints(cloud, cloud_side, node: Node) -> None:
    state, url = cloud_side
    ckpt = node.job / "checkpoints"
    (ckpt / "epoch-1.pt").write_bytes(b"weights after epoch 1")
    (ckpt / ".epoch-2.pt.tmp").write_bytes(b"half written")  # a write-then-rename in progress
    node.start(cloud, store_for(cloud, url), url)

    # While the job runs: each complete checkpoint goes up once stable; the ended job's too.
    got = wait_for(lambda: (s := stored(state, cloud)) and "job-1/epoch-1.pt" in s and "job-0/final.pt" in s and s)
    assert got["job-1/epoch-1.pt"] == b"weights after epoch 1" and got["job-0/final.pt"] == b"job-0's last"
    assert node.marker() is None, "no notice yet: no preemption"

    # A new checkpoint, and the notice at once: it is pushed without waiting to look stable.
    (ckpt / "epoch-2.pt").write_bytes(b"weights after epoch 2")
    state.notice = NOTICES[cloud]
    marker = wait_for(lambda: (m := node.marker()) and m["checkpoints"]["state"] != "uploading" and m)
    assert marker["by"] == "preemption" and marker["cloud"] == cloud and marker["notice"] == NOTICES[cloud]
    assert isinstance(marker["at"], float) and abs(marker["at"] - time.time()) < 120
    assert marker["checkpoints"]["state"] == "uploaded", marker
    assert marker["checkpoints"]["store"] == f"{cloud} {store_for(cloud, url)['bucket']}"
    assert marker["checkpoints"]["keys"][0] == "job-1/epoch-2.pt"  # the newest first
    objects = stored(state, cloud)
    assert objects["job-1/epoch-2.pt"] == b"weights after epoch 2"
    assert not any(".tmp" in k for k in objects), "a half-written checkpoint never reaches the bucket"
    # The marker is in the bucket too (the node's disk may go with it), in its final state once
    # the checkpoints are up (it is put there again after them).
    wait_for(lambda: json.loads(stored(state, cloud).get(".preempted/job-1.json", b"null")) == marker)
    assert state.rejected == []
    assert f"preemption notice from {cloud}" in node.log()
    assert not (node.root / "jobs" / "job-0" / "preempted.json").exists(), "an ended job was not preempted"
    assert node.proc is not None and node.proc.poll() is None, "the watchdog goes on (autostop, deadline)"


def test_a_notice_during_a_long_upload_is_marked_at_once(cloud_side, node: Node) -> None:
    """A big checkpoint on its way up does not keep the watchdog from its next look: the job is
    marked preempted while the upload still runs, and the newest checkpoint follows it."""
    state, url = cloud_side
    state.hold.clear()  # the store takes the first upload and answers only when released
    (node.job / "checkpoints" / "epoch-1.pt").write_bytes(b"a big one")
    node.start("gcp", store_for("gcp", url), url)
    wait_for(lambda: state.in_flight == 1)
    (node.job / "checkpoints" / "epoch-2.pt").write_bytes(b"the newest")
    state.notice = NOTICES["gcp"]
    marker = wait_for(node.marker)
    assert marker["checkpoints"]["state"] == "uploading" and state.in_flight == 1, "marked while the upload is under way"
    state.hold.set()
    marker = wait_for(lambda: (m := node.marker()) and m["checkpoints"]["state"] == "uploaded" and m)
    assert marker["checkpoints"]["keys"][0] == "job-1/epoch-2.pt"
    assert stored(state, "gcp")["job-1/epoch-2.pt"] == b"the newest"


def test_no_notice_means_no_marker_and_a_failed_look_is_logged_not_fatal(cloud_side, node: Node, tmp_path: Path) -> None:
    state, url = cloud_side
    # Azure: the VM's name is asked first; a metadata server that is not there is no notice.
    node.start("azure", None, "http://127.0.0.1:9")  # nothing listens on the discard port
    wait_for(lambda: "could not read the azure preemption notice" in node.log())
    assert node.marker() is None and node.proc is not None and node.proc.poll() is None


def test_a_notice_for_another_vm_or_another_event_is_not_a_preemption(cloud_side, monkeypatch: pytest.MonkeyPatch) -> None:
    state, url = cloud_side
    monkeypatch.setenv("CLOUDTRAIN_IMDS_URL", url)
    for k in [k for k in os.environ if "proxy" in k.lower()]:
        monkeypatch.delenv(k)
    monkeypatch.syspath_prepend(str(REPO / "cloudtrain" / "jobs"))
    monkeypatch.syspath_prepend(str(REPO / "cloudtrain" / "bootstrap" / "node"))
    import preempt

    state.notice = {**NOTICES["azure"], "Resources": ["ct-test-1"]}
    assert preempt.azure_notice() is None
    state.notice = {**NOTICES["azure"], "EventType": "Reboot"}
    assert preempt.azure_notice() is None
    state.notice = NOTICES["azure"]
    assert preempt.azure_notice() == NOTICES["azure"]
    state.notice = None
    assert preempt.aws_notice() is None  # 404: no interruption scheduled


def test_the_s3_standin_refuses_a_bad_signature(cloud_side, monkeypatch: pytest.MonkeyPatch) -> None:
    """The signature check the upload passes above can fail: a wrong secret is refused."""
    state, url = cloud_side
    monkeypatch.syspath_prepend(str(REPO / "cloudtrain" / "bootstrap" / "node"))
    import blobs

    target = f"{url}/s3/ckpt/job-9/x.pt"
    headers = blobs.sigv4_headers("PUT", target, "us-east-1", (standin.AWS_KEY, "not-the-secret", standin.AWS_SESSION))
    req = urllib.request.Request(target, data=b"x", method="PUT", headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(req, timeout=10)
    assert e.value.code == 403 and state.rejected == ["s3: SignatureDoesNotMatch"]


# --- on a real local node: installed by autostop.py over SSH, watching a real job ------------


JOB = """import json, os, time
ck = os.environ["CLOUDTRAIN_CHECKPOINT_DIR"]
with open(os.path.join(ck, ".epoch-1.pt.tmp"), "wb") as f:  # write, then rename: complete at once
    f.write(b"weights after epoch 1")
os.rename(os.path.join(ck, ".epoch-1.pt.tmp"), os.path.join(ck, "epoch-1.pt"))
print("epoch 1 saved", flush=True)
marker = os.path.join(os.path.dirname(ck), "preempted.json")
for _ in range(1200):  # train on until the node is told it is preempted
    if os.path.exists(marker):
        print("preempted:", json.load(open(marker))["cloud"], flush=True)
        break
    time.sleep(0.1)
"""


def test_on_a_local_node_the_installed_watchdog_sees_the_notice_and_pushes_a_real_jobs_checkpoint(
        cloud_side, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local provider is never preempted; this one says it is AWS spot with a bucket, so
    `autostop.install` ships and starts the watchdog with a notice and a store, as on a cloud."""
    import dataclasses

    from cloudtrain.provisioner.local import LocalProvisioner
    from cloudtrain.state import Store
    from conftest import local_cluster

    state, url = cloud_side
    store = store_for("aws", url)

    class SpotLocal(LocalProvisioner):
        node_preempt = "aws"

        def checkpoint_store(self, record):  # type: ignore[no-untyped-def]
            return store

    monkeypatch.setenv("CLOUDTRAIN_METADATA_URL", url)
    monkeypatch.setenv("CLOUDTRAIN_WATCHDOG_POLL", "0.2")
    with local_cluster(tmp_path_factory, "preempt-local") as (cli, record):
        cdir = Store(cli.home).resolve("local")
        said: list[str] = []
        spot = dataclasses.replace(record, spec=dataclasses.replace(record.spec, spot=True))
        autostop.install(record.cluster, spot, cdir, SpotLocal(), said.append)
        assert said == ["cluster local: watchdog on every node: reads aws's preemption notice, copies checkpoints to ckpt"]
        script = cli.cwd / "train.py"
        script.write_text(JOB)
        proc = cli("run", str(script), "--detach")
        assert proc.returncode == 0, proc.stderr
        root = cli.home / "clusters" / "local" / "provider" / "local-0" / "root"
        (job_id,) = [p.name for p in (root / "jobs").iterdir()]
        wait_for(lambda: f"{job_id}/epoch-1.pt" in stored(state, "aws"))  # while the job runs
        state.notice = NOTICES["aws"]
        marker = wait_for(lambda: (m := _json(root / "jobs" / job_id / "preempted.json")) and m["checkpoints"]["state"] == "uploaded" and m)
        assert marker["cloud"] == "aws" and marker["notice"] == NOTICES["aws"]
        assert stored(state, "aws")[f"{job_id}/epoch-1.pt"] == b"weights after epoch 1" and state.rejected == []
        logs = cli("logs", job_id)
        assert "preempted: aws" in logs.stdout, logs.stdout + logs.stderr


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_a_new_node_restores_a_jobs_checkpoints_from_the_bucket(cloud, cloud_side, tmp_path: Path) -> None:
    """`python3 blobs.py restore STORE PREFIX FOLDER`, as a replacement node runs it beside the
    watchdog's files: every page of the listing, complete names only, each file renamed into place."""
    state, url = cloud_side
    wd = tmp_path / "watchdog"
    wd.mkdir()
    for name, text in autostop.node_scripts().items():
        (wd / name).write_text(text)
    source = tmp_path / "old-node"
    (source / "sub").mkdir(parents=True)
    files = {"epoch-1.pt": b"one", "epoch-2.pt": b"two", "sub/optim.pt": b"three", ".epoch-3.pt.tmp": b"never"}
    for rel, body in files.items():
        (source / rel).write_bytes(body)
    store = store_for(cloud, url)
    put = [sys.executable, "-c", "import json, sys; sys.path.insert(0, sys.argv[1]); import blobs; "
           "blobs.Store(json.loads(sys.argv[2])).put(sys.argv[3], sys.argv[4])", str(wd), json.dumps(store)]
    for rel in files:  # the partial name too: a bucket written by something else may hold one
        subprocess.run([*put, str(source / rel), f"job-1/{rel}"], check=True, env=plain_env(url), timeout=60)
    subprocess.run([*put, str(source / "epoch-1.pt"), "job-10/epoch-1.pt"], check=True, env=plain_env(url), timeout=60)
    new = tmp_path / "new-node"
    new.mkdir()
    out = subprocess.run([sys.executable, str(wd / "blobs.py"), "restore", json.dumps(store), "job-1", str(new)],
                         capture_output=True, text=True, env=plain_env(url), timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(out.stdout)) == ["epoch-1.pt", "epoch-2.pt", "sub/optim.pt"]  # not job-10's, not the partial
    assert {p.relative_to(new).as_posix(): p.read_bytes() for p in new.rglob("*") if p.is_file()} == {
        "epoch-1.pt": b"one", "epoch-2.pt": b"two", "sub/optim.pt": b"three"}
    assert state.rejected == []
    listing = {"aws": "/s3/ckpt/", "gcp": "/storage/v1/b/ckpt/o", "azure": "/blob/ckpt"}[cloud]
    assert [c for c in state.calls if c == ("GET", listing)] == [("GET", listing)] * 2, "two keys a page: both pages read"


@pytest.mark.parametrize("cloud", ["aws", "azure"])
def test_a_checkpoint_bigger_than_a_part_goes_up_in_parts(cloud, cloud_side, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 takes 5 GiB in one PUT and Azure's Put Blob 5000 MiB: a bigger file goes in parts
    (multipart upload; Put Block + Put Block List). Parts of 5 MiB here, S3's smallest."""
    state, url = cloud_side
    monkeypatch.setenv("CLOUDTRAIN_BLOB_PART_BYTES", str(5 << 20))
    monkeypatch.setenv("CLOUDTRAIN_IMDS_URL", url)
    for k in [k for k in os.environ if "proxy" in k.lower()]:
        monkeypatch.delenv(k)
    monkeypatch.syspath_prepend(str(REPO / "cloudtrain" / "bootstrap" / "node"))
    import blobs

    big = tmp_path / "epoch-9.pt"
    body = os.urandom(11 << 20)  # 5 + 5 + 1 MiB
    big.write_bytes(body)
    blobs.Store(store_for(cloud, url)).put(str(big), "job-1/epoch-9.pt")
    assert stored(state, cloud)["job-1/epoch-9.pt"] == body and state.rejected == []
    if cloud == "aws":
        assert state.parts == [1, 2, 3]
    else:
        assert [len(ids) for ids in state.block_lists] == [3]
