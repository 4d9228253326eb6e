"""Incremental workdir: each node keeps the last tree shipped to it from each workdir (the
most recent few, sync_node_cache.py's KEEP_TREES); a run sends only what changed.

The node's manifest (sync_node.py) records, for each shipped path, what it was here when it
shipped: a file's size, mtime_ns and mode, or a link's target. A path whose record differs from
what it is now ships again (mtime alone never lets a file of another size through); paths no
longer shipped are deleted from the cache. Each job then runs on its own copy of the cache, so
a job's edits reach neither the cache nor the next job; the copy for an unchanged tree is made
ahead, in the background after the previous run (sync_node_cache.py's spare), so taking it is a rename. A cache that cannot be trusted (no
manifest, a file missing or of another size, a run cut halfway) is rebuilt from a full upload.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from cloudtrain import progress
from cloudtrain.errors import CommandFailed, TransferError
from cloudtrain.jobs import transfer
from cloudtrain.jobs.workdir import link_target
from cloudtrain.layout import NodePaths
from cloudtrain.remote import SshRemote

# One program, one python start on the node: sync_node.py, and the cache module it imports.
_NODE = [Path(__file__).with_name(name) for name in ("sync_node_cache.py", "sync_node.py")]
CONFLICT = 75  # sync_node.py: another run changed the cache between our read and our update


@dataclass(frozen=True)
class Synced:
    sent: int  # files that crossed
    total: int  # files the job has
    bytes: int  # their bytes


def node_program() -> str:
    """The node side's source, as one `python -c` program: sync_node.py, after a few lines that
    make sync_node_cache.py's text the module `sync_node_cache` its import finds (no file to
    place on the node first)."""
    cache, node = (path.read_text() for path in _NODE)
    return ("import sys, types\nsys.modules['sync_node_cache'] = _cache = types.ModuleType('sync_node_cache')\n"
            f"exec(compile({cache!r}, 'sync_node_cache.py', 'exec'), _cache.__dict__)\n{node}")


def entries(workdir: Path, files: list[str]) -> dict[str, list]:
    """What each shipped path is here, as the manifest records it."""
    shipped = set(files)
    found: dict[str, list] = {}
    for rel in files:
        path = workdir / rel
        if os.path.islink(path) and (target := link_target(workdir, rel, shipped)) is not None:
            found[rel] = ["l", target]
        else:
            st = path.stat()  # a link that ships as the file it names (the script): that file
            found[rel] = ["f", st.st_size, st.st_mtime_ns, st.st_mode & 0o7777]
    return found


def cache_key(workdir: Path) -> str:
    """Which of the node's trees is this workdir's: one per workdir (and machine it ships
    from), so that runs alternating between two projects do not ship each whole every time."""
    return hashlib.sha256(f"{socket.gethostname()}\0{workdir.resolve()}".encode()).hexdigest()[:16]


def ship(remote: SshRemote, paths: NodePaths, workdir: Path, files: list[str], work: str,
         job_files: list[tuple[str, str, int]] = (), track: dict | None = None) -> Synced:
    """Make `work` on the node hold exactly `files` of `workdir`, sending only what changed;
    then write `job_files` ((path, text, mode) each) and, with `track` (the job's folder, log,
    pid file and linger), start the job's track.py there.

    An unchanged workdir costs one node-side command for all of it (sync_node.py's plan)."""
    local = entries(workdir, files)
    q = shlex.quote
    cache = f"{paths.workdir_cache}/{cache_key(workdir)}"
    # The cluster's venv python, -I -S (stdlib only): no PATH lookup or shim, no site scan (issue 9).
    base = f"{q(paths.python)} -I -S -c {q(node_program())} {q(cache)} {q(work)}"
    deliver = {"files": [list(f) for f in job_files], "track": track}
    for fresh in (False, True):  # a second try (after a concurrent run changed the cache) ships all
        try:
            cached: dict = {} if fresh else _plan(remote, base, {"entries": local, **deliver})
        except CommandFailed as e:
            if e.result.exit_code == CONFLICT:
                continue
            raise _failed(remote, e) from e
        if cached.get("done"):
            return Synced(sent=0, total=len(files), bytes=0)
        have = cached.get("entries", {})
        changed = [rel for rel in files if have.get(rel) != local[rel]]
        header = {
            "expect": cached.get("generation"),
            "entries": local,
            "delete": sorted(rel for rel in have if rel not in local),
            "tar": bool(changed),
            **deliver,
        }
        incoming = f"{cache}/incoming-{uuid.uuid4().hex}.json"
        remote.write_text(incoming, json.dumps(header))
        apply = f"{base} apply {q(incoming)}"
        size = sum(local[rel][1] for rel in changed if local[rel][0] == "f")
        try:
            if changed:
                with progress.phase(f"{remote.node.name}: shipping {len(changed)} file(s)", total=size):
                    transfer.send_tar(remote, workdir, changed, apply, size=size)
            else:
                remote.run(apply)
        except CommandFailed as e:
            if e.result.exit_code == CONFLICT and not fresh:
                continue
            raise _failed(remote, e) from e
        return Synced(sent=len(changed), total=len(files), bytes=size)
    raise AssertionError("unreachable: the fresh pass never conflicts")


def _failed(remote: SshRemote, e: CommandFailed) -> TransferError:
    why = (e.result.stderr or "").strip()[-300:]
    return TransferError(f"updating the workdir on {remote.node.name} failed: {why}", "run it again; the next run ships the whole workdir")


def _plan(remote: SshRemote, base: str, header: dict) -> dict:
    """The node's manifest, or {"done": True} where nothing had to cross and all is done."""
    try:
        found = json.loads(remote.run(f"{base} plan", stdin=json.dumps(header).encode()).stdout)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}
