"""A job's record in the cloudtrain home: where it ran, where its outputs land, what is owed."""

from __future__ import annotations

import re
import secrets
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from cloudtrain.errors import CloudtrainError, DamagedRecord
from cloudtrain.state import Store


def new_job_id(script: Path) -> str:
    stem = re.sub(r"[^a-z0-9]+", "-", script.stem.lower()).strip("-")[:24] or "job"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


_SIGNAL_HINTS = {
    signal.SIGKILL: "killed; often the kernel's out-of-memory killer",
    signal.SIGABRT: "the process aborted",
    signal.SIGSEGV: "the process crashed",
    signal.SIGTERM: "stopped",
}


def exit_meaning(code: int) -> str:
    """' (SIGABRT: the process aborted)' for a shell's 128+N status, '' for anything else."""
    if not 128 < code < 128 + signal.NSIG:
        return ""
    try:
        sig = signal.Signals(code - 128)
    except ValueError:
        return ""
    hint = _SIGNAL_HINTS.get(sig)
    return f" ({sig.name}: {hint})" if hint else f" ({sig.name})"


@dataclass
class JobRecord:
    job_id: str
    cluster: str
    output: str  # local folder the outputs land in
    script: str  # relative to the workdir
    args: list[str]
    env_keys: list[str]  # values are never recorded: they may be secrets
    workdir: str
    nodes: list[str]
    cluster_created_at: float | None = None  # which incarnation of the named cluster ran it
    status: str = "running"  # starting | running | ended | fetched | abandoned (a cancel: extra["cancelled_at"])
    exit_code: int | None = None
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # script hash, git commit

    def outcome(self) -> str:
        """What became of the job, as `runs` and run.json say it: starting | running | cancelled |
        succeeded | failed | abandoned. `status` says instead whether its outputs are still owed."""
        if self.status == "abandoned":
            return "abandoned"
        if self.extra.get("cancelled_at") is not None:
            return "cancelled"
        if self.status in ("starting", "running"):
            return self.status
        return "succeeded" if self.exit_code == 0 else "failed"

    def save(self, store: Store) -> None:
        # A cancel recorded by another process (`cloudtrain cancel` while `run` follows) is never
        # undone by this one's save of what it saw before: seen in a loaded run, the follower's
        # end-of-job save overwrote it and the job came home as "exited 143".
        if self.extra.get("cancelled_at") is None:
            try:
                cancelled = (store.load_job(self.job_id).get("extra") or {}).get("cancelled_at")
            except CloudtrainError:
                cancelled = None
            if cancelled is not None:
                self.extra["cancelled_at"] = cancelled
        store.save_job(self.job_id, asdict(self))

    @classmethod
    def load(cls, store: Store, job_id: str) -> "JobRecord":
        data = store.load_job(job_id)
        try:
            record = cls(**data)
        except TypeError as e:  # fields missing or unknown: cut off, or not a job record
            path = store.jobs_dir / f"{job_id}.json"
            raise DamagedRecord(f"the record of job {job_id} {path} is damaged (not a job record: {e})", f"delete {path} if the job's outputs are home", str(path)) from e
        if not isinstance(record.output, str) or not isinstance(record.cluster, str):
            path = store.jobs_dir / f"{job_id}.json"
            raise DamagedRecord(f"the record of job {job_id} {path} is damaged (no cluster or output)", f"delete {path} if the job's outputs are home", str(path))
        return record


Warn = Callable[[str], None]


def _to_stderr(text: str) -> None:
    print(f"cloudtrain: {text}", file=sys.stderr, flush=True)


def all_jobs(store: Store, warn: Warn = _to_stderr) -> list[JobRecord]:
    """Every readable job record; a damaged one is skipped with a warning, so one bad file
    never stops `status` or `down` for everything else."""
    records = []
    for job_id in store.job_ids():
        try:
            records.append(JobRecord.load(store, job_id))
        except DamagedRecord as e:
            warn(f"warning: skipping job {job_id}: {e.line()}")
    return records


def jobs_of(store: Store, cluster: str, created_at: float, warn: Warn = _to_stderr) -> list[JobRecord]:
    """Jobs that ran on this cluster: same name and same incarnation (a cluster made again
    under an old name never ran the old one's jobs)."""
    return [r for r in all_jobs(store, warn) if r.cluster == cluster and r.cluster_created_at in (None, created_at)]
