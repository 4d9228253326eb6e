"""Past runs, for `cloudtrain runs`: what each job was, how it ended, what it cost, where it is.

The index is the cloudtrain home's job records (jobs/<id>.json): they say where each job's
outputs landed (`runs/<id>/` under the folder `run` was called from, or its `--output`), so
`runs` lists every job from any folder. A run folder's run.json, written when the outputs
come home, adds the rest. Folders under ./runs/ that the home does not know (another home's,
or a home deleted since) are listed from their run.json alone. A damaged record or run.json is
skipped with a note; nothing here reaches a node or loads SSH or cloud code.
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from cloudtrain.errors import CloudtrainError, NotFound
from cloudtrain.jobs import metrics
from cloudtrain.jobs.record import JobRecord, Warn, all_jobs
from cloudtrain.state import Store

Price = Callable[[dict[str, Any]], "float | None"]  # a cluster spec's $/h; None: unknown


@dataclass
class Run:
    job_id: str
    cluster: str
    script: str
    status: str  # JobRecord.outcome(): running | cancelled | succeeded | failed | abandoned ...
    exit_code: int | None
    folder: str
    submitted_at: float | None = None
    duration_s: float | None = None
    price_per_hour: float | None = None
    cost: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # final values
    outputs_home: bool = False  # run.json is there: the outputs came home, verified
    note: str | None = None  # why a part is missing (damaged run.json, ...)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _of(data: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """data[key] when it has the expected type: a hand-edited or cut-off file reads as absent."""
    value = data.get(key)
    if isinstance(value, bool):  # a bool is an int to isinstance; no field here is one
        return default
    return value if isinstance(value, kind) else default


def read_run_json(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(run.json, None), (None, None) when there is none, or (None, why) when it is unreadable."""
    path = folder / "run.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{path} is damaged ({type(e).__name__}: {e})"
    if not isinstance(data, dict):
        return None, f"{path} is damaged (not a JSON object)"
    return data, None


def final_metrics(folder: Path, run: dict[str, Any] | None) -> dict[str, Any]:
    """The summary the job wrote (metrics.json, as recorded), else each series' last value."""
    summary = _of(run or {}, "metrics", dict, {})
    if summary:
        return summary
    summary, series = metrics.read(folder)
    if summary:
        return summary
    last: dict[str, Any] = {}
    for row in series:
        last.update({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch")})
    return last


def _duration(run: dict[str, Any] | None, started: float | None, ended: float | None, status: str) -> float | None:
    run_s = _of(_of(run or {}, "timings", dict, {}), "run_s", (int, float))
    if run_s is not None:
        return float(run_s)
    if started is not None and ended is not None:
        return max(0.0, ended - started)
    if started is not None and status == "running":
        return max(0.0, time.time() - started)  # so far
    return None


def _priced(r: Run, spec: dict[str, Any] | None, price: Price | None) -> None:
    if price is None or spec is None:
        return
    r.price_per_hour = price(spec)
    if r.price_per_hour is not None and r.duration_s is not None:
        r.cost = round(r.price_per_hour * r.duration_s / 3600, 4)


def _from_record(store: Store, job: JobRecord, price: Price | None, warn: Warn) -> Run:
    folder = Path(job.output)
    run, why = read_run_json(folder)
    if run is not None and run.get("job_id") != job.job_id:
        run, why = None, f"{folder / 'run.json'} is another job's ({run.get('job_id')!r})"
    if why:
        warn(f"warning: job {job.job_id}: {why}; listed from its record")
    r = Run(
        job_id=job.job_id, cluster=job.cluster, script=job.script, status=job.outcome(), exit_code=job.exit_code,
        folder=str(folder), submitted_at=job.submitted_at, outputs_home=job.status == "fetched", note=why,
    )
    r.duration_s = _duration(run, job.started_at, job.ended_at, r.status)
    r.metrics = final_metrics(folder, run)
    spec = _of(run or {}, "cluster_spec", dict)
    if spec is None:  # not home yet: the cluster that runs it, if it is still that one
        try:
            cluster = store.cluster_dir(job.cluster).load() if job.cluster in store.cluster_names() else None
        except CloudtrainError:  # a damaged cluster record only costs this run its price
            cluster = None
        if cluster is not None and job.cluster_created_at in (None, cluster.created_at):
            spec = cluster.spec.to_dict()
    _priced(r, spec, price)
    return r


def _from_run_json(folder: Path, run: dict[str, Any], price: Price | None) -> Run | None:
    job_id = _of(run, "job_id", str)
    if not job_id:
        return None
    code = _of(run, "exit_code", int)
    status = _of(run, "status", str) or ("succeeded" if code == 0 else "failed" if code is not None else "unknown")
    r = Run(
        job_id=job_id, cluster=_of(run, "cluster", str, "?"), script=_of(run, "script", str, "?"), status=status, exit_code=code,
        folder=str(folder), submitted_at=_of(run, "submitted_at", (int, float)), outputs_home=True,
        note="not in this cloudtrain home",
    )
    r.duration_s = _duration(run, _of(run, "started_at", (int, float)), _of(run, "ended_at", (int, float)), status)
    r.metrics = final_metrics(folder, run)
    _priced(r, _of(run, "cluster_spec", dict), price)
    return r


def runs(store: Store, here: Path, price: Price | None = None, warn: Warn | None = None) -> list[Run]:
    """Every run the home knows, then ./runs/* folders it does not; oldest first."""
    say: Warn = warn or (lambda _: None)
    found = [_from_record(store, job, price, say) for job in all_jobs(store, warn=say)]
    folders = {Path(r.folder).resolve() for r in found}
    ids = {r.job_id for r in found}
    damaged = set(store.job_ids()) - ids  # skipped above, with a warning
    try:
        entries = sorted((here / "runs").iterdir())
    except OSError:  # none here, or not readable: the home's runs are all there is
        entries = []
    for folder in entries:
        if not folder.is_dir() or folder.resolve() in folders:
            continue
        run, why = read_run_json(folder)
        if why:
            say(f"warning: skipping {folder}: {why}")
            continue
        r = _from_run_json(folder, run, price) if run is not None else None
        if r is not None and r.job_id not in ids:
            if r.job_id in damaged:
                r.note = "its record in this cloudtrain home is damaged; listed from its run.json"
            found.append(r)
    found.sort(key=lambda r: r.submitted_at or 0.0)
    return found


def find(store: Store, job_id: str) -> JobRecord:
    """The job record of `job_id` (or of the one id it starts); NotFound naming close ids."""
    ids = store.job_ids()
    if job_id not in ids:
        starting = [i for i in ids if i.startswith(job_id)] if job_id else []
        if len(starting) == 1:
            job_id = starting[0]
        else:
            close = starting[:3] or difflib.get_close_matches(job_id, ids, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else "see `cloudtrain runs` for the jobs this home knows"
            raise NotFound(f"unknown job {job_id!r}", hint)
    return JobRecord.load(store, job_id)  # a damaged one: DamagedRecord, naming the file


def _outputs(folder: Path) -> dict[str, int] | None:
    """{file: bytes} of what manifest.json says came home verified; None without a readable one."""
    try:
        files = json.loads((folder / "manifest.json").read_text()).get("files")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    if not isinstance(files, dict):
        return None
    return {str(k): int(v["size"]) if isinstance(v, dict) and isinstance(v.get("size"), int) else -1 for k, v in files.items()}


def show(store: Store, record: JobRecord, price: Price | None = None, warn: Warn | None = None) -> dict[str, Any]:
    """One run whole: its summary row, its record, run.json, verified outputs and metrics."""
    say: Warn = warn or (lambda _: None)
    r = _from_record(store, record, price, say)
    folder = Path(record.output)
    run = read_run_json(folder)[0] if r.note is None else None
    summary, series = metrics.read(folder)
    png = folder / "metrics.png"
    return {
        "run": r.to_dict(),
        "record": asdict(record),
        "run_json": run,
        "outputs": _outputs(folder) if r.outputs_home else None,
        "metrics_lines": metrics.render(summary, series),
        "metrics_png": str(png) if png.is_file() else None,
    }
