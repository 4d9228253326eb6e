"""A job's record in the cloudtrain home: where it ran, where its outputs land, what is owed."""

from __future__ import annotations

import re
import secrets
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
    status: str = "running"  # starting | running | ended | fetched | abandoned
    exit_code: int | None = None
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # script hash, git commit

    def save(self, store: Store) -> None:
        store.save_job(self.job_id, asdict(self))

    @classmethod
    def load(cls, store: Store, job_id: str) -> "JobRecord":
        return cls(**store.load_job(job_id))


def jobs_of(store: Store, cluster: str, created_at: float) -> list[JobRecord]:
    """Jobs that ran on this cluster: same name and same incarnation (a cluster made again
    under an old name never ran the old one's jobs)."""
    records = [JobRecord.load(store, j) for j in store.job_ids()]
    return [r for r in records if r.cluster == cluster and r.cluster_created_at in (None, created_at)]
