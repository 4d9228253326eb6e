"""Moving files between here and a node: the workdir out as a tar stream, outputs home verified.

Outputs come home as one tar stream, then every file is checked against the sha256 the node
computed before sending; a damaged file is fetched again on its own, and a file that stays
damaged is an error, never a silent loss.
"""

from __future__ import annotations

import io
import json
import shlex
import tarfile
from pathlib import Path
from typing import BinaryIO, Iterator

from cloudtrain.errors import RemoteError, TransferError
from cloudtrain.jobs.workdir import sha256_file, write_tar
from cloudtrain.remote import SshRemote

# Runs on the node with any python3 (stdlib only): {relative path: {sha256, size}} of a folder.
_MANIFEST = """
import hashlib, json, os, sys
root = sys.argv[1]
found = {}
for dirpath, _, names in os.walk(root):
    for name in names:
        path = os.path.join(dirpath, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        found[os.path.relpath(path, root).replace(os.sep, "/")] = {"sha256": h.hexdigest(), "size": os.path.getsize(path)}
print(json.dumps(found))
"""


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks, for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def upload_tree(remote: SshRemote, workdir: Path, files: list[str], remote_dir: str) -> None:
    """Ship `files` of `workdir` into `remote_dir` as one tar stream (one round trip, not one per file)."""
    q = shlex.quote(remote_dir)
    remote.send_stream(f"mkdir -p {q} && tar xf - -C {q}", lambda out: write_tar(workdir, files, out))


def remote_manifest(remote: SshRemote, remote_dir: str) -> dict[str, dict[str, object]]:
    """{relative path: {sha256, size}} of the regular files under `remote_dir` ({} when it is absent).

    Symbolic links are not followed or sent: a link to a file elsewhere on the node would
    bring home something the job did not write into its output folder."""
    q = shlex.quote(remote_dir)
    # if/else rather than `&& ||`: a failing python3 must fail here, not read as "no outputs".
    result = remote.run(f"if test -d {q}; then python3 - {q}; else echo '{{}}'; fi", stdin=_MANIFEST.encode())
    return json.loads(result.stdout.strip().splitlines()[-1])


def _extract(remote: SshRemote, remote_dir: str, names: list[str], dest: Path) -> None:
    # Exactly the manifest's files, listed on stdin: links and special files never travel.
    listing = io.BytesIO(b"".join(name.encode() + b"\0" for name in names))
    stream = remote.stream_stdout(f"tar cf - -C {shlex.quote(remote_dir)} --null --no-recursion -T -", stdin=listing)
    try:
        unpack(io.BufferedReader(_ChunkReader(stream), 1 << 20), dest)
    except (tarfile.TarError, OSError) as e:
        raise TransferError(f"outputs from {remote.node.name} could not be unpacked into {dest}: {e}", "free space or fix the destination, then run `cloudtrain down` (or `logs JOB -f`) again; the files are still on the node") from e


# Extraction filters came in Python 3.12 and in patch releases of older ones (3.11.4,
# 3.10.12); Debian 12's 3.11.2 lacks them, so unpack() checks every member itself either way.
_HAS_TAR_FILTERS = hasattr(tarfile, "data_filter")


def unpack(stream: BinaryIO, dest: Path) -> None:
    """Extract a tar stream into `dest`: regular files and folders only, none outside `dest`."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not (member.isreg() or member.isdir()):
                raise TransferError(f"the node sent {member.name!r}, which is not a regular file", "the node is not behaving; inspect it with `cloudtrain ssh`")
            _safe(dest, member.name)
            if _HAS_TAR_FILTERS:
                tar.extract(member, dest, filter="data")
            else:
                tar.extract(member, dest, set_attrs=False)  # no owners or odd modes from the node


def _safe(dest: Path, rel: str) -> Path:
    """`dest / rel`, refusing names that climb out of `dest` (the manifest comes from the node)."""
    path = Path(rel)
    if path.is_absolute() or ".." in path.parts:
        raise TransferError(f"the node listed an output outside its folder: {rel!r}", "the node is not behaving; inspect it with `cloudtrain ssh`")
    return dest / path


def download_tree(remote: SshRemote, remote_dir: str, dest: Path) -> dict[str, dict[str, object]]:
    """Copy `remote_dir` into `dest`; return its manifest after checking every file's sha256."""
    manifest = remote_manifest(remote, remote_dir)
    targets = {rel: _safe(dest, rel) for rel in manifest}
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TransferError(f"cannot create the output folder {dest}: {e}", "choose another --output") from e
    if manifest:
        try:
            _extract(remote, remote_dir, list(manifest), dest)
        except RemoteError:
            # One more try on a fresh connection: paramiko can time out a key re-exchange that
            # falls on a channel close (every 512 MiB); the files are still on the node.
            remote.close()
            _extract(remote, remote_dir, list(manifest), dest)
    for rel, entry in manifest.items():
        local = targets[rel]
        if local.is_file() and sha256_file(local) == entry["sha256"]:
            continue
        remote.get(f"{remote_dir}/{rel}", local)  # one more try, file by file
        if sha256_file(local) != entry["sha256"]:
            raise TransferError(f"{rel} from {remote.node.name} arrived damaged (sha256 mismatch)", f"fetch it again with `cloudtrain logs JOB`; it is still on the node in {remote_dir}")
    return manifest
