"""Bringing a cluster up and taking it down: the order of things, and never forgetting a machine.

`up` checks everything before creating anything, records the cluster before the provisioner
starts, and tears down whatever it made if any later step fails. `down` first brings home
every job output still owed, then destroys.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from typing import Callable

from cloudtrain import provisioner as provisioners
from cloudtrain.bootstrap.cluster import bootstrap_cluster
from cloudtrain.bootstrap.gpu import Request
from cloudtrain.errors import BadInput, CloudtrainError
from cloudtrain.jobs.record import jobs_of
from cloudtrain.jobs.runner import JobRunner
from cloudtrain.spec import ClusterSpec
from cloudtrain.state import ClusterDir, ClusterRecord, Store

Say = Callable[[str], None]


def request_of(spec: ClusterSpec) -> Request:
    return Request(framework=spec.framework, cuda=spec.cuda, gpu=spec.gpu)


def check(store: Store, spec: ClusterSpec) -> None:
    """Everything that can be refused is refused here, before anything is created."""
    provisioners.get(spec.provider).check(spec)
    cdir = store.cluster_dir(spec.name)
    if cdir.exists():
        existing = cdir.load().spec
        # Providers fill in what was left to them (region, zone, the caller's /32); a flag left
        # out again means "whatever was chosen", not a change.
        filled = {k: getattr(existing, k) for k in ("region", "zone", "ssh_cidr") if getattr(spec, k) is None}
        spec = dataclasses.replace(spec, **filled)
        if existing != spec:
            mine, theirs = spec.to_dict(), existing.to_dict()
            diff = ", ".join(f"{k}: {theirs[k]!r} -> {mine[k]!r}" for k in mine if mine[k] != theirs[k])
            raise BadInput(f"cluster {spec.name!r} exists with a different spec ({diff})", f"pass another --name, or `cloudtrain down --cluster {spec.name}` first")


def up(store: Store, spec: ClusterSpec, say: Say) -> ClusterRecord:
    check(store, spec)
    prov = provisioners.get(spec.provider)
    cdir = store.cluster_dir(spec.name)
    with cdir.lock():
        if cdir.exists():
            record = cdir.load()
            if record.status == "ready" and record.cluster:
                say(f"cluster {spec.name} exists; checking it is ready")
                for line in prov.repair(cdir, record):
                    say(line)
                bootstrap_cluster(record.cluster, request_of(spec), cdir)
                return record
            if record.status == "destroying":
                # A `down` that stopped part-way may still owe outputs: finish it, don't discard them.
                raise CloudtrainError(f"cluster {spec.name} is part-way through `down`", f"finish it with `cloudtrain down --cluster {spec.name}`")
            say(f"cluster {spec.name} was left half-made; removing it first")
            prov.destroy(cdir, record)
            cdir.remove()
        say(f"cluster {spec.name}: {prov.describe(spec)}")
        cdir.create()
        record = ClusterRecord(spec=spec)
        cdir.save(record)  # recorded before the provisioner starts: `down` can always find it
        try:
            started = time.monotonic()
            record.cluster = prov.create(spec, cdir, record)
            cdir.save(record)
            say(f"{len(record.cluster.nodes)} node(s) up in {time.monotonic() - started:.1f}s; bootstrapping")
            bootstrap_cluster(record.cluster, request_of(spec), cdir)
            record.status = "ready"
            cdir.save(record)
        except BaseException:
            try:
                kept = _keep_logs(store, cdir)
                say(f"cluster {spec.name} did not come up; removing whatever was made" + (f" (logs kept in {kept})" if kept else ""))
            finally:  # whatever the logging does (a closed pipe, a full disk), nothing is left running
                prov.destroy(cdir, record)
                cdir.remove()
            raise
        say(f"cluster {spec.name} is ready")
        return record


def _keep_logs(store: Store, cdir: ClusterDir) -> str | None:
    if not cdir.logs_dir.is_dir() or not any(cdir.logs_dir.iterdir()):
        return None
    dest = store.root / "logs" / f"{cdir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.copytree(cdir.logs_dir, dest)
    return str(dest)


def bring_home_owed(store: Store, cdir: ClusterDir, record: ClusterRecord, say: Say, force: bool = False) -> None:
    """Fetch every job of this cluster whose outputs have not come home yet.

    With `force`, a job whose outputs cannot be fetched is marked abandoned and the rest go on."""
    if record.cluster is None:
        return
    runner = JobRunner(store, cdir, record.cluster, say=say)
    for job in jobs_of(store, cdir.name, record.created_at):
        if job.status in ("fetched", "abandoned"):
            continue
        try:
            if job.status in ("running", "starting"):
                runner.end(job)
            path = runner.collect(job)
        except Exception as e:  # noqa: BLE001 - with force, any failure must not keep a VM alive
            if not force:
                raise
            job.status = "abandoned"
            job.save(store)
            say(f"warning: job {job.job_id}'s outputs were not brought home ({e}); they are lost with the cluster")
            continue
        say(f"job {job.job_id}: outputs in {path}")


def down(store: Store, name: str | None, say: Say, force: bool = False) -> bool:
    """Destroy a cluster after bringing its owed outputs home. False when there was nothing to do."""
    if name is None and not store.cluster_names():
        say("no cluster exists; nothing to do")
        return False
    if name is not None and not store.cluster_dir(name).exists():
        say(f"cluster {name} does not exist; nothing to do")
        return False
    cdir = store.resolve(name)
    with cdir.lock():
        if not cdir.exists():  # another `down` finished while we waited for the lock
            return False
        record = cdir.load()
        was = record.status
        record.status = "destroying"
        cdir.save(record)
        try:
            bring_home_owed(store, cdir, record, say, force=force)
        except BaseException as e:
            record.status = was  # still usable, and `up` will not mistake it for half-destroyed
            cdir.save(record)
            still_up = f"the cluster is still up; fix that and run `cloudtrain down --cluster {cdir.name}` again, or add --force to destroy anyway"
            if isinstance(e, CloudtrainError):
                raise CloudtrainError(f"could not bring home the outputs of {cdir.name}: {e.message}", still_up) from e
            if isinstance(e, Exception):  # a bug: keep its traceback, but say what state things are in
                say(f"bringing home the outputs of {cdir.name} failed unexpectedly; {still_up}")
            raise
        provisioners.get(record.spec.provider).destroy(cdir, record)
        cdir.remove()
    say(f"cluster {cdir.name} is down")
    return True
