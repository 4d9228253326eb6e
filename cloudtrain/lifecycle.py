"""Bringing a cluster up and taking it down: the order of things, and never forgetting a machine.

`up` checks everything before creating anything, records the cluster before the provisioner
starts, and tears down whatever it made if any later step fails. `down` first brings home
every job output still owed, then destroys.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Callable

from cloudtrain import autostop
from cloudtrain import provisioner as provisioners
from cloudtrain import safefile
from cloudtrain.bootstrap.cluster import bootstrap_cluster
from cloudtrain.bootstrap.gpu import Request
from cloudtrain.errors import BadInput, CloudtrainError, DamagedRecord, ProvisionError
from cloudtrain.jobs.record import JobRecord, all_jobs, jobs_of
from cloudtrain.jobs.runner import JobRunner
from cloudtrain.machine import Cluster
from cloudtrain.progress import Result
from cloudtrain.provisioner import hostkey_rotation
from cloudtrain.spec import ClusterSpec, format_duration
from cloudtrain.state import ClusterDir, ClusterRecord, Store

Say = Callable[[str], None]


def request_of(spec: ClusterSpec) -> Request:
    return Request(framework=spec.framework, cuda=spec.cuda, gpu=spec.gpu, gpu_count=spec.gpu_count, cuda_toolkit=spec.cuda_toolkit)


def check(store: Store, spec: ClusterSpec) -> None:
    """Everything that can be refused is refused here, before anything is created. `up` runs
    the part about an existing cluster again under the cluster's lock."""
    provisioners.get(spec.provider).check(spec)
    autostop.check(spec, provisioners.get(spec.provider))
    check_existing(store.cluster_dir(spec.name), spec)


def check_existing(cdir: ClusterDir, spec: ClusterSpec) -> None:
    """A cluster of this name must have this spec (BadInput otherwise)."""
    if cdir.exists():
        existing = cdir.load().spec
        # Providers fill in what was left to them (region, zone, the caller's /32); a flag left
        # out again means "whatever was chosen", not a change.
        filled = {k: getattr(existing, k) for k in ("region", "zone", "ssh_cidr", "autostop_s", "max_duration_s") if getattr(spec, k) is None}
        spec = dataclasses.replace(spec, **filled)
        # The watchdog's settings are not the machines': `up` of the cluster may change them.
        spec = dataclasses.replace(spec, autostop_s=existing.autostop_s, max_duration_s=existing.max_duration_s)
        if existing != spec:
            mine, theirs = spec.to_dict(), existing.to_dict()
            diff = ", ".join(f"{k}: {theirs[k]!r} -> {mine[k]!r}" for k in mine if mine[k] != theirs[k])
            raise BadInput(f"cluster {spec.name!r} exists with a different spec ({diff})", f"pass another --name, or `cloudtrain down --cluster {spec.name}` first")


def up(store: Store, spec: ClusterSpec, say: Say) -> ClusterRecord:
    check(store, spec)
    prov = provisioners.get(spec.provider)
    cdir = store.cluster_dir(spec.name)
    with cdir.lock():
        # Again, under the lock: another `up` of this name may have made it while we waited.
        check_existing(cdir, spec)
        if cdir.exists():
            record = cdir.load()
            if record.status in ("ready", "stopped") and record.cluster:
                _update_watchdog_settings(cdir, record, spec)
                if restart(cdir, record, prov, say) is None:
                    say(f"cluster {spec.name} exists; checking it is ready")
                for line in prov.repair(cdir, record):
                    say(line)
                run_bootstrap(record.cluster, spec, cdir)
                autostop.install(record.cluster, record, cdir, prov, say)
                return record
            if record.status == "destroying":
                # A `down` that stopped part-way may still owe outputs: finish it, don't discard them.
                raise CloudtrainError(f"cluster {spec.name} is part-way through `down`", f"finish it with `cloudtrain down --cluster {spec.name}`")
            say(f"cluster {spec.name} was left half-made; removing it first")
            prov.destroy(cdir, record)
            cdir.remove()
        say(f"cluster {spec.name}: {prov.describe(spec)}")
        cdir.create(provider=spec.provider)  # the marker: `down --force` finds the provider without the record
        store.unbury(spec.name)
        record = ClusterRecord(spec=spec)
        cdir.save(record)  # recorded before the provisioner starts: `down` can always find it
        try:
            started = time.monotonic()
            record.cluster = prov.create(spec, cdir, record)
            cdir.save(record)
            hostkey_rotation.after_create(prov, cdir, record)
            say(f"{len(record.cluster.nodes)} node(s) up in {time.monotonic() - started:.1f}s; bootstrapping")
            run_bootstrap(record.cluster, spec, cdir)
            autostop.install(record.cluster, record, cdir, prov, say)
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
        say(Result(f"cluster {spec.name} is ready"))
        return record


def _update_watchdog_settings(cdir: ClusterDir, record: ClusterRecord, spec: ClusterSpec) -> None:
    """`up --autostop/--max-duration` of an existing cluster: the new settings (a flag left out
    keeps the recorded one); `autostop.install` then restarts the watchdogs with them."""
    given = {k: getattr(spec, k) for k in ("autostop_s", "max_duration_s") if getattr(spec, k) is not None}
    if any(getattr(record.spec, k) != v for k, v in given.items()):
        record.spec = dataclasses.replace(record.spec, **given)
        cdir.save(record)


def restart(cdir: ClusterDir, record: ClusterRecord, prov: provisioners.Provisioner, say: Say) -> dict | None:
    """Start a cluster its watchdog stopped (same nodes and keys), keeping its billed time; the
    stop that was found, or None when it was running."""
    stop = prov.observed_stop(cdir, record)
    if stop is None:
        return None
    at = stop.get("at") or time.time()
    record.ran_s, record.status = record.running_s(stopped_at=at), "stopped"
    cdir.save(record)
    say(f"cluster {record.spec.name} was stopped ({stop.get('reason', '?')}, {time.strftime('%H:%M', time.localtime(at))}); starting it")
    for line in prov.start(cdir, record):
        say(line)
    record.started_at, record.status = time.time(), "ready"
    cdir.save(record)
    return stop


def run_bootstrap(cluster: Cluster, spec: ClusterSpec, cdir: ClusterDir) -> None:
    """Make the nodes ready (idempotent)."""
    # Its logs and facts land in the cluster's folder: private, whatever the user's umask.
    with safefile.private_umask():
        bootstrap_cluster(cluster, request_of(spec), cdir)
    safefile.private_tree(cdir.logs_dir)


def _keep_logs(store: Store, cdir: ClusterDir) -> str | None:
    if not cdir.logs_dir.is_dir() or not any(cdir.logs_dir.iterdir()):
        return None
    dest = safefile.private_dir(store.root / "logs") / f"{cdir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.copytree(cdir.logs_dir, dest)
    safefile.private_tree(dest)
    return str(dest)


def bring_home_owed(
    store: Store, cdir: ClusterDir, record: ClusterRecord, say: Say, force: bool = False, output: Path | None = None
) -> None:
    """Fetch every job of this cluster whose outputs have not come home yet.

    With `output`, each owed job comes home into output/<job-id> instead of its recorded
    folder (the record updated first). With `force`, a job whose outputs cannot be fetched is
    marked abandoned and the rest go on."""
    if record.cluster is None:
        return
    with JobRunner(store, cdir, record.cluster, say=say) as runner:  # one session per node for all owed jobs
        _bring_home(store, cdir, record, runner, say, force, output)


def _bring_home(store: Store, cdir: ClusterDir, record: ClusterRecord, runner: JobRunner, say: Say, force: bool, output: Path | None) -> None:
    for job in jobs_of(store, cdir.name, record.created_at, warn=say):
        if job.status in ("fetched", "abandoned"):
            continue
        try:
            if output is not None and Path(job.output) != output / job.job_id:
                job.output = str(output / job.job_id)
                job.save(store)
            _check_writable(job)
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


def _check_writable(job: JobRecord) -> None:
    """Refuse, before stopping or fetching anything, an output folder that cannot be made."""
    try:
        Path(job.output).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CloudtrainError(
            f"job {job.job_id}'s outputs cannot be written to {job.output} ({e.strerror or e})",
            "pass `--output DIR` to bring them somewhere else",
        ) from e


def down(store: Store, name: str | None, say: Say, force: bool = False, output: Path | None = None,
         confirm: Callable[[str], str] | None = None, provider: str | None = None) -> bool:
    """Destroy a cluster after bringing its owed outputs home. False when there was nothing to do.

    A name never created is BadInput (a typo must not look like success while the real
    cluster bills) unless the clouds hold resources under its tag (removed after `confirm`, or
    with `force`); a name already destroyed (its tombstone) is nothing to do."""
    if name is None and not store.cluster_names():
        say("no cluster exists; nothing to do")
        return False
    if name is not None and not store.cluster_dir(name).found():
        from cloudtrain.provisioner import inventory  # here: the clouds' SDKs load only for it

        return inventory.down_unrecorded(store, name, say, force, confirm, provider=provider) or _gone(store, name, say)
    cdir = store.resolve(name)
    with cdir.lock():
        if not cdir.found():  # another `down` finished while we waited for the lock
            return _gone(store, cdir.name, say)
        try:
            record = cdir.load()
        except (DamagedRecord, BadInput) as e:  # BadInput: a marker without a record
            if not force:
                raise DamagedRecord(
                    f"cannot bring home the outputs of {cdir.name}: {e.message}",
                    f"`cloudtrain down --force --cluster {cdir.name}` destroys it from what its provider can find (owed outputs are then lost)",
                ) from e
            _destroy_unrecorded(store, cdir, say)
            return True
        prov = provisioners.get(record.spec.provider)
        if record.cluster is not None and _owes(store, cdir, record):
            # A stopped cluster's outputs are on its disks: start it to bring them home.
            try:
                restart(cdir, record, prov, say)
            except CloudtrainError as e:  # e.g. a terminated spot node: --force must still destroy what bills
                if not force:
                    raise
                say(f"warning: {e.message}; destroying it anyway (--force)")
            autostop.disarm(record.cluster, prov)  # no stop in the middle of the transfer
        was = record.status
        record.status = "destroying"
        cdir.save(record)
        try:
            bring_home_owed(store, cdir, record, say, force=force, output=output)
        except BaseException as e:
            record.status = was  # still usable, and `up` will not mistake it for half-destroyed
            cdir.save(record)
            still_up = (
                f"the cluster is still up; fix that and run `cloudtrain down --cluster {cdir.name}` again "
                "(`--output DIR` brings the outputs elsewhere), or add --force to destroy anyway"
            )
            if isinstance(e, CloudtrainError):
                raise CloudtrainError(f"could not bring home the outputs of {cdir.name}: {e.message}", still_up) from e
            if isinstance(e, Exception):  # a bug: keep its traceback, but say what state things are in
                say(f"bringing home the outputs of {cdir.name} failed unexpectedly; {still_up}")
            elif isinstance(e, KeyboardInterrupt):  # Ctrl-C, SIGTERM or SIGHUP: nothing was destroyed
                say(f"stopped before destroying {cdir.name}; {still_up}")
            raise
        stop = prov.observed_stop(cdir, record)
        ran_s = record.running_s(stopped_at=stop.get("at") if stop else None)
        say(f"cluster {cdir.name}: destroying")  # the phase a live display shows while it lasts
        prov.destroy(cdir, record)
        store.bury(cdir.name, {"provider": record.spec.provider, "created_at": record.created_at})
        cdir.remove()
    say(Result(f"cluster {cdir.name} is down ({_cost_line(prov, record.spec, ran_s, time.time() - record.created_at)})"))
    return True


def _cost_line(prov: provisioners.Provisioner, spec: ClusterSpec, ran_s: float, age_s: float = 0.0) -> str:
    """What the cluster cost: its machines' running time at its hourly price, and its disks over
    their whole life (they bill while the machines are stopped too)."""
    from cloudtrain.catalog.disks import cost_over

    try:
        price = prov.hourly_price(spec)
    except CloudtrainError:
        price = None
    cost = "price unknown" if price is None else ("free" if price == 0 else f"~${price * ran_s / 3600:.2f} at ${price:.2f}/h")
    disks = cost_over(spec, age_s)
    return f"ran {format_duration(ran_s)}, {cost}" + ("" if disks is None else f", disks ~${disks:.2f} over {format_duration(age_s)}")


def _owes(store: Store, cdir: ClusterDir, record: ClusterRecord) -> bool:
    return any(j.status not in ("fetched", "abandoned") for j in jobs_of(store, cdir.name, record.created_at, warn=lambda _: None))


def _gone(store: Store, name: str, say: Say) -> bool:
    stone = store.tombstone(name)
    if stone is None:
        raise store.unknown_cluster(name)
    when = stone.get("destroyed_at")
    at = f" at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))}" if isinstance(when, (int, float)) else ""
    say(f"cluster {name} was already destroyed{at}; nothing to do")
    return False


def _destroy_unrecorded(store: Store, cdir: ClusterDir, say: Say) -> None:
    """`down --force` of a cluster whose record is damaged or missing: its provider (from the
    marker, else from the files it left) removes what it can find; its owed jobs are abandoned."""
    name = cdir.provider_name()
    if name not in provisioners.PROVIDERS:  # absent, or as damaged as the record
        name = next((p for p in provisioners.PROVIDERS if provisioners.get(p).recognizes(cdir)), None)
    if name is None and cdir.provider_dir.is_dir() and any(cdir.provider_dir.iterdir()):
        raise ProvisionError(f"cannot tell which provider made cluster {cdir.name}", f"remove its machines by hand, then delete {cdir.root}")
    if name is None:
        say(f"warning: the record of cluster {cdir.name} is damaged; its provider had made nothing yet")
    else:
        say(f"warning: the record of cluster {cdir.name} is damaged; destroying what the {name} provider can find")
        provisioners.get(name).destroy_found(cdir)
    for job in all_jobs(store, warn=say):
        if job.cluster == cdir.name and job.status not in ("fetched", "abandoned"):
            job.status = "abandoned"
            job.save(store)
            say(f"warning: job {job.job_id}'s outputs were not brought home (its cluster's record is damaged); they are lost with the cluster")
    kept = _keep_logs(store, cdir)
    store.bury(cdir.name, {"provider": name, "damaged": True})
    cdir.remove()
    say(Result(f"cluster {cdir.name} is down" + (f" (logs kept in {kept})" if kept else "")))
