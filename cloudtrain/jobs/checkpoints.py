"""$CLOUDTRAIN_CHECKPOINT_DIR: copied off rank 0's node while the job runs, restored on recovery.

The caller pulls (`run`, `logs -f`, `launch` while they follow a job) into
`<output>/checkpoints/`. A file is taken only once it is complete: not open for writing by any
process on the node, its size and mtime unchanged over two polls, and not named like a file
still being written (a leading `.`, or `.tmp`, `.part`, `.partial`, `~` at the end: the
write-then-rename convention). Each copy lands under `.incoming/` and is renamed into place only
once its sha256 matches the node's, so the local folder holds complete checkpoints only, and
only those are ever restored.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import threading
from pathlib import Path
from typing import Callable

from cloudtrain.errors import CloudtrainError
from cloudtrain.jobs import node_checkpoints
from cloudtrain.jobs.node_checkpoints import looks_partial
from cloudtrain.layout import JobPaths, NodePaths
from cloudtrain.remote import SshRemote

LOCAL_DIR = "checkpoints"  # in the job's output folder
INCOMING = ".incoming"
POLL_S = 10.0  # CLOUDTRAIN_CHECKPOINT_POLL overrides

# Runs on the node as `python -c SOURCE list FOLDER`: the inputs of the completeness rules.
_LIST = Path(node_checkpoints.__file__).read_text()


def node_dir(job: JobPaths) -> str:
    """The job's $CLOUDTRAIN_CHECKPOINT_DIR on a node."""
    return f"{job.dir}/checkpoints"


def job_env(job: JobPaths, restart_count: int) -> dict[str, str]:
    """What every job sees of checkpoints and recovery (README: "The job's environment")."""
    return {"CLOUDTRAIN_CHECKPOINT_DIR": node_dir(job), "CLOUDTRAIN_RESTART_COUNT": str(restart_count)}


def local_dir(output: str | Path) -> Path:
    return Path(output) / LOCAL_DIR


def poll_s() -> float:
    raw = os.environ.get("CLOUDTRAIN_CHECKPOINT_POLL")
    try:
        return max(0.2, float(raw)) if raw else POLL_S
    except ValueError:
        return POLL_S


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def complete_files(folder: Path) -> list[Path]:
    """The checkpoints kept at home (what a recovery restores): never `.incoming/`."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and INCOMING not in p.relative_to(folder).parts)


class Puller:
    """Copies rank 0's completed checkpoints home, in a thread, over the command's own session
    with that node (jobs/sessions.py: commands and streams are channels of one connection)."""

    def __init__(self, remote: SshRemote, paths: Callable[[SshRemote], NodePaths], job_id: str, output: str | Path, say: Callable[[str], None]) -> None:
        self.remote, self.paths, self.job_id, self.say = remote, paths, job_id, say
        self.dest = local_dir(output)
        self._seen: dict[str, tuple[int, int]] = {}  # the previous poll's (size, mtime_ns)
        self._taken: dict[str, tuple[int, int]] = {}  # the (size, mtime_ns) each file had when it was home
        self._have: dict[str, str] = {p.relative_to(self.dest).as_posix(): _sha256(p) for p in complete_files(self.dest)}
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the thread's polls and the last one never overlap
        self._thread: threading.Thread | None = None
        self.pulled: list[str] = []

    def __enter__(self) -> "Puller":
        self._thread = threading.Thread(target=self._loop, name=f"checkpoints-{self.job_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if exc[0] is None:  # the job ended: what it left closed is complete, take it now
            try:
                self.poll(final=True)
            except (CloudtrainError, OSError) as e:
                self.say(f"warning: job {self.job_id}'s last checkpoints were not copied home ({e})")

    def _loop(self) -> None:
        every = poll_s()
        while not self._stop.wait(every):
            try:
                self.poll()
            except (CloudtrainError, OSError, ValueError):
                pass  # a node that stopped answering: follow() reports it; the next poll tries again

    def poll(self, final: bool = False) -> list[str]:
        """One look at the node's folder; fetch what is complete and new. The names fetched."""
        with self._lock:
            q = shlex.quote
            paths = self.paths(self.remote)  # asked once per command, not before the node answers
            self.folder = node_dir(paths.job(self.job_id))
            # An empty (or absent) folder costs no command on the node, only an SFTP listing
            # on the open session (issue 9's no-op run: its final poll was a shell and an ls there).
            empty = not self.remote.listdir(self.folder)
            out = "" if empty else self.remote.run(f"{q(paths.python)} -I -c {q(_LIST)} list {q(self.folder)}", check=False).stdout
            listing = sorted(json.loads(out) if out.strip().startswith("[") else [], key=lambda e: (e[2], e[0]))  # oldest first
            fetched = []
            for rel, size, mtime, writing in listing:
                if writing or looks_partial(rel) or ".." in rel.split("/"):
                    continue
                if not final and self._seen.get(rel) != (size, mtime):
                    continue  # not yet unchanged over two polls
                if self._taken.get(rel) == (size, mtime):
                    continue  # this very version came home already: no sha256 of a big file every poll
                if self._fetch(rel, (size, mtime)):
                    fetched.append(rel)
            self._seen = {rel: (size, mtime) for rel, size, mtime, _ in listing}
            self.pulled.extend(fetched)
            return fetched

    def _fetch(self, rel: str, stat: tuple[int, int]) -> bool:
        path = shlex.quote(f"{self.folder}/{rel}")
        result = self.remote.run(f"sha256sum -- {path}", check=False)
        want = result.stdout.split()[0] if result.ok and result.stdout.split() else None
        if want is None:
            return False  # gone meanwhile
        if self._have.get(rel) == want:
            self._taken[rel] = stat  # e.g. a checkpoint restored from home
            return False
        incoming = self.dest / INCOMING / rel
        incoming.parent.mkdir(parents=True, exist_ok=True)
        with open(incoming, "wb") as f:
            for chunk in self.remote.stream_stdout(f"cat -- {path}"):
                f.write(chunk)
        if _sha256(incoming) != want:  # rewritten while it travelled: the next poll tries again
            incoming.unlink(missing_ok=True)
            return False
        final = self.dest / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(incoming, final)
        self._have[rel], self._taken[rel] = want, stat
        self.say(f"job {self.job_id}: checkpoint {rel} copied home ({final.stat().st_size} B)")
        return True


def restore(remote: SshRemote, job: JobPaths, source: Path | None) -> list[str]:
    """Make the node's checkpoint folder and put into it the complete checkpoints kept at home
    (`source`; None for a first start). A file the node holds already stays: on recovery it came
    from the cluster's bucket (bucket_restore.py), as new as home's or newer."""
    folder = node_dir(job)
    q = shlex.quote(folder)
    held = set(remote.run(f"mkdir -p {q} && cd {q} && find . -type f").stdout.splitlines())
    restored = []
    for path in complete_files(source) if source is not None else []:
        rel = path.relative_to(source).as_posix()
        if f"./{rel}" in held:
            continue
        if "/" in rel:
            remote.run(f"mkdir -p {shlex.quote(folder + '/' + rel.rsplit('/', 1)[0])}")
        remote.put(path, f"{folder}/{rel}")
        restored.append(rel)
    return restored
