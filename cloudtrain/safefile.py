"""Files in the cloudtrain home: private (0600 files, 0700 folders, whatever the umask),
atomic (temp + rename) and durable (the file and its folder fsynced before we rely on them).

A record is never a single point of failure: `read_json` turns anything unreadable into
`DamagedRecord` naming the file, so callers can skip it, report it, or remove what it named.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from cloudtrain.errors import DamagedRecord

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """mkdir -p, then 0700 on every folder it made and on `path` itself (a umask never widens it)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:  # another cloudtrain made it first
            pass
        os.chmod(d, DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    """Atomically replace `path` with `text`, 0600, fsynced with its folder: after a crash the
    file is either the old one or the new one, never half of either."""
    private_dir(path.parent)
    # A temp name of its own: two processes saving one record must not share a temp file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), FILE_MODE)  # mkstemp's 0600 is still subject to the umask
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path, what: str, hint: str) -> Any:
    """The parsed file; FileNotFoundError when absent; DamagedRecord when it cannot be parsed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise DamagedRecord(f"{what} {path} cannot be read ({e.strerror})", hint, str(path)) from e
    try:
        return json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        why = "empty" if not raw.strip() else f"not valid JSON: {e}"
        raise DamagedRecord(f"{what} {path} is damaged ({why})", hint, str(path)) from e


def private_tree(root: Path) -> None:
    """0700 / 0600 on everything under `root` (files other code wrote there: logs, facts).
    Executable bits are kept for the owner only."""
    if not root.exists():
        return
    for folder, dirs, files in os.walk(root):
        os.chmod(folder, DIR_MODE)
        for name in files:
            p = Path(folder) / name
            if p.is_symlink():
                continue
            mode = os.stat(p).st_mode
            os.chmod(p, FILE_MODE | (0o100 if mode & 0o100 else 0))


@contextmanager
def private_umask() -> Iterator[None]:
    """Files made meanwhile (by code writing into the home: bootstrap logs, facts) are private."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def open_lock(path: Path) -> int:
    """A lock file's descriptor, the file 0600."""
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd
