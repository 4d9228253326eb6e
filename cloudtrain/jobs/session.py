"""One job from submit to outputs home, as `run`, `logs -f` and `launch` see it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from cloudtrain.jobs import checkpoints, destination, metrics
from cloudtrain.jobs.record import JobRecord
from cloudtrain.jobs.runner import JobRunner
from cloudtrain.jobs.shipment import Shipment
from cloudtrain.progress import Result
from cloudtrain.spec import JobSpec
from cloudtrain.state import Store

Say = Callable[[str], None]


def verified_count(output: Path) -> int | None:
    """How many files this job's manifest lists (what was verified), None without a readable one.

    Counted from the manifest, never from the folder: a merged --output holds other files too."""
    try:
        files = json.loads((output / "manifest.json").read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return len(files) if isinstance(files, dict) else None


def report(record: JobRecord, output: Path, say: Say) -> None:
    count = verified_count(output)
    files = f"{count} file(s) in {output} (sha256 verified)" if count is not None else f"no readable manifest.json in {output}"
    say(Result(f"job {record.job_id} exited {record.exit_code}; {files}"))
    summary, series = metrics.read(output)
    for line in metrics.render(summary, series):
        say(Result(line))


def redirect(store: Store, record: JobRecord, output: Path, mode: str | None, say: Say) -> None:
    """Bring an owed job's outputs into `output` instead of the folder first recorded (one that
    turned out unwritable or full, say); checked and claimed like a new job's --output."""
    if output == Path(record.output):
        return
    destination.claim(output, mode, record.job_id, Path(record.workdir))
    previous, record.output = Path(record.output), str(output)
    record.save(store)
    destination.release(previous, record.job_id)
    say(f"job {record.job_id}: outputs now land in {output}")


def finish(runner: JobRunner, record: JobRecord, say: Say, offset: int = 0, patience: float | None = None) -> int:
    """Follow to the end, bring the outputs home, report; return the job's exit code.

    Outputs come home even when the job fails. An interrupted follow leaves the job running
    on the cluster; `logs -f` or `down` collects it later."""
    with checkpoints.Puller(runner.remote(runner.cluster.head), runner.paths, record.job_id, record.output, say):
        code = runner.follow(record, offset=offset, patience=patience)  # completed checkpoints come home meanwhile
    output = runner.collect(record)
    report(record, output, say)
    return code


def run(store: Store, runner: JobRunner, job: JobSpec | Shipment, say: Say) -> tuple[JobRecord, int | None]:
    record = runner.submit(job)
    if (job.spec if isinstance(job, Shipment) else job).detach:
        say(Result(f"job {record.job_id} started; follow it with `cloudtrain logs {record.job_id} -f`"))
        return record, None
    say(f"job {record.job_id} started on {', '.join(record.nodes)}")
    try:
        return record, finish(runner, record, say)
    except KeyboardInterrupt:
        say(f"stopped following; job {record.job_id} keeps running. Follow it with `cloudtrain logs {record.job_id} -f`")
        raise
