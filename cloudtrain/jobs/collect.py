"""Bringing a job's outputs and logs home from every node, verified, with its run.json."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cloudtrain.bootstrap.cluster import load_facts
from cloudtrain.jobs import metrics, transfer
from cloudtrain.jobs.record import JobRecord
from cloudtrain.jobs.workdir import sha256_file
from cloudtrain.layout import NodePaths
from cloudtrain.machine import Node
from cloudtrain.remote import SshRemote

if TYPE_CHECKING:
    from cloudtrain.jobs.runner import JobRunner


def _set_aside_reserved(runner: "JobRunner", dest: Path, files: dict[str, dict[str, object]], rank: int) -> dict[str, dict[str, object]]:
    """A job's own log.txt / run.json / manifest.json would be overwritten by cloudtrain's:
    keep it as e.g. log.from-job.txt instead, so nothing the job wrote is lost."""
    reserved = ("log.txt", "run.json", "manifest.json") if rank == 0 else ("log.txt",)
    for name in reserved:
        if name in files:
            kept = Path(name).stem + ".from-job" + Path(name).suffix
            os.replace(dest / name, dest / kept)
            files[kept] = files.pop(name)
            runner.say(f"the job wrote its own {name}; kept as {kept} beside cloudtrain's")
    return files


def collect(runner: "JobRunner", record: JobRecord) -> Path:
    """Bring every node's outputs and log home, verified; write manifest.json and run.json."""
    output = Path(record.output)
    started = time.monotonic()

    def fetch(rank: int, node: Node) -> dict[str, dict[str, object]]:
        dest = output if rank == 0 else output / f"rank-{rank}"
        with SshRemote(node, runner.cluster.identity_file) as remote:
            job = NodePaths.of(remote).job(record.job_id)
            files = _set_aside_reserved(runner, dest, transfer.download_tree(remote, job.out, dest), rank)
            if remote.exists(job.log):
                remote.get(job.log, dest / "log.txt")
                files = {**files, "log.txt": {"sha256": sha256_file(dest / "log.txt"), "size": (dest / "log.txt").stat().st_size}}
        prefix = "" if rank == 0 else f"rank-{rank}/"
        return {prefix + k: v for k, v in files.items()}

    manifest: dict[str, dict[str, object]] = {}
    for part in runner._each(fetch):
        manifest.update(part)  # type: ignore[arg-type]
    (output / "manifest.json").write_text(json.dumps({"files": manifest}, indent=2, sort_keys=True) + "\n")
    record.timings["fetch_s"] = round(time.monotonic() - started, 3)
    summary, series = metrics.read(output)
    run = {
        "job_id": record.job_id,
        "cluster": record.cluster,
        "script": record.script,
        "args": record.args,
        "env_keys": record.env_keys,
        "workdir": record.workdir,
        "script_sha256": record.extra.get("script_sha256"),
        "git": record.extra.get("git"),
        "nodes": [{"name": n.name, "facts": load_facts(runner.cdir, n)} for n in runner.cluster.nodes],
        "exit_code": record.exit_code,
        "submitted_at": record.submitted_at,
        "started_at": record.started_at,
        "ended_at": record.ended_at,
        "timings": {**record.timings, **({"run_s": round(record.ended_at - record.started_at, 3)} if record.ended_at and record.started_at else {})},
        "metrics": summary,
        "metrics_points": len(series),
    }
    (output / "run.json").write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")
    record.status = "fetched"
    record.save(runner.store)
    return output
