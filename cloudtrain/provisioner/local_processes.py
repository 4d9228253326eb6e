"""Which processes on this machine belong to a local node, and stopping them.

A local node is not a VM that can be switched off, so `down` must find everything the node
started. Its sshd runs under a keeper (local_keeper.py), a child subreaper: every process the
node starts stays a descendant of a keeper, however it daemonizes (`setsid env -i` and a double
fork included). Two more marks, read from /proc (Linux), cover processes from before keepers:
  * the environment: sshd's SetEnv gives every session CLOUDTRAIN_NODE_ROOT=<node root>, and
    children inherit it;
  * the session: each job starts with setsid, so its pid (the node's jobs/<id>/pid) is the
    session id of all it spawns, including children started with an empty environment,
    which the first mark misses.
Session ids are only trusted where they cannot name someone else's session: the pid file
was written in this boot, a living session leader carries the node's mark, and a member
started while the job ran (pids are reused, on small machines within minutes).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_SLACK_S = 1.0  # /proc/stat's boot time is in whole seconds


@dataclass(frozen=True)
class Proc:
    pid: int
    sid: int
    started: float  # wall-clock seconds
    environ: bytes
    ppid: int = 0
    cmdline: bytes = b""


@dataclass(frozen=True)
class JobSession:
    sid: int
    started: float  # when the job's pid file was written
    ended: float | None  # when its exit status was written; None while it runs


def stop_node_processes(root: Path) -> None:
    """TERM, then KILL, every process that belongs to the node whose root folder is `root`:
    first the keepers' descendants and the marked ones (again, for any that forked meanwhile),
    then the keepers, which end by themselves once they have no child left."""
    marker = f"CLOUDTRAIN_NODE_ROOT={root}".encode()
    config = str(root.parent / "sshd_config").encode()
    keepers: set[int] = set()
    for _ in range(5):
        procs = list(_processes())
        keepers |= {p.pid for p in procs if is_keeper(p, config)}
        sessions = job_sessions(root)
        doomed = descendants(keepers, procs) | {p.pid for p in procs if belongs(p, marker, sessions, procs)}
        doomed -= keepers | {os.getpid()}
        if not doomed:
            break
        terminate(sorted(doomed))
    terminate(sorted(keepers))


def is_keeper(proc: Proc, config: bytes) -> bool:
    args = proc.cmdline.split(b"\0")
    return any(a.endswith(b"local_keeper.py") for a in args) and config in args


def descendants(roots: set[int], procs: list[Proc]) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p.pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def belongs(proc: Proc, marker: bytes, sessions: list[JobSession], procs: list[Proc]) -> bool:
    """Whether `proc` was started by the node: it carries the node's marker, or it is in one of
    the node's job sessions and that session id has not been reused by someone else."""
    if proc.pid == os.getpid():
        return False
    if marker in proc.environ.split(b"\0"):
        return True
    for job in sessions:
        if proc.sid != job.sid:
            continue
        leader = next((p for p in procs if p.pid == job.sid), None)
        if leader is not None and marker not in leader.environ.split(b"\0"):
            return False  # the pid now leads someone else's session
        latest = (job.ended if job.ended is not None else time.time()) + CLOCK_SLACK_S
        return job.started - CLOCK_SLACK_S <= proc.started <= latest
    return False


def job_sessions(root: Path) -> list[JobSession]:
    """The node's jobs' session ids from their pid files written since this machine booted."""
    boot = _boot_time()
    found = []
    for pidfile in (root / "jobs").glob("*/pid"):
        try:
            written = pidfile.stat().st_mtime
            sid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        if written < boot:
            continue  # from before a reboot: that pid means nothing now
        exit_code = pidfile.with_name("exit_code")
        ended = exit_code.stat().st_mtime if exit_code.exists() else None
        found.append(JobSession(sid, written, ended))
    return found


def _boot_time() -> float:
    for line in (PROC / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def _processes():
    if not PROC.is_dir():
        return
    boot, ticks = _boot_time(), os.sysconf("SC_CLK_TCK")
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Fields after the command name, which may itself hold spaces and parentheses.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        yield Proc(int(entry.name), int(fields[3]), boot + int(fields[19]) / ticks, environ, int(fields[1]), cmdline)


def terminate(pids: list[int], grace: float = 5.0) -> None:
    """TERM each pid, wait up to `grace` seconds, then KILL what is left."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.05)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our child (sshd daemonizes, so normally it is not).
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = (PROC / str(pid) / "stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return True


if __name__ == "__main__":
    # A local node's "power off", run by its watchdog (autostop.py): `python -I -S local_processes.py ROOT`.
    stop_node_processes(Path(sys.argv[1]))
