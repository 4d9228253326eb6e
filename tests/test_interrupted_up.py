"""An interrupted `cloudtrain up` on a cloud leaks nothing (issue 10 item 5, review defect 4).

A real `cloudtrain up --provider aws` process drives a real stand-in for the Pulumi CLI
(tests/fake_pulumi/pulumi, found on PATH like the real one) and gets SIGINT or SIGTERM while
`pulumi up` runs. Replaced inside that process, because they need a cloud: AWS pre-flight, and
the EC2 API, served by moto; there the test plants the VM that "the cloud accepted" so the
sweep by tag has something real to find.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FAKE = Path(__file__).parent / "fake_pulumi" / "pulumi"
NAME = "aws-t4"

# The cloudtrain process under test: the real CLI, with what needs a cloud replaced.
RUNNER = r"""
import json, os, sys
import boto3
from moto import mock_aws

from cloudtrain.provisioner import cloud
from cloudtrain.provisioner.contract import CLUSTER_TAG

cloud.AwsProvisioner.preflight = lambda self, spec, choice: (choice, {})
with mock_aws():
    ec2 = boto3.client("ec2", region_name="us-east-1")
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    def tagged(value):
        return [{"ResourceType": "instance", "Tags": [{"Key": CLUSTER_TAG, "Value": value}]}]
    # The VM whose create was in flight: the cloud has it, Pulumi state may not.
    if os.environ.get("PLANT_VM"):
        ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="g4dn.xlarge", TagSpecifications=tagged(sys.argv[-1]))
    # Another cluster's VM, whose tag value differs only by a suffix: never touched.
    ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="g4dn.xlarge", TagSpecifications=tagged(sys.argv[-1] + "-other"))
    from cloudtrain.cli import main
    try:
        main(sys.argv[1:])
    finally:
        live = [
            {t["Key"]: t["Value"] for t in i.get("Tags", [])}.get(CLUSTER_TAG)
            for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] not in ("terminated", "shutting-down")
        ]
        with open(os.environ["LIVE_VMS"], "w") as f:
            json.dump(live, f)
"""


def _calls(d: Path) -> list[dict]:
    path = d / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _cli_of(calls: list[dict], *prefix: str) -> list[dict]:
    return [c for c in calls if "args" in c and [a for a in c["args"] if a != "--non-interactive"][: len(prefix)] == list(prefix)]


@pytest.fixture
def fake_pulumi(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "pulumi"
    exe.write_text(f"#!{sys.executable}\n" + FAKE.read_text().split("\n", 1)[1])
    exe.chmod(0o755)
    state = tmp_path / "fake-pulumi"
    state.mkdir()
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_PULUMI_DIR": str(state),
        "LIVE_VMS": str(tmp_path / "live-vms.json"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    yield state, env
    # A failed test must not leave a stand-in CLI behind (the passing ones assert there is none).
    from conftest import pids_where

    for pid in pids_where("environ", lambda e: f"FAKE_PULUMI_DIR={state}".encode() in e):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _interrupted_up(home: Path, tmp_path: Path, env: dict[str, str], state: Path, sig: int, group: bool = False) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run `cloudtrain up` until `pulumi up` works, then signal it: its whole process group
    (what a terminal's Ctrl-C does) when `group`, else the cloudtrain process alone (`kill`)."""
    full_env = {**os.environ, "CLOUDTRAIN_HOME": str(home), **env}
    full_env.pop("PULUMI_BACKEND_URL", None)
    args = ["up", "--provider", "aws", "--gpu", "t4", "--region", "us-east-1", "--ssh-cidr", "198.51.100.7/32", "--framework", "none", "--name", NAME]
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, "-c", RUNNER, *args], env=full_env, stdout=o, stderr=e, cwd=tmp_path, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not any(c.get("up") == "started" for c in _calls(state)):
                assert proc.poll() is None, f"cloudtrain exited before pulumi up ran: {err.read_text()}"
                assert time.monotonic() < deadline, "pulumi up never started"
                time.sleep(0.1)
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, out.read_text(), err.read_text()), _calls(state)


def _no_fake_left(state: Path) -> None:
    from conftest import pids_where

    assert pids_where("environ", lambda env: f"FAKE_PULUMI_DIR={state}".encode() in env) == []


def test_sigint_mid_up_lets_the_engine_finish_then_destroys(home, tmp_path, fake_pulumi):
    state, env = fake_pulumi
    done, calls = _interrupted_up(home, tmp_path, env, state, signal.SIGINT, group=True)  # a terminal's Ctrl-C

    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith("cloudtrain: interrupted"), done.stderr
    up = next(c for c in calls if c.get("up") == "started")
    got = [c for c in calls if c.get("pid") == up["pid"] and "signal" in c]
    # Exactly one SIGINT reached the CLI: a second one would have made the engine terminate.
    assert [c["signal"] for c in got] == ["SIGINT"]
    stopped = next(c for c in calls if c.get("stopped") == "gracefully")
    destroy = _cli_of(calls, "destroy")
    assert destroy, "the stack was not destroyed"
    # cloudtrain waited for the engine to finish before it destroyed anything.
    assert stopped["t"] < destroy[0]["t"]
    deleted = {c["id"] for c in calls if "deleted" in c}
    assert deleted == {"vpc-0123", "i-0abc"}  # the create that was in flight when Ctrl-C came too
    assert _cli_of(calls, "stack", "export")[0]["t"] < destroy[0]["t"]
    assert _cli_of(calls, "stack", "rm"), "the stack was not removed"
    assert not _cli_of(calls, "cancel")  # a clean stop leaves no lock to break
    assert not (state / "lock").exists() and not (state / "state.json").exists()
    assert json.loads(Path(env["LIVE_VMS"]).read_text()) == [f"{NAME}-other"]
    assert not (home / "clusters" / NAME).exists()
    _no_fake_left(state)


def test_sigterm_with_a_stuck_engine_escalates_clears_pending_and_sweeps_by_tag(home, tmp_path, fake_pulumi):
    state, env = fake_pulumi
    env = {**env, "FAKE_PULUMI_ON_SIGINT": "hang", "CLOUDTRAIN_PULUMI_STOP_TIMEOUT": "2", "PLANT_VM": "1"}
    done, calls = _interrupted_up(home, tmp_path, env, state, signal.SIGTERM)

    assert done.returncode == 143, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith("cloudtrain: stopped by SIGTERM"), done.stderr
    up = next(c for c in calls if c.get("up") == "started")
    got = [c for c in calls if c.get("pid") == up["pid"] and "signal" in c]
    assert [c["signal"] for c in got] == ["SIGINT", "SIGINT"]  # graceful first, terminate past the bound
    cancel, export, imp, destroy = (_cli_of(calls, *p) for p in (["cancel"], ["stack", "export"], ["stack", "import"], ["destroy"]))
    assert cancel and imp and destroy
    # The stale lock goes first, then the pending create, then the destroy.
    assert got[-1]["t"] < cancel[0]["t"] < export[0]["t"] < imp[0]["t"] < destroy[0]["t"]
    assert "dropped the pending operation of an interrupted update: creating" in done.stderr
    assert {c["id"] for c in calls if "deleted" in c} == {"vpc-0123"}  # all that state knew
    # The VM state never recorded was found by its tag and terminated; the other cluster's stays.
    assert json.loads(Path(env["LIVE_VMS"]).read_text()) == [f"{NAME}-other"]
    assert "that Pulumi state did not know: instance i-" in done.stderr
    assert not (home / "clusters" / NAME).exists()
    _no_fake_left(state)
