"""Moving files between here and a node: the workdir out as a tar stream, outputs home verified.

Outputs come home in one stream (wire.py) that resumes: each file lands in `.cloudtrain-partial/`
under the output folder until its sha256 matches the node's, and only then takes its name, so a
cut connection, a full disk or a killed client never leaves a truncated file that looks whole.
The next attempt (the automatic retry, or a later `logs -f` / `down`) asks the node only for
what is still owed, from where each partial file stopped; a file whose hash differs is fetched
again from its start. A file the node cannot read (vanished, unreadable) is reported by name and
never stops the rest.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cloudtrain import progress
from cloudtrain.errors import CommandFailed, RemoteError, TransferError
from cloudtrain.jobs import wire
from cloudtrain.jobs.workdir import write_tar
from cloudtrain.remote import SshRemote

PARTIAL = ".cloudtrain-partial"
PASSES = 4  # streams per download: the first, and resumes after a cut or a damaged file
RESUMABLE = 4 << 20  # files from this size resume where a cut left them; smaller ones start over
_UNSTORABLE = {errno.EILSEQ, errno.EINVAL, errno.ENAMETOOLONG}  # names a local filesystem refuses


def upload_tree(remote: SshRemote, workdir: Path, files: list[str], remote_dir: str) -> None:
    """Ship `files` of `workdir` into `remote_dir` as one tar stream (one round trip, not one per file)."""
    q = shlex.quote(remote_dir)
    send_tar(remote, workdir, files, f"mkdir -p {q} && tar xf - -C {q}")


def send_tar(remote: SshRemote, workdir: Path, files: list[str], command: str) -> None:
    """Stream a tar of `files` of `workdir` into `command` on the node (its stdin)."""
    tar = shutil.which("tar")
    # A link travels as workdir.write_tar decides (rewritten relative, or as the file it names,
    # e.g. a symlinked script): the system tar would pack it as a dangling link.
    if tar is None or any(os.path.islink(workdir / f) for f in files):
        remote.send_stream(command, lambda out: write_tar(workdir, files, out))
        return
    # The system tar packs in C at disk speed (Python's tarfile costs more CPU than the cipher),
    # and OpenSSH reads its output straight from the pipe.
    with tempfile.NamedTemporaryFile("wb", prefix="cloudtrain-files-") as listing:
        listing.write(b"".join(os.fsencode(f) + b"\0" for f in files))
        listing.flush()
        proc = subprocess.Popen([tar, "-C", str(workdir), "--null", "--no-recursion", "-T", listing.name, "-cf", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        progress.poll(lambda: progress.bytes_read(proc.pid))  # the bytes never pass through us
        try:
            remote.send_stream(command, lambda out: shutil.copyfileobj(proc.stdout, out, 1 << 20), source=proc.stdout)  # type: ignore[arg-type]
        finally:
            proc.stdout.close()  # type: ignore[union-attr]
            err = proc.stderr.read().decode(errors="replace").strip()  # type: ignore[union-attr]
            code = proc.wait()
        if code != 0:
            raise TransferError(f"packing the workdir {workdir} failed: {err.splitlines()[-1] if err else f'tar exited {code}'}", "check that its files are readable")


@dataclass
class Fetched:
    files: dict[str, dict[str, object]] = field(default_factory=dict)  # manifest entries by local name
    missing: dict[str, str] = field(default_factory=dict)  # name -> why the node could not send it
    resumed: dict[str, int] = field(default_factory=dict)  # name -> the byte a cut transfer resumed from
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (the job's name, the name it got here)


def display(name: bytes) -> str:
    """A name as text: itself when it is UTF-8, else with its odd bytes as \\xNN."""
    return name.decode("utf-8", "backslashreplace")


def _safe(rel: bytes) -> bytes:
    """`rel`, refusing names that climb out of the output folder (the names come from the node)."""
    parts = rel.split(b"/")
    if rel.startswith(b"/") or any(p in (b"", b".", b"..") for p in parts):
        raise TransferError(f"the node listed an output outside its folder: {display(rel)!r}", "the node is not behaving; inspect it with `cloudtrain ssh`")
    return rel


def _escaped(name: bytes) -> bytes:
    """A name any filesystem holds: bytes outside printable ASCII (and %) as %XX."""
    return b"".join(bytes([c]) if 32 <= c < 127 and c != 0x25 else b"%%%02X" % c for c in name)


class _Home:
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
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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


def download_tree(remote: SshRemote, remote_dir: str, dest: Path, *, extra: dict[str, str] | None = None, rename: dict[str, str] | None = None, python: str | None = None) -> Fetched:
    """Bring `remote_dir`'s regular files (and `extra`: {local name: node path}) into `dest`,
    every one checked against the node's sha256; resume across cuts and later calls.

    `python`: the node's interpreter to run the sender with (the cluster's venv python starts
    without PATH lookups or shims; issue 9), python3 where it is missing or not given."""
    home = _Home(dest)
    try:
        with progress.phase(f"{remote.node.name}: bringing home"):  # a bar on a terminal, else nothing
            return _download(remote, remote_dir, home, extra or {}, rename or {}, python)
    finally:
        home.close(done=False)


def _download(remote: SshRemote, remote_dir: str, home: _Home, extra: dict[str, str], rename: dict[str, str], python: str | None) -> Fetched:
    names = {"x" + os.fsencode(k).hex(): os.fsencode(k) for k in (extra or {})}
    renames = {os.fsencode(k): os.fsencode(v) for k, v in (rename or {}).items()}
    fetched = Fetched()
    damaged: dict[str, int] = {}
    last: Exception | None = None
    for _ in range(PASSES):
        request = {"root": os.fsencode(remote_dir).hex(), "extra": {fid: os.fsencode(p).hex() for fid, p in zip(names, (extra or {}).values())}, "have": home.have(), "done": home.done()}
        try:
            complete = _one_stream(remote, home, request, names, renames, fetched, damaged, python)
        except CommandFailed as e:  # the node's side failed outright (no python3?): retrying won't help
            raise TransferError(f"{remote.node.name} could not send its outputs: {e.message}", "check the node with `cloudtrain ssh`; the files are still there") from e
        except (wire.Cut, RemoteError) as e:
            last = e  # the connection broke: the next stream resumes from the partial files
            remote.close()
            continue
        if complete:
            home.close(done=True)
            return fetched
        last = TransferError(f"{', '.join(sorted(damaged))} from {remote.node.name} arrived damaged (sha256 mismatch)", "fetch it again with `cloudtrain logs JOB -f`; it is still on the node")
    if isinstance(last, TransferError):
        raise last
    raise TransferError(f"outputs from {remote.node.name} did not come home after {PASSES} attempts: {last}", "run `cloudtrain logs JOB -f` or `cloudtrain down` again; it resumes where this stopped and the files are still on the node") from last


def _one_stream(remote: SshRemote, home: _Home, request: dict, names: dict[str, bytes], renames: dict[bytes, bytes], fetched: Fetched, damaged: dict[str, int], python: str | None) -> bool:
    """One stream of everything still owed; True when nothing is left to fetch."""
    # -I -S: the sender is stdlib only; no site-packages scan, no user environment (issue 9: start-up).
    pick = f"p={shlex.quote(python)}; [ -x \"$p\" ] || p=python3; " if python else "p=python3; "
    stream = remote.stream_stdout(f'{pick}exec "$p" -I -S -c {shlex.quote(wire.SENDER)}', stdin=io.BytesIO(json.dumps(request).encode()))
    fd, h, current, redo = -1, hashlib.sha256(), None, False
    try:
        for tag, payload in wire.read_frames(stream):
            if tag == b"D":
                h.update(payload)
                progress.advance(len(payload))
                try:
                    _write_all(fd, payload, home.dest)
                except TransferError:
                    # Free what the partial file holds (a full disk needs the room for the
                    # manifest saying the job is incomplete); that file restarts next time.
                    os.close(fd)
                    fd = -1
                    home.discard(current[0])  # type: ignore[index]
                    raise
            elif tag == b"F":
                fid, size, mtime_ns, start = wire.decode(payload)
                local = names.get(fid) or _safe(bytes.fromhex(fid[1:]))
                if fid.startswith("o") and local in renames:
                    local = renames[local]
                    if (pair := (display(bytes.fromhex(fid[1:])), display(local))) not in fetched.renamed:  # once, whatever the passes
                        fetched.renamed.append(pair)
                current = (fid, local, size, mtime_ns)
                if start == -1:
                    e = home.verified[fid]
                    fetched.files[display(bytes.fromhex(e["local"]))] = _entry(bytes.fromhex(e["local"]), local, e["sha256"], size)
                    continue
                progress.expect(size - start)
                if start:
                    fetched.resumed[display(local)] = start
                fd, h = _begin(home, fid, start, size, local)
            elif tag == b"H":
                fid, local, size, mtime_ns = current  # type: ignore[misc]
                os.close(fd)
                fd = -1
                if h.digest() != payload:
                    home.discard(fid)  # damaged: fetched again from its first byte
                    damaged[display(local)] = damaged.get(display(local), 0) + 1
                    redo = True
                    continue
                stored = home.finish(fid, local, size, mtime_ns, payload.hex())
                fetched.files[display(stored)] = _entry(stored, local, payload.hex(), size)
                fetched.missing.pop(display(local), None)
                damaged.pop(display(local), None)
            elif tag == b"E":
                fid, reason = wire.decode(payload)
                local = names.get(fid) or _safe(bytes.fromhex(fid[1:]))
                fetched.missing[display(local)] = reason
                if fd >= 0:
                    os.close(fd)
                    fd = -1
    finally:
        if fd >= 0:
            os.close(fd)
        stream.close()  # stops ssh if we leave early
    return not redo


def _begin(home: _Home, fid: str, start: int, size: int, local: bytes) -> tuple[int, "hashlib._Hash"]:
    try:
        free = shutil.disk_usage(home.dest).free
    except OSError:
        free = None  # the write below says what is wrong
    if free is not None and size - start > free:
        # Refused before a byte lands: filling the disk first would only leave less room for
        # the manifest that says the job is incomplete, and waste the transfer.
        need = f"{display(local)} needs {(size - start) / (1 << 20):.1f} MiB, {free / (1 << 20):.1f} MiB free"
        raise _local_error(home.dest, OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({need})"))
    try:
        return home.begin(fid, start, size)
    except OSError as e:
        raise _local_error(home.dest, e) from e


def _write_all(fd: int, data: bytes, dest: Path) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        raise _local_error(dest, e) from e


def _local_error(dest: Path, e: OSError) -> TransferError:
    return TransferError(
        f"outputs could not be written into {dest}: {e.strerror or e}",
        "free space or fix the destination, then run `cloudtrain logs JOB -f` (or `cloudtrain down`) again; it resumes, and the files are still on the node",
    )


def _entry(stored: bytes, local: bytes, sha256: str, size: int) -> dict[str, object]:
    entry: dict[str, object] = {"sha256": sha256, "size": size}
    if display(local).encode("utf-8", "surrogateescape") != local or stored != local:
        entry["name_hex"] = local.hex()  # the name's bytes as the node has them
    if stored != local:
        entry["stored_as"] = display(stored)
    return entry
