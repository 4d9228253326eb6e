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
from typing import Iterator

from cloudtrain import progress
from cloudtrain.early import EarlyStream
from cloudtrain.errors import CommandFailed, RemoteError, TransferError
from cloudtrain.jobs import wire
from cloudtrain.jobs.landing import PARTIAL, display  # noqa: F401  (PARTIAL: where partial files wait, for callers)
from cloudtrain.jobs.landing import Home as _Home
from cloudtrain.jobs.workdir import write_tar
from cloudtrain.remote import SshRemote

PASSES = 4  # streams per download: the first, and resumes after a cut or a damaged file


# The node's tar reads 64 KiB records, reassembling short reads from the pipe (-B), instead of
# its default 10 KiB: a 256 MiB upload made 26,000 reads and writes there (issue 9: 0.9x scp
# with this, 1.05x without). Any archive unpacks so, whatever its own record size.
UNTAR = "tar -x -f - -b 128 -B"
_BIG_BLOCKS = 1 << 20  # packing in 64 KiB records too (padding the end to one) from this size on


def upload_tree(remote: SshRemote, workdir: Path, files: list[str], remote_dir: str) -> None:
    """Ship `files` of `workdir` into `remote_dir` as one tar stream (one round trip, not one per file)."""
    q = shlex.quote(remote_dir)
    size = sum(os.lstat(workdir / f).st_size for f in files)
    send_tar(remote, workdir, files, f"mkdir -p {q} && {UNTAR} -C {q}", size=size)


def send_tar(remote: SshRemote, workdir: Path, files: list[str], command: str, *, size: int = 0) -> None:
    """Stream a tar of `files` of `workdir` (`size` bytes of file data) into `command` on the node (its stdin)."""
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
        blocks = ["-b", "128"] if size >= _BIG_BLOCKS else []  # fewer, bigger writes into ssh's pipe
        proc = subprocess.Popen([tar, "-C", str(workdir), *blocks, "--null", "--no-recursion", "-T", listing.name, "-cf", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
    facts: dict[str, str | None] = field(default_factory=dict)  # `facts` asked for: their text, None where absent


def _safe(rel: bytes) -> bytes:
    """`rel`, refusing names that climb out of the output folder (the names come from the node)."""
    parts = rel.split(b"/")
    if rel.startswith(b"/") or any(p in (b"", b".", b"..") for p in parts):
        raise TransferError(f"the node listed an output outside its folder: {display(rel)!r}", "the node is not behaving; inspect it with `cloudtrain ssh`")
    return rel


def sender_command(python: str | None, wait_for: str | None = None) -> str:
    """The node-side command of an outputs stream (wire.SENDER), its request on its stdin;
    with `wait_for`, it first writes `.` once that file exists (wire.py).

    `python`: the node's interpreter to run it with (the cluster's venv python starts without
    PATH lookups or shims; issue 9), python3 where it is missing or not given."""
    # -I -S: the sender is stdlib only; no site-packages scan, no user environment (issue 9: start-up).
    pick = f"p={shlex.quote(python)}; [ -x \"$p\" ] || p=python3; " if python else "p=python3; "
    wait = f" wait {shlex.quote(wait_for)}" if wait_for else ""
    return f'{pick}exec "$p" -I -S -c {shlex.quote(wire.SENDER)}{wait}'


def start_sender(remote: SshRemote, python: str | None, exit_code: str) -> EarlyStream:
    """A sender started now, on the control connection, to be given its request by
    `download_tree(..., started=)` once the job has ended (issue 9: its start overlaps the job).
    It says `.` when the job's `exit_code` file appears: early.wait_any wakes on it."""
    return EarlyStream(remote, sender_command(python, exit_code), notice=b".")


def download_tree(remote: SshRemote, remote_dir: str, dest: Path, *, extra: dict[str, str] | None = None, rename: dict[str, str] | None = None,
                  python: str | None = None, facts: dict[str, str] | None = None, started: EarlyStream | None = None, bulk_over: int | None = None) -> Fetched:
    """Bring `remote_dir`'s regular files (and `extra`: {local name: node path}) into `dest`,
    every one checked against the node's sha256; resume across cuts and later calls.

    `python`: the node's interpreter for the sender (sender_command). `facts`: {name: node path}
    of small files to read as the stream starts (Fetched.facts). `started`: a sender from
    start_sender, used for the first stream; with `bulk_over`, it sends nothing when the file
    `facts["out_bytes"]` does not name fewer bytes, and the stream is asked again over the bulk path."""
    home = _Home(dest)
    try:
        with progress.phase(f"{remote.node.name}: bringing home"):  # a bar on a terminal, else nothing
            return _download(remote, remote_dir, home, extra or {}, rename or {}, python, facts or {}, started, bulk_over)
    finally:
        if started is not None:
            started.close()  # unused (a refusal before the first stream): it ends on the node
        home.close(done=False)


def _download(remote: SshRemote, remote_dir: str, home: _Home, extra: dict[str, str], rename: dict[str, str], python: str | None,
              facts: dict[str, str], started: EarlyStream | None, bulk_over: int | None) -> Fetched:
    names = {"x" + os.fsencode(k).hex(): os.fsencode(k) for k in (extra or {})}
    renames = {os.fsencode(k): os.fsencode(v) for k, v in (rename or {}).items()}
    fetched = Fetched()
    damaged: dict[str, int] = {}
    last: Exception | None = None
    passes = 0
    while passes < PASSES:
        request = {"root": os.fsencode(remote_dir).hex(), "extra": {fid: os.fsencode(p).hex() for fid, p in zip(names, (extra or {}).values())}, "have": home.have(), "done": home.done(),
                   "facts": {name: os.fsencode(p).hex() for name, p in facts.items()}}
        if started is not None and bulk_over is not None:
            request["bulk_over"] = bulk_over
        first, started = started, None
        passes += 1
        try:
            if first is not None:
                stream = first.stdout(json.dumps(request).encode())
            else:
                stream = remote.stream_stdout(sender_command(python), stdin=io.BytesIO(json.dumps(request).encode()))
            complete = _one_stream(home, stream, names, renames, fetched, damaged)
        except _Bulk:
            remote.control_only = False  # not small: over OpenSSH's master, as a fresh stream
            passes -= 1  # nothing was sent: not an attempt
            continue
        except CommandFailed as e:  # the node's side failed outright (no python3?): retrying won't help
            raise TransferError(f"{remote.node.name} could not send its outputs: {e.message}", "check the node with `cloudtrain ssh`; the files are still there") from e
        except (wire.Cut, RemoteError) as e:
            last = e  # the connection broke: the next stream resumes from the partial files
            remote.close()
            if first is not None and bulk_over is not None:  # the path its sender would have chosen
                sized = (fetched.facts.get("out_bytes") or "").strip()
                remote.control_only = sized.isdigit() and int(sized) < bulk_over
            continue
        if complete:
            home.close(done=True)
            return fetched
        last = TransferError(f"{', '.join(sorted(damaged))} from {remote.node.name} arrived damaged (sha256 mismatch)", "fetch it again with `cloudtrain logs JOB -f`; it is still on the node")
    if isinstance(last, TransferError):
        raise last
    raise TransferError(f"outputs from {remote.node.name} did not come home after {PASSES} attempts: {last}", "run `cloudtrain logs JOB -f` or `cloudtrain down` again; it resumes where this stopped and the files are still on the node") from last


class _Bulk(Exception):
    """The sender found the outputs not small (wire's B frame): ask again over the bulk path."""


def _one_stream(home: _Home, stream: Iterator[bytes], names: dict[str, bytes], renames: dict[bytes, bytes], fetched: Fetched, damaged: dict[str, int]) -> bool:
    """One stream of everything still owed; True when nothing is left to fetch."""
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
            elif tag == b"J":
                fetched.facts.update(wire.decode(payload))  # type: ignore[arg-type]
            elif tag == b"B":
                raise _Bulk()
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
        stream.close()  # type: ignore[attr-defined]  # stops ssh if we leave early
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
