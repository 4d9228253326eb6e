"""Bringing a job's outputs and logs home from every node, verified, with its run.json."""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from cloudtrain import safefile
from cloudtrain.errors import CloudtrainError
from cloudtrain.jobs import metrics, plot, transfer
from cloudtrain.jobs.record import JobRecord
from cloudtrain.machine import Node
from cloudtrain.remote import SshRemote
from cloudtrain.state import Store

if TYPE_CHECKING:
    from cloudtrain.jobs.runner import JobRunner

# Written into a job's folder by the node's watchdog before it signals the job
# (bootstrap/node/watchdog.py): the job's end is then named for what caused it.
ENDED_BY = "ended_by.json"
OUT_BYTES = "out_bytes"  # node_track.py: the size of out/ and the log when the job ended
SMALL_OUTPUT = 32 << 20  # brought over the control connection: far below paramiko's re-key at 512 MiB


def _ended_by(text: str | None) -> dict | None:
    try:
        marker = json.loads(text or "null")
    except ValueError:
        return None  # damaged: the exit status alone still says how the job ended
    return marker if isinstance(marker, dict) else None


def _small(remote: object, job_dir: str) -> bool:
    try:
        raw = remote.read_from(f"{job_dir}/{OUT_BYTES}", 0).strip()  # type: ignore[attr-defined]
    except CloudtrainError:
        return False
    return raw.isdigit() and int(raw) < SMALL_OUTPUT  # absent (an older job's): OpenSSH, as before


def start_senders(runner: "JobRunner", remotes: list[SshRemote], exit_codes: list[str]) -> None:
    """Start each node's outputs sender now, before the job ends (submit and follow call this,
    the second for a job it did not start): it waits for its request, so bringing the outputs home after the job's end costs no new command
    on the node, nor a python start (issue 9); each says when its node's `exit_codes` file
    appears, and follow wakes on that. Where one cannot start, collect starts its own."""
    for remote, exit_code in zip(remotes, exit_codes):
        if remote.node.name in runner.senders:
            continue
        try:
            runner.senders[remote.node.name] = transfer.start_sender(remote, runner.paths(remote).python, exit_code)
        except CloudtrainError:
            pass  # follow meets the connection's trouble and says so


def _reserved(rank: int) -> dict[str, str]:
    """A job's own log.txt / run.json / manifest.json / metrics.png would be overwritten by
    cloudtrain's: it comes home as e.g. log.from-job.txt instead, so nothing the job wrote is lost."""
    names = ("log.txt", "run.json", "manifest.json", plot.FILE) if rank == 0 else ("log.txt",)
    return {n: Path(n).stem + ".from-job" + Path(n).suffix for n in names}


def _write_manifest(output: Path, manifest: dict, missing: dict[str, str], error: str | None) -> None:
    data: dict[str, object] = {"files": manifest, "complete": not missing and error is None}
    if missing:
        data["missing"] = missing  # the node could not send these (vanished, unreadable)
    if error is not None:
        data["error"] = error  # a later `logs -f` / `down` resumes; the job is still owed
    tmp = output / ".manifest.json.tmp"
    try:  # written then renamed: a full disk leaves the old manifest or none, never half of one
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, output / "manifest.json")
    except OSError:  # e.g. the full disk that stopped the transfer; the error says what to do
        try:
            tmp.unlink()
        except OSError:
            pass


@contextmanager
def _one_at_a_time(store: Store, job_id: str) -> Iterator[None]:
    """One collect of a job at a time across processes: `run` following a job brings it home
    while `cancel` (or `down`) in another terminal does too, into the same folder."""
    fd = safefile.open_lock(store.jobs_dir / f".{job_id}.lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def collect(runner: "JobRunner", record: JobRecord) -> Path:
    """Bring every node's outputs and log home, verified; write manifest.json and run.json.

    A file the node cannot send is reported and the rest still come home; a failure here (a
    full disk, a lost node) raises after recording what did come home, and the job stays owed."""
    with _one_at_a_time(runner.store, record.job_id):
        try:  # a cancel recorded by another process (`cloudtrain cancel` while this one followed) stays
            cancelled = JobRecord.load(runner.store, record.job_id).extra.get("cancelled_at")
        except CloudtrainError:
            cancelled = None
        if cancelled is not None:
            record.extra.setdefault("cancelled_at", cancelled)
        return _collect(runner, record)


def _collect(runner: "JobRunner", record: JobRecord) -> Path:
    output = Path(record.output)
    started = time.monotonic()
    ended_by: dict[int, dict] = {}

    def fetch(rank: int, node: Node) -> tuple[dict, dict[str, str]] | CloudtrainError:
        dest = output if rank == 0 else output / f"rank-{rank}"
        prefix = "" if rank == 0 else f"rank-{rank}/"
        try:
            started = runner.senders.pop(node.name, None)
            if started is not None and not started.alive():  # lost with its connection, or killed
                started.close()
                started = None
            remote = runner.remote(node)
            paths = runner.paths(remote)
            job = paths.job(record.job_id)
            facts = {"ended_by": f"{job.dir}/{ENDED_BY}", "out_bytes": f"{job.dir}/{OUT_BYTES}"}
            # A sender started during the job checks out_bytes itself and, when the outputs are
            # not small, sends nothing: the stream is asked again over OpenSSH.
            remote.control_only = started is not None or _small(remote, job.dir)
            got = transfer.download_tree(remote, job.out, dest, extra={"log.txt": job.log}, rename=_reserved(rank), python=paths.python,
                                         facts=facts, started=started, bulk_over=SMALL_OUTPUT)
            marker = _ended_by(got.facts.get("ended_by"))
            if marker is not None:
                ended_by[rank] = marker
        except CloudtrainError as e:
            return e
        for theirs, ours in got.renamed:
            runner.say(f"the job wrote its own {prefix}{theirs}; kept as {prefix}{ours} beside cloudtrain's")
        return {prefix + k: v for k, v in got.files.items()}, {prefix + k: v for k, v in got.missing.items()}

    manifest: dict[str, dict[str, object]] = {}
    missing: dict[str, str] = {}
    errors: list[CloudtrainError] = []
    for part in runner._each(fetch):
        if isinstance(part, CloudtrainError):
            errors.append(part)
            continue
        manifest.update(part[0])  # type: ignore[index]
        missing.update(part[1])  # type: ignore[index]
    _write_manifest(output, manifest, missing, errors[0].line() if errors else None)
    if errors:
        raise errors[0]
    if missing:
        shown = ", ".join(f"{name} ({why})" for name, why in sorted(missing.items())[:5])
        runner.say(f"warning: {len(missing)} output file(s) could not be brought home, the rest did: {shown}{' ...' if len(missing) > 5 else ''}")
        record.extra["outputs_incomplete"] = sorted(missing)
    record.timings["fetch_s"] = round(time.monotonic() - started, 3)
    if ended_by:
        record.extra["ended_by"] = min(ended_by.values(), key=lambda m: m.get("at") or 0)
    summary, series = metrics.read(output)
    try:  # the picture is a convenience: the numbers stay in metrics.jsonl whatever happens here
        png = plot.save(output, record.job_id)
    except (ImportError, OSError, ValueError, RuntimeError) as e:
        png = None
        runner.say(f"warning: metrics.png was not drawn ({e}); the numbers are in {output / 'metrics.jsonl'}")
    run = {
        "job_id": record.job_id,
        "cluster": record.cluster,
        "script": record.script,
        "args": record.args,
        "env_keys": record.env_keys,
        "secret_names": record.extra.get("secrets", []),  # names only: values are never recorded
        "workdir": record.workdir,
        "script_sha256": record.extra.get("script_sha256"),
        "git": record.extra.get("git"),
        "nodes": [{"name": n.name, "facts": runner.facts(n)} for n in runner.cluster.nodes],
        "framework": {n.name: runner.facts(n).get("installed_framework") for n in runner.cluster.nodes},
        "status": record.outcome(),
        "cancelled_at": record.extra.get("cancelled_at"),
        "cluster_spec": runner.cdir.load().spec.to_dict(),  # what `runs` prices the run by, after the cluster is gone
        "exit_code": record.exit_code,
        "submitted_at": record.submitted_at,
        **({"recovery": record.extra["recovery"]} if "recovery" in record.extra else {}),  # launch --recover
        "started_at": record.started_at,
        "ended_at": record.ended_at,
        "timings": {**record.timings, **({"run_s": round(record.ended_at - record.started_at, 3)} if record.ended_at and record.started_at else {})},
        "metrics": summary,
        "metrics_points": len(series),
        "metrics_png": png is not None,
        "outputs": {"complete": not missing, **({"missing": missing} if missing else {})},
        **({"ended_by": record.extra["ended_by"]} if "ended_by" in record.extra else {}),
    }
    (output / "run.json").write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")
    record.status = "fetched"
    record.save(runner.store)
    return output
