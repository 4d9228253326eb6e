"""`cloudtrain cancel JOB`: stop a job on every node, bring what it wrote home, record it cancelled.

The stop is follow.stop's: TERM to every process of the job's session on every node at once,
KILL to what is left after the grace (a job that traps TERM to save a checkpoint gets that
long). The partial outputs then come home as any job's do (collect: sha256 verified, with
manifest.json and run.json, which says "cancelled"). A job that already ended is not
cancelled: it is said so, and its outputs are brought home if they are still owed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from cloudtrain.jobs import follow
from cloudtrain.jobs.record import JobRecord
from cloudtrain.jobs.runner import JobRunner
from cloudtrain.jobs.session import verified_count
from cloudtrain.state import Store

Say = Callable[[str], None]


def cluster_gone(store: Store, record: JobRecord) -> bool:
    """The job's cluster was destroyed (or made again under its name: that one never ran it)."""
    if record.cluster not in store.cluster_names():
        return True
    return record.cluster_created_at not in (None, store.cluster_dir(record.cluster).load().created_at)


def _home(record: JobRecord, output: Path) -> str:
    count = verified_count(output)
    return f"{count} file(s) in {output} (sha256 verified)" if count is not None else f"no readable manifest.json in {output}"


def cancel(store: Store, record: JobRecord, runner_for: Callable[[str], JobRunner], say: Say, grace: float = 10.0) -> bool:
    """Cancel `record`'s job; True when it was running and is now stopped, False when it had
    already ended (its outputs are then home, brought now if they were owed)."""
    job = record.job_id
    if record.status == "abandoned":
        say(f"job {job} had already ended and its outputs were given up (abandoned); what came home is in {record.output}")
        return False
    if record.status == "fetched":
        say(f"job {job} had already ended ({record.outcome()}, exit {record.exit_code}); its outputs are in {record.output}")
        return False
    if cluster_gone(store, record):
        say(f"job {job}'s cluster {record.cluster} is gone, so nothing of the job runs; what came home is in {record.output}")
        return False
    with runner_for(record.cluster) as runner:
        codes = runner.exit_codes(record)
        running = any(c is None for c in codes)
        if running:
            say(f"cancelling job {job} on {len(codes)} node(s): TERM, then KILL after {grace:g}s")
            # Recorded first: a `down` or a second cancel meanwhile sees the job is being cancelled.
            record.extra["cancelled_at"] = time.time()
            record.save(store)
            follow.stop(runner, record, grace)
            codes = runner.exit_codes(record)
        else:
            say(f"job {job} had already ended; bringing its outputs home")
        failed = [c for c in codes if c not in (None, 0)]
        record.exit_code = failed[0] if failed else (0 if all(c == 0 for c in codes) else 143)
        record.status = "ended"
        record.ended_at = record.ended_at if not running and record.ended_at else time.time()
        record.save(store)
        output = runner.collect(record)  # a failure here raises: the job stays owed, `down` retries
    say(f"job {job} {'cancelled' if running else 'ended'} (exit {record.exit_code}); {_home(record, output)}")
    return running
