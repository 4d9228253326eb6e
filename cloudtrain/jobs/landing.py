"""The output folder's side of a download (transfer.py): partial files, the ledger of verified
ones, and final names.

Each file lands in `.cloudtrain-partial/` until its sha256 matches the node's, and only then
takes its name; the ledgers there say what a later attempt need not fetch again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import IO

from cloudtrain.errors import TransferError

PARTIAL = ".cloudtrain-partial"
RESUMABLE = 4 << 20  # files from this size resume where a cut left them; smaller ones start over
_UNSTORABLE = {errno.EILSEQ, errno.EINVAL, errno.ENAMETOOLONG}  # names a local filesystem refuses


def display(name: bytes) -> str:
    """A name as text: itself when it is UTF-8, else with its odd bytes as \\xNN."""
    return name.decode("utf-8", "backslashreplace")


def _escaped(name: bytes) -> bytes:
    """A name any filesystem holds: bytes outside printable ASCII (and %) as %XX."""
    return b"".join(bytes([c]) if 32 <= c < 127 and c != 0x25 else b"%%%02X" % c for c in name)


class Home:
    """The output folder's side: partial files, the ledger of verified ones, and final names."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.partial = dest / PARTIAL
        try:
            self.partial.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TransferError(f"cannot create the output folder {dest}: {e.strerror or e}", "choose another --output, or free space and run again") from e
        self._ledgers: dict[str, IO[str]] = {}
        self._made: set[Path] = {dest}
        self.started = self._lines("started.jsonl")  # staging name -> file id
        self.verified = {e["id"]: e for e in self._lines("verified.jsonl").values()}

    def _lines(self, name: str) -> dict[str, dict]:
        found: dict[str, dict] = {}
        try:
            for line in (self.partial / name).read_text().splitlines():
                try:
                    entry = json.loads(line)
                    found[entry["key"]] = entry
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a full disk or a kill: that file is fetched again
        except FileNotFoundError:
            pass
        except OSError as e:
            raise TransferError(f"cannot read {self.partial / name}: {e.strerror or e}", f"remove {self.partial} and run again") from e
        return found

    def _append(self, name: str, entry: dict) -> None:
        # Held open for the whole download: thousands of small files cost one write each.
        if name not in self._ledgers:
            self._ledgers[name] = open(self.partial / name, "a", buffering=1)
        self._ledgers[name].write(json.dumps(entry) + "\n")

    def staging(self, fid: str) -> Path:
        return self.partial / hashlib.sha256(fid.encode()).hexdigest()[:32]

    def have(self) -> dict[str, int]:
        """{file id: bytes already here} for partial files."""
        found = {}
        for key, entry in self.started.items():
            try:
                found[entry["id"]] = (self.partial / key).stat().st_size
            except FileNotFoundError:
                continue
        return found

    def done(self) -> dict[str, list[int]]:
        """{file id: [size, mtime_ns] on the node} of files verified earlier and still here whole."""
        found = {}
        for fid, e in self.verified.items():
            try:
                if (self.dest / os.fsdecode(bytes.fromhex(e["local"]))).stat().st_size == e["size"]:
                    found[fid] = [e["size"], e["mtime_ns"]]
            except OSError:
                continue
        return found

    def begin(self, fid: str, start: int, size: int) -> tuple[int, "hashlib._Hash"]:
        """Open the partial file for `fid` at `start`, with the hash of what it already holds."""
        path = self.staging(fid)
        key = path.name
        if key not in self.started and size >= RESUMABLE:
            self._append("started.jsonl", {"key": key, "id": fid})
            self.started[key] = {"key": key, "id": fid}
        if start == 0:
            # A new file, never one truncated to 0: ext4 writes back a file truncated to 0 as
            # it closes (auto_da_alloc), ~0.3 s per 512 MiB here (issue 9).
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if start:
            os.ftruncate(fd, start)
        h = hashlib.sha256()
        left = start
        while left:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
        return fd, h

    def discard(self, fid: str) -> None:
        try:
            os.unlink(self.staging(fid))
        except FileNotFoundError:
            pass

    def finish(self, fid: str, local: bytes, size: int, mtime_ns: int, sha256: str) -> bytes:
        """Give a verified partial file its name; the name it got (escaped if refused here)."""
        for name in (local, _escaped(local)):
            final = self.dest / os.fsdecode(name)
            try:
                if final.parent not in self._made:
                    final.parent.mkdir(parents=True, exist_ok=True)
                    self._made.add(final.parent)
                os.replace(self.staging(fid), final)
                break
            except OSError as e:
                if e.errno not in _UNSTORABLE or name != local:
                    raise TransferError(f"cannot store {display(local)} in {self.dest}: {e.strerror or e}", "fix or free the destination, then run `cloudtrain down` (or `logs JOB -f`) again; the files are still on the node") from e
        self._append("verified.jsonl", {"key": fid, "id": fid, "local": name.hex(), "size": size, "mtime_ns": mtime_ns, "sha256": sha256})
        self.verified[fid] = {"id": fid, "local": name.hex(), "size": size, "mtime_ns": mtime_ns, "sha256": sha256}
        return name

    def close(self, done: bool) -> None:
        for f in self._ledgers.values():
            try:
                f.close()
            except OSError:
                pass
        if done:
            shutil.rmtree(self.partial, ignore_errors=True)


__all__ = ["PARTIAL", "RESUMABLE", "Home", "display"]
