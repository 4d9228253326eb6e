"""One job from submit to outputs home, as `run`, `logs -f` and `launch` see it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from cloudtrain.jobs import metrics
from cloudtrain.jobs.record import JobRecord
from cloudtrain.jobs.runner import JobRunner
from cloudtrain.spec import JobSpec
from cloudtrain.state import Store

Say = Callable[[str], None]


def report(record: JobRecord, output: Path, say: Say) -> None:
    files = sum(1 for p in output.rglob("*") if p.is_file())
    say(f"job {record.job_id} exited {record.exit_code}; {files} file(s) in {output} (sha256 verified)")
    summary, series = metrics.read(output)
    for line in metrics.render(summary, series):
        say(line)


def finish(runner: JobRunner, record: JobRecord, say: Say, offset: int = 0) -> int:
    """Follow to the end, bring the outputs home, report; return the job's exit code.

    Outputs come home even when the job fails. An interrupted follow leaves the job running
    on the cluster; `logs -f` or `down` collects it later."""
    code = runner.follow(record, offset=offset)
    output = runner.collect(record)
    report(record, output, say)
    return code


def run(store: Store, runner: JobRunner, spec: JobSpec, say: Say) -> tuple[JobRecord, int | None]:
    record = runner.submit(spec)
    if spec.detach:
        say(f"job {record.job_id} started; follow it with `cloudtrain logs {record.job_id} -f`")
        return record, None
    say(f"job {record.job_id} started on {', '.join(record.nodes)}")
    try:
        return record, finish(runner, record, say)
    except KeyboardInterrupt:
        say(f"stopped following; job {record.job_id} keeps running. Follow it with `cloudtrain logs {record.job_id} -f`")
        raise
