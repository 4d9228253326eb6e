"""`launch --recover`: a job whose node is preempted goes on, on a new node, from its checkpoint.

The loop runs where `launch` runs (no controller VM bills around the clock): it follows the
job with a short patience; when a node stops answering and its provisioner says the node is
gone (`lost_nodes`: the local provider's stand-in for a preemption is a node whose sshd and
processes were killed; on the clouds, a VM the cloud says is gone or a node whose watchdog left
a preemption notice), it has the provisioner put a new machine in its place (`replace_nodes`:
on the clouds through the cluster's stack, provisioner/replace.py), pins and bootstraps it
(`renew`), stops what is left of the job on the other nodes, restores the checkpoints that
came home (jobs/checkpoints.py) onto every node, after what the cluster's bucket holds
(bucket_restore.py), and starts the same job again with
CLOUDTRAIN_RESTART_COUNT set. After `max_restarts` recoveries it stops. Each
preemption and recovery is recorded on the job (`extra["recovery"]`: run.json, `status`).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cloudtrain import autostop, bucket_restore
from cloudtrain import provisioner as provisioners
from cloudtrain.errors import BadInput, CloudtrainError, RemoteError
from cloudtrain.jobs import checkpoints, session
from cloudtrain.jobs.follow import _stop
from cloudtrain.jobs.record import JobRecord
from cloudtrain.jobs.runner import JobRunner
from cloudtrain.jobs.shipment import Shipment
from cloudtrain.provisioner import hostkey_rotation
from cloudtrain.machine import Node
from cloudtrain.spec import ClusterSpec
from cloudtrain.state import ClusterDir, ClusterRecord, Store

Say = Callable[[str], None]
PREEMPTED = "preempted.json"  # the watchdog's preemption notice in the job's folder (bootstrap/node/)
PATIENCE_S = 20.0  # a node silent this long is checked for being gone (CLOUDTRAIN_RECOVER_PATIENCE)


@dataclass(frozen=True)
class RecoveryPolicy:
    """How a job recovers from preemption: `--recover [--max-restarts N]`, or a task file's
    `resources.job_recovery` (`RecoveryPolicy.parse`)."""

    max_restarts: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.max_restarts, int) or isinstance(self.max_restarts, bool) or self.max_restarts < 0:
            raise BadInput(f"--max-restarts must be a whole number >= 0, not {self.max_restarts!r}", "pass e.g. --max-restarts 3")

    @classmethod
    def parse(cls, value: Any) -> "RecoveryPolicy | None":
        """A task file's `job_recovery`: true/false, a strategy name (any: cloudtrain has one),
        or a mapping with `max_restarts_on_errors` / `max_restarts`."""
        if value in (None, False, "none", "NONE"):
            return None
        if value is True or isinstance(value, str):
            return cls()
        if isinstance(value, dict):
            n = value.get("max_restarts", value.get("max_restarts_on_errors", cls.max_restarts))
            return cls(max_restarts=n)
        raise BadInput(f"job_recovery: {value!r} is not understood", "write `job_recovery: {max_restarts: 3}`")


def check(spec: ClusterSpec, policy: RecoveryPolicy | None) -> None:
    """Refused before anything is created: a provider that cannot replace a node."""
    if policy is not None and not provisioners.get(spec.provider).replaces_nodes:
        raise BadInput(
            f"--recover: the {spec.provider} provider cannot replace a preempted node yet",
            "drop --recover (checkpoints still come home into runs/<job-id>/checkpoints/), or try it with --provider local",
        )


def _patience() -> float:
    raw = os.environ.get("CLOUDTRAIN_RECOVER_PATIENCE")
    try:
        return float(raw) if raw else PATIENCE_S
    except ValueError:
        return PATIENCE_S


def attempt_price(prov: provisioners.Provisioner, spec: ClusterSpec) -> tuple[float | None, str]:
    """The cluster's $/h while an attempt ran, and on what basis: a spot cluster's at the
    catalog's spot price where it has one (a third to a tenth of on demand), else on demand."""
    from cloudtrain import catalog

    try:
        if spec.spot and prov.bills:
            choice = catalog.choose(spec)
            per_node = choice.offer.price_in(choice.region, spot=True)
            if per_node is not None:
                return per_node * spec.nodes, "spot"
        return prov.hourly_price(spec), "on-demand"
    except CloudtrainError:
        return None, "unknown"


def renew(prov: provisioners.Provisioner, cdir: ClusterDir, crecord: ClusterRecord, old_nodes: tuple[Node, ...], say: Say) -> list[int]:
    """The nodes `replace_nodes` made new (a cloud that moved the cluster to another zone made
    every node new) pinned, rotated and bootstrapped as `up` does; the others left as they are."""
    from cloudtrain import lifecycle  # lifecycle imports the jobs layer too: loaded when needed

    assert crecord.cluster is not None
    new = [i for i, n in enumerate(crecord.cluster.nodes) if i >= len(old_nodes) or n != old_nodes[i]]
    if prov.rotates_host_keys:
        nodes = list(crecord.cluster.nodes)
        for i in new:
            nodes[i] = hostkey_rotation.rotate_node(nodes[i], crecord.cluster.identity_file, prov.sshd_config(crecord, nodes[i]))
        crecord.cluster = dataclasses.replace(crecord.cluster, nodes=tuple(nodes))
        cdir.save(crecord)
    say(f"bootstrapping the new node(s) of cluster {crecord.spec.name}: {', '.join(crecord.cluster.nodes[i].name for i in new)}")
    lifecycle.run_bootstrap(dataclasses.replace(crecord.cluster, nodes=tuple(crecord.cluster.nodes[i] for i in new)), crecord.spec, cdir)
    return new


class Recovering:
    """One job under `--recover`; `record` is the job's record once it was submitted."""

    def __init__(self, store: Store, cdir: ClusterDir, policy: RecoveryPolicy, say: Say) -> None:
        self.store, self.cdir, self.policy, self.say = store, cdir, policy, say
        self.record: JobRecord | None = None

    def run(self, job: Shipment) -> int:
        """Submit, follow, recover up to `max_restarts` times; the job's exit code."""
        self.say(
            f"--recover: this command watches the job and replaces a preempted node (up to {self.policy.max_restarts} "
            "restart(s)); keep it running: a closed terminal or a sleeping laptop cannot recover the job"
        )
        restarts = 0
        runner = JobRunner(self.store, self.cdir, self._cluster(), say=self.say)
        try:
            record = self.record = runner.submit(job)
            self.say(f"job {record.job_id} started on {', '.join(record.nodes)}")
            record.extra["recovery"] = {"max_restarts": self.policy.max_restarts, "restarts": 0, "preemptions": []}
            record.save(self.store)
            attempt_started = time.time()
            while True:
                try:
                    return session.finish(runner, record, self.say, patience=_patience())
                except RemoteError:
                    lost = self._lost(runner, record)
                    if not lost:
                        raise  # not a preemption: what follow said stands
                runner.close()
                event = self._preempted(record, lost, attempt_started, restarts)
                if restarts >= self.policy.max_restarts:
                    self._give_up(record, event)
                restarts += 1
                try:
                    runner = self._replace(record, lost, event)
                    runner.submit(job, restart_of=record, restart_count=restarts)
                except BaseException:
                    # What ran on the lost node is gone; `down` must not wait for it (the
                    # checkpoints are home) and must not leave a new machine billing.
                    event["recovered"] = False
                    self._abandon(record)
                    raise
                record.extra["recovery"]["restarts"] = restarts
                event["recovered_in_s"] = round(time.time() - event["at"], 1)
                record.save(self.store)
                attempt_started = time.time()
                self.say(f"job {record.job_id} restarted on {', '.join(record.nodes)} (restart {restarts} of {self.policy.max_restarts})")
        finally:
            runner.close()

    def _cluster(self):  # type: ignore[no-untyped-def]
        cluster = self.cdir.load().cluster
        assert cluster is not None  # up returns only ready clusters
        return cluster

    def _lost(self, runner: JobRunner, job: JobRecord) -> list[int]:
        record = self.cdir.load()
        prov = provisioners.get(record.spec.provider)
        # Not observed_stop: a terminated spot node or a stopped GCP VM may be either a
        # preemption or the node's own watchdog (`launch` says so); lost_nodes tells them apart.
        return prov.lost_nodes(self.cdir, record, marked=self._marked(runner, job))

    def _marked(self, runner: JobRunner, job: JobRecord) -> list[int]:
        """The nodes whose watchdog left a preemption notice, `preempted.json` in the job's folder
        (its format: bootstrap/node/preempt.py; only its presence counts here): read on each node
        that still answers; one that came home into the job's output folder stands for every node
        that no longer does."""
        from cloudtrain.reachability import why_silent

        crecord = self.cdir.load()
        nodes = crecord.cluster.nodes if crecord.cluster else ()
        at_home = (Path(job.output) / PREEMPTED).is_file()
        marked = []
        for i, node in enumerate(nodes):
            if why_silent(node.host, node.port, 5.0) is not None:
                if at_home:
                    marked.append(i)
                continue
            try:
                remote = runner.remote(node)
                folder = runner.paths(remote).job(job.job_id).dir
                if remote.run(f"test -s {shlex.quote(folder)}/{PREEMPTED}", check=False).ok:
                    marked.append(i)
            except RemoteError:
                continue  # it went quiet meanwhile: the cloud's account decides
        return marked

    def _preempted(self, record: JobRecord, lost: list[int], attempt_started: float, restarts: int) -> dict:
        crecord = self.cdir.load()
        assert crecord.cluster is not None
        names = [crecord.cluster.nodes[i].name for i in lost]
        now = time.time()
        price, basis = attempt_price(provisioners.get(crecord.spec.provider), crecord.spec)
        kept = checkpoints.complete_files(checkpoints.local_dir(record.output))
        event = {
            "at": now,
            "nodes": names,
            "attempt": restarts,
            "attempt_s": round(now - attempt_started, 1),
            # What the lost attempt cost: the cluster's $/h over the time it ran.
            "attempt_cost": None if price is None else round(price * (now - attempt_started) / 3600, 4),
            "price_basis": basis,
            "checkpoint_files": len(kept),
        }
        record.extra["recovery"]["preemptions"].append(event)
        record.save(self.store)
        self.say(f"{', '.join(names)} is gone (preempted?); job {record.job_id} has {len(kept)} checkpoint file(s) at home")
        return event

    def _abandon(self, record: JobRecord) -> None:
        record.status = "abandoned"  # what was on the lost node is gone; `down` must not wait for it
        record.exit_code = 1
        record.ended_at = time.time()
        record.save(self.store)

    def _give_up(self, record: JobRecord, event: dict) -> None:
        event["recovered"] = False
        self._abandon(record)
        raise CloudtrainError(
            f"job {record.job_id} lost its node again after {self.policy.max_restarts} restart(s) (--max-restarts {self.policy.max_restarts}); not recovering it",
            f"its checkpoints are in {checkpoints.local_dir(record.output)}; run it again with a higher --max-restarts",
        )

    def _replace(self, record: JobRecord, lost: list[int], event: dict) -> JobRunner:
        """New machines for the lost nodes, bootstrapped; the job stopped on the others."""
        crecord = self.cdir.load()
        prov = provisioners.get(crecord.spec.provider)
        old_nodes = crecord.cluster.nodes if crecord.cluster else ()
        for line in prov.replace_nodes(self.cdir, crecord, lost):
            self.say(line)
        new = renew(prov, self.cdir, crecord, old_nodes, self.say)
        assert crecord.cluster is not None
        autostop.install(crecord.cluster, crecord, self.cdir, prov, self.say)
        event["recovered"] = True
        runner = JobRunner(self.store, self.cdir, crecord.cluster, say=self.say)
        survivors = [i for i in range(len(old_nodes)) if i not in new]
        if survivors:  # the job restarts everywhere, from the same checkpoint
            remotes = [runner.remote(crecord.cluster.nodes[i]) for i in survivors]
            jobs = [runner.paths(r).job(record.job_id) for r in remotes]
            _stop(runner, remotes, jobs, [None] * len(remotes))
            for r, j in zip(remotes, jobs):  # the old attempt's status must not end the new one
                r.run(f"cd {shlex.quote(j.dir)} && rm -rf exit_code main_exit main_pid pid failures checkpoints")
        # The bucket first (it may hold a newer checkpoint than home); submit's restore from home fills in the rest.
        bucket_restore.restore(runner, crecord.cluster.nodes, prov.checkpoint_store(crecord), record.job_id, self.say)
        return runner
