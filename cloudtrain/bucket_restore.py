"""`launch --recover` on a cluster with a checkpoint bucket: the nodes read the job's checkpoints
back from the bucket before the copy at home fills in the rest.

The bucket may be newer than home: each node's watchdog copies every complete checkpoint there
and, at a preemption notice, the newest at once, while the caller polls rank 0 every 10 s and
may miss the last one when the node vanishes. Each node runs `blobs.py restore` (shipped by
autostop.py into its watchdog folder) as itself, with its own identity, as the watchdog does:
the caller's keys never reach a node. Every node restores, not only the new ones: the job
restarts on every node from the same checkpoint (the survivors' folders were emptied). When any
node fails, every node's bucket files are removed (a half restore too), so all nodes restore from home alike:
never worse than without a bucket. The newer files come home as any of rank 0's checkpoints do,
through the restarted job's checkpoint pull (jobs/checkpoints.py)."""

from __future__ import annotations

import json
import os
import shlex
from typing import Callable, Sequence

from cloudtrain.errors import CloudtrainError
from cloudtrain.jobs import checkpoints
from cloudtrain.jobs.runner import JobRunner
from cloudtrain.machine import Node

Say = Callable[[str], None]
TIMEOUT_S = 3600.0  # a node pulling many GiB from its region's bucket


def _command(folder: str, store: dict, job_id: str, dest: str) -> str:
    q = shlex.quote
    env = ""
    if os.environ.get("CLOUDTRAIN_METADATA_URL"):  # tests: the metadata stand-in, as autostop.py hands the watchdog
        url = q(os.environ["CLOUDTRAIN_METADATA_URL"])
        env = f"CLOUDTRAIN_IMDS_URL={url} CLOUDTRAIN_GCE_METADATA_URL={url} "
    return f"mkdir -p {q(dest)} && {env}python3 {q(folder + '/blobs.py')} restore {q(json.dumps(store))} {q(job_id)} {q(dest)}"


def _reason(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def restore(runner: JobRunner, nodes: Sequence[Node], store: dict | None, job_id: str, say: Say) -> dict[str, list[str]]:
    """Each node's checkpoint folder filled from the bucket: node name -> the relative paths
    restored; {} when there is no bucket or any node failed (then said, one line each)."""
    if not store:
        return {}
    bucket = store.get("bucket", "?")
    got: dict[str, list[str]] = {}
    failed = False
    for node in nodes:
        try:
            remote = runner.remote(node)
            paths = runner.paths(remote)
            dest = checkpoints.node_dir(paths.job(job_id))
            result = remote.run(_command(f"{paths.root}/watchdog", store, job_id, dest), check=False, timeout=TIMEOUT_S)
            if not result.ok:
                raise CloudtrainError(_reason(result.stderr))
            got[node.name] = [str(rel) for rel in json.loads(result.stdout)]
        except (CloudtrainError, ValueError) as e:
            failed = True
            reason = e.message.rstrip(".") if isinstance(e, CloudtrainError) else "unreadable answer"
            say(f"job {job_id}: {node.name} could not restore checkpoints from bucket {bucket} ({reason}); restoring the copy at home instead")
    if failed:
        for node in nodes:  # every node from the same (home) checkpoints: a half restore is removed too
            try:
                remote = runner.remote(node)
                dest = checkpoints.node_dir(runner.paths(remote).job(job_id))
                remote.run(f"rm -rf {shlex.quote(dest)}", check=False)
            except CloudtrainError:
                continue  # unreachable: starting the job there says so
        return {}
    for node in nodes:
        say(f"job {job_id}: {node.name} restored {len(got[node.name])} checkpoint file(s) from bucket {bucket}")
    return got
