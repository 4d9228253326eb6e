"""Following a running job to its end on every node, and stopping it.

The job's session id (its `pid` file), log and exit status are files on the node; following
reads them over SSH, reconnecting after a dropped connection for a bounded time, and stops the
other ranks when one fails. A job is its session (track.py leads it): `exit_code` appears once
every process of it has ended, and stopping it signals the whole session.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
from typing import TYPE_CHECKING, Callable, TypeVar

from cloudtrain.early import wait_any
from cloudtrain.errors import BadInput, CloudtrainError, HostKeyMismatch, RemoteError
from cloudtrain.jobs import collect as collecting
from cloudtrain.jobs.launch import FAILURES_FILE, first_failure
from cloudtrain.jobs.node_logs import Prefixed
from cloudtrain.jobs.record import JobRecord, exit_meaning
from cloudtrain.layout import JobPaths
from cloudtrain.remote import SshRemote

if TYPE_CHECKING:
    from cloudtrain.jobs.runner import JobRunner
    from cloudtrain.machine import Node

T = TypeVar("T")
FAILURE_TAIL_LINES = 20  # of a failing rank's log, when it is not the streamed rank 0
CHECK_EVERY_S = 5.0  # how often each node is asked whether the job's session still exists
CONNECT_TIMEOUT_S = 15.0  # one reconnection attempt; the patience below bounds them all
# Polls start quick and slow down while the job is silent: a short job's end is seen within
# tens of milliseconds, a long quiet one costs two small reads per POLL_MAX_S.
POLL_MIN_S, POLL_MAX_S = 0.03, 0.25


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise BadInput(f"{name}={raw!r} is not a number of seconds", f"set it to e.g. {default:.0f}, or unset it")
    return value


def patience_s() -> float:
    """How long a node may stop answering before `run` gives up following (the job goes on)."""
    return _seconds("CLOUDTRAIN_NODE_PATIENCE", 300.0)


def linger_s() -> float:
    """How long a job's session may outlive its program before the job counts as done."""
    return _seconds("CLOUDTRAIN_JOB_LINGER", 10.0)


def session_alive(sid: str) -> str:
    """Shell test: some process (not a zombie) is in session `sid` (a shell word)."""
    return f"ps -e -o sid= -o stat= | awk -v s={sid} '$1 == s && $2 !~ /^Z/ {{ f = 1 }} END {{ exit !f }}'"


def follow(runner: "JobRunner", record: JobRecord, stream: bool = True, offset: int = 0, patience: float | None = None) -> int:
    """Stream rank 0's log until every node's job has ended; return the job's exit code.

    The first failing rank's code wins; when one rank fails, the others are stopped so a
    distributed job does not hang waiting for a dead peer. A node that stops answering is
    retried for `patience_s()`, then `run` ends saying how to get the outputs later."""
    patience = patience_s() if patience is None else patience  # recovery.py waits less: it replaces a lost node
    connect = min(CONNECT_TIMEOUT_S, max(patience, 1.0))
    remotes = [runner.remote(n) for n in runner.cluster.nodes]
    # Each reconnection is bounded by `connect`; the sessions go on to collect as they are.
    patient = [r.connect_timeout for r in remotes]
    for r in remotes:
        r.connect_timeout = connect
    retry = _Retry(runner, record, patience)
    try:
        paths = [retry(r, lambda r=r: runner.paths(r)).job(record.job_id) for r in remotes]
        sids = [retry(r, lambda r=r, p=p: _read(r, p.pid, 0)).decode().strip() for r, p in zip(remotes, paths)]
        collecting.start_senders(runner, remotes, [p.exit_code for p in paths])  # they wait while the job runs (issue 9)
        codes: list[int | None] = [None] * len(remotes)
        first_failure: int | None = None  # before stopping the others turns them into 143s
        last_alive_check = time.monotonic()
        every = Prefixed(len(remotes), offset) if stream and record.extra.get("logs") == "all" else None  # --logs all
        pause = POLL_MIN_S
        while True:
            chunk = retry(remotes[0], lambda: _read(remotes[0], paths[0].log, offset))
            if chunk:
                pause = POLL_MIN_S
                offset += len(chunk)
                if every:
                    every.write(0, chunk)
                elif stream:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                continue  # drain before checking status
            if every and every.pull(retry, _read, remotes, paths):
                continue
            for i, r in enumerate(remotes):
                if codes[i] is None:
                    raw = retry(r, lambda r=r, p=paths[i]: _read(r, p.exit_code, 0))
                    if raw.strip():
                        codes[i] = int(raw.strip())
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed and first_failure is None:
                first_failure = codes[failed[0]]
                for i in failed if len(remotes) > 1 or record.extra.get("launcher") == "torchrun" else []:  # ranks that failed on their own, before any stop
                    _report_failure(runner, remotes[i], paths[i], i, codes[i])  # type: ignore[arg-type]
            if all(c is not None for c in codes) or failed:
                if failed and any(c is None for c in codes):
                    runner.say("stopping the job on the other nodes")
                    _stop(runner, remotes, paths, codes)
                    continue
                tail = retry(remotes[0], lambda: _read(remotes[0], paths[0].log, offset))
                if every:
                    every.write(0, tail)
                    every.pull(retry, _read, remotes, paths)
                    every.flush()
                elif stream and tail:
                    sys.stdout.buffer.write(tail)
                    sys.stdout.flush()
                break
            if time.monotonic() - last_alive_check > CHECK_EVERY_S:
                last_alive_check = time.monotonic()
                _check_alive(runner, retry, remotes, paths, codes, sids)
            wait_any(list(runner.senders.values()), pause)  # a node's sender says at once when its job ended
            pause = min(pause * 1.25, POLL_MAX_S)  # slowly: a short job's end is seen within a poll or two
    finally:
        for r, timeout in zip(remotes, patient):
            r.connect_timeout = timeout
    code = first_failure if first_failure is not None else 0
    record.status = "ended"
    record.exit_code = code
    record.ended_at = time.time()
    record.save(runner.store)
    return int(code)  # type: ignore[arg-type]


def _read(remote: SshRemote, path: str, offset: int) -> bytes:
    # A node that vanishes without closing TCP (power cut, dropped route) would block a read
    # for many minutes; a bounded wait turns it into a retry.
    remote.sftp().get_channel().settimeout(CONNECT_TIMEOUT_S * 2)  # type: ignore[union-attr]
    return remote.read_from(path, offset)


class _Retry:
    """Call `fn` until it reaches the node, for at most `patience` seconds from its first
    failure; say at once that the connection is lost, then that the node is unreachable, and
    end with the job's id and the commands that bring its outputs home later."""

    def __init__(self, runner: "JobRunner", record: JobRecord, patience: float) -> None:
        self.runner, self.record, self.patience = runner, record, patience

    def __call__(self, remote: SshRemote, fn: Callable[[], T]) -> T:
        name, job = remote.node.name, self.record.job_id
        deadline: float | None = None
        unreachable_said = False
        while True:
            try:
                result = fn()
            except HostKeyMismatch:
                raise  # not a node that is down: retrying would not help, and must not hide it
            except RemoteError as e:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.patience
                    self.runner.say(f"connection to {name} lost; reconnecting (the job keeps running on the node)")
                elif not unreachable_said:
                    unreachable_said = True
                    self.runner.say(f"{name} is unreachable ({e.message}); retrying for up to {self.patience:.0f}s")
                if now > deadline:
                    raise RemoteError(
                        f"{name} did not answer for {self.patience:.0f}s; job {job} may still be running there and its outputs are still owed",
                        f"bring them home with `cloudtrain logs {job} -f` once the node answers (`cloudtrain status` shows it; "
                        f"`cloudtrain up` with the same options restarts a local node), or with `cloudtrain down`",
                    ) from e
                time.sleep(2)
                continue
            if unreachable_said:
                self.runner.say(f"{name} answers again; following job {job}")
            return result


def _report_failure(runner: "JobRunner", remote: SshRemote, paths: JobPaths, rank: int, code: int) -> None:
    """Name the failing node (and torchrun's local rank); show its log's tail unless it is rank 0's, already streamed."""
    try:  # written by node_worker.py under torchrun
        worker = first_failure(remote.read_from(f"{paths.dir}/{FAILURES_FILE}", 0).decode(errors="replace"))
    except RemoteError:
        worker = None
    where = f", local rank {worker[0]}, global rank {worker[1]}" if worker else ""
    runner.say(f"{remote.node.name} (rank {rank}{where}) exited {code}{exit_meaning(code)}")
    if rank == 0:
        return
    q = shlex.quote
    try:
        tail = remote.run(f"tail -n {FAILURE_TAIL_LINES} {q(paths.log)}", check=False).stdout
    except RemoteError:
        return  # the log still comes home with the outputs
    for line in tail.splitlines():
        runner.say(f"  [{remote.node.name}] {line}")


def _check_alive(
    runner: "JobRunner", retry: _Retry, remotes: list[SshRemote], paths: list[JobPaths], codes: list[int | None], sids: list[str]
) -> None:
    """Ask each node whether the job's session still has a process. A session that emptied
    with no status (its leader was killed) ends the job as 137; a job folder that vanished
    ends `run` with an error rather than a wait for a status that cannot come."""
    q = shlex.quote
    alive = session_alive('"$s"')
    for i, r in enumerate(remotes):
        if codes[i] is not None:
            continue
        probe = (
            f'd={q(paths[i].dir)}; test -d "$d" || {{ echo gone; exit 0; }}; s=$(cat "$d/pid" 2>/dev/null); '
            f'if [ -n "$s" ] && {alive}; then echo running; elif test -e "$d/exit_code"; then echo done; else echo vanished; fi'
        )
        state = retry(r, lambda r=r, probe=probe: r.run(probe, check=False, timeout=CONNECT_TIMEOUT_S * 2)).stdout.strip()
        if state == "gone":
            _folder_gone(runner, retry.record, remotes, paths, sids, i)
        if state == "vanished":
            runner.say(f"the job's processes on {r.node.name} all ended without an exit status")
            r.run(f"test -e {q(paths[i].exit_code)} || echo 137 > {q(paths[i].exit_code)}", check=False)


def _folder_gone(runner: "JobRunner", record: JobRecord, remotes: list[SshRemote], paths: list[JobPaths], sids: list[str], rank: int) -> None:
    name = remotes[rank].node.name
    runner.say(f"job {record.job_id}'s folder vanished from {name}; stopping the job")
    if sids[rank].isdigit():  # its pid file went with the folder: the session id read at the start
        remotes[rank].run(f"pkill -KILL -s {sids[rank]}", check=False)
    others = [None if i != rank else -1 for i in range(len(remotes))]
    _stop(runner, remotes, paths, others)
    record.status = "abandoned"  # nothing is left to bring home from that node; `down` skips it
    record.exit_code = 1
    record.ended_at = time.time()
    record.save(runner.store)
    raise CloudtrainError(
        f"job {record.job_id}'s folder {paths[rank].dir} vanished from {name} while the job ran; its outputs there are lost",
        "the job was stopped; find what removed the folder (a cleanup task? a second cloudtrain home?) and run the job again",
    )


def _stop(runner: "JobRunner", remotes: list[SshRemote], paths: list[JobPaths], codes: list[int | None], grace: float = 10.0) -> None:
    """TERM every process of the job's session, KILL what is left after `grace` s (a job that
    traps TERM to checkpoint gets that long), and record 143 where the job left no status."""
    q = shlex.quote
    alive = session_alive('"$p"')
    for i, r in enumerate(remotes):
        if codes[i] is None:
            pid, status = q(paths[i].pid), q(paths[i].exit_code)
            try:
                r.run(
                    f'p=$(cat {pid} 2>/dev/null); [ -n "$p" ] || exit 0; '
                    f'kill -TERM -- "-$p" 2>/dev/null; pkill -TERM -s "$p"; '
                    f"for _ in $(seq {max(1, math.ceil(grace * 2))}); do {alive} || break; sleep 0.5; done; "
                    f'kill -KILL -- "-$p" 2>/dev/null; pkill -KILL -s "$p"; test -e {status} || echo 143 > {status}',
                    check=False,
                )
            except RemoteError as e:  # the others are still stopped; `down` tries this one again
                runner.say(f"could not stop the job on {r.node.name} ({e.message}); `cloudtrain down` stops it")


def exit_codes(runner: "JobRunner", record: JobRecord) -> list[int | None]:
    """Each node's exit status for the job, None where it is still running."""
    codes: list[int | None] = []
    for node in runner.cluster.nodes:
        remote = runner.remote(node)
        raw = remote.read_from(runner.paths(remote).job(record.job_id).exit_code, 0).strip()
        codes.append(int(raw) if raw else None)
    return codes


def end(runner: "JobRunner", record: JobRecord) -> None:
    """Record the exit code of a job nobody followed to its end (`down` before collecting),
    stopping it first where it still runs: a failing rank's code, else 0, else 143."""
    codes = exit_codes(runner, record)
    if any(c is None for c in codes):
        runner.say(f"job {record.job_id} is still running; stopping it and bringing home what exists")
        stop(runner, record)
    failed = [c for c in codes if c not in (None, 0)]
    record.exit_code = failed[0] if failed else (0 if all(c == 0 for c in codes) else 143)
    record.status = "ended"
    record.save(runner.store)


def stop(runner: "JobRunner", record: JobRecord, grace: float = 10.0) -> None:
    """Stop a still-running job on every node at once (each gets the whole grace, not one after
    another's), keeping what it wrote."""

    def one(rank: int, node: "Node") -> None:
        remote = runner.remote(node)
        _stop(runner, [remote], [runner.paths(remote).job(record.job_id)], [None], grace)

    runner._each(one)
