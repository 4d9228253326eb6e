"""Following a running job to its end on every node, and stopping it.

The job's pid, log and exit status are files on the node; following reads them over SSH,
reconnecting after a dropped connection, and stops the other ranks when one fails.
"""

from __future__ import annotations

import shlex
import sys
import time
from typing import TYPE_CHECKING, Callable

from cloudtrain.errors import RemoteError
from cloudtrain.jobs.record import JobRecord, exit_meaning
from cloudtrain.layout import JobPaths, NodePaths
from cloudtrain.remote import SshRemote

if TYPE_CHECKING:
    from cloudtrain.jobs.runner import JobRunner

FAILURE_TAIL_LINES = 20  # of a failing rank's log, when it is not the streamed rank 0


def follow(runner: "JobRunner", record: JobRecord, stream: bool = True, offset: int = 0) -> int:
    """Stream rank 0's log until every node's job has ended; return the job's exit code.

    The first failing rank's code wins; when one rank fails, the others are stopped so a
    distributed job does not hang waiting for a dead peer."""
    remotes = [SshRemote(n, runner.cluster.identity_file) for n in runner.cluster.nodes]
    try:
        paths = [NodePaths.of(r).job(record.job_id) for r in remotes]
        codes: list[int | None] = [None] * len(remotes)
        first_failure: int | None = None  # before stopping the others turns them into 143s
        last_alive_check = time.monotonic()
        while True:
            chunk = _retrying(runner, lambda: remotes[0].read_from(paths[0].log, offset))
            if chunk:
                offset += len(chunk)
                if stream:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                continue  # drain before checking status
            for i, r in enumerate(remotes):
                if codes[i] is None:
                    raw = _retrying(runner, lambda r=r, p=paths[i]: r.read_from(p.exit_code, 0))
                    if raw.strip():
                        codes[i] = int(raw.strip())
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed and first_failure is None:
                first_failure = codes[failed[0]]
                for i in failed if len(remotes) > 1 else []:  # ranks that failed on their own, before any stop
                    _report_failure(runner, remotes[i], paths[i], i, codes[i])  # type: ignore[arg-type]
            if all(c is not None for c in codes) or failed:
                if failed and any(c is None for c in codes):
                    runner.say("stopping the job on the other nodes")
                    _stop(runner, remotes, paths, codes)
                    continue
                tail = _retrying(runner, lambda: remotes[0].read_from(paths[0].log, offset))
                if stream and tail:
                    sys.stdout.buffer.write(tail)
                    sys.stdout.flush()
                break
            if time.monotonic() - last_alive_check > 5:
                last_alive_check = time.monotonic()
                _check_alive(runner, remotes, paths, codes)
            time.sleep(0.25)
    finally:
        for r in remotes:
            r.close()
    code = first_failure if first_failure is not None else 0
    record.status = "ended"
    record.exit_code = code
    record.ended_at = time.time()
    record.save(runner.store)
    return int(code)  # type: ignore[arg-type]


def _retrying(runner: "JobRunner", fn: Callable[[], bytes], patience: float = 300.0) -> bytes:
    deadline = time.monotonic() + patience
    while True:
        try:
            return fn()
        except RemoteError:
            if time.monotonic() > deadline:
                raise
            runner.say("connection lost; reconnecting (the job keeps running on the node)")
            time.sleep(2)


def _report_failure(runner: "JobRunner", remote: SshRemote, paths: JobPaths, rank: int, code: int) -> None:
    """Name the failing node; show its log's tail unless it is rank 0's, already streamed."""
    runner.say(f"{remote.node.name} (rank {rank}) exited {code}{exit_meaning(code)}")
    if rank == 0:
        return
    q = shlex.quote
    try:
        tail = remote.run(f"tail -n {FAILURE_TAIL_LINES} {q(paths.log)}", check=False).stdout
    except RemoteError:
        return  # the log still comes home with the outputs
    for line in tail.splitlines():
        runner.say(f"  [{remote.node.name}] {line}")


def _check_alive(runner: "JobRunner", remotes: list[SshRemote], paths: list[JobPaths], codes: list[int | None]) -> None:
    q = shlex.quote
    for i, r in enumerate(remotes):
        if codes[i] is not None:
            continue
        probe = f"test -e {q(paths[i].exit_code)} || kill -0 \"$(cat {q(paths[i].pid)})\" 2>/dev/null"
        try:
            gone = not r.run(probe, check=False).ok
        except RemoteError:
            continue
        if gone:
            runner.say(f"the job's process on {r.node.name} vanished without an exit status")
            r.run(f"echo 137 > {q(paths[i].exit_code)}", check=False)


def _stop(runner: "JobRunner", remotes: list[SshRemote], paths: list[JobPaths], codes: list[int | None]) -> None:
    """TERM the job's process group, KILL it if it is still there after 10 s (a job that
    traps TERM to checkpoint gets that long), and record 143 where it left no status."""
    q = shlex.quote
    for i, r in enumerate(remotes):
        if codes[i] is None:
            pid, status = q(paths[i].pid), q(paths[i].exit_code)
            r.run(
                f'p=$(cat {pid}); kill -TERM -- "-$p" 2>/dev/null; '
                f'for _ in $(seq 20); do kill -0 -- "-$p" 2>/dev/null || break; sleep 0.5; done; '
                f'kill -KILL -- "-$p" 2>/dev/null; test -e {status} || echo 143 > {status}',
                check=False,
            )


def exit_codes(runner: "JobRunner", record: JobRecord) -> list[int | None]:
    """Each node's exit status for the job, None where it is still running."""
    codes: list[int | None] = []
    for node in runner.cluster.nodes:
        with SshRemote(node, runner.cluster.identity_file) as remote:
            raw = remote.read_from(NodePaths.of(remote).job(record.job_id).exit_code, 0).strip()
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


def stop(runner: "JobRunner", record: JobRecord) -> None:
    """Stop a still-running job on every node, keeping what it wrote."""
    remotes = [SshRemote(n, runner.cluster.identity_file) for n in runner.cluster.nodes]
    try:
        paths = [NodePaths.of(r).job(record.job_id) for r in remotes]
        _stop(runner, remotes, paths, [None] * len(remotes))
    finally:
        for r in remotes:
            r.close()
