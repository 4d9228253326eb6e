"""The Python API: the library the CLI uses (lifecycle, jobs), without the CLI.

    import cloudtrain

    with cloudtrain.up(provider="local", framework="none") as cluster:
        job = cluster.run("train.py", args=["--epochs", "3"], env={"SEED": "1"})
        print(job.exit_code, job.metrics, job.output)

Leaving the `with` block brings home every output still owed and downs the cluster, as
`cloudtrain down` does: when outputs cannot be brought home, it raises and leaves the cluster
up rather than lose them. Errors are the classes in `cloudtrain.errors` (`BadInput` for what the
CLI answers with exit 2, `JobFailed` carrying the job's exit code). Progress goes to the
`cloudtrain` logger (or `log=`); a job's own output streams to stdout as on the CLI.

Nothing here imports paramiko or a cloud SDK until a call needs it: `import cloudtrain` stays light.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cloudtrain.errors import BadInput, JobFailed
from cloudtrain.spec import ClusterSpec, JobSpec, api_arg
from cloudtrain.spec_build import cluster_spec
from cloudtrain.state import Store

Log = Callable[[str], None]
PathLike = str | Path


def _default_log(text: str) -> None:
    logging.getLogger("cloudtrain").info(text)


class Job:
    """One job, read from its record in the cloudtrain home (what `cloudtrain status` lists)."""

    def __init__(self, store: Store, job_id: str) -> None:
        self._store = store
        self.job_id = job_id
        self.refresh()

    def refresh(self) -> "Job":
        from cloudtrain.jobs.record import JobRecord

        self.record = JobRecord.load(self._store, self.job_id)
        return self

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def exit_code(self) -> int | None:
        return self.record.exit_code

    @property
    def cluster(self) -> str:
        return self.record.cluster

    @property
    def output(self) -> Path:
        """The local folder its outputs come home to."""
        return Path(self.record.output)

    @property
    def metrics(self) -> dict[str, Any]:
        """The job's final summary (its metrics.json), once its outputs are home; {} before."""
        from cloudtrain.jobs import metrics

        return metrics.read(self.output)[0]

    @property
    def series(self) -> list[dict[str, Any]]:
        """One dict per step or epoch (its metrics.jsonl)."""
        from cloudtrain.jobs import metrics

        return metrics.read(self.output)[1]

    @property
    def log(self) -> str:
        try:
            return (self.output / "log.txt").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        return f"Job({self.job_id!r}, status={self.status!r}, exit_code={self.exit_code!r})"


class Cluster:
    """A cluster that exists (made by `up`, or found by `cluster(name)`). As a context manager,
    its exit downs it, bringing owed outputs home first."""

    def __init__(self, name: str, store: Store, log: Log) -> None:
        self.name = name
        self._store = store
        self._log = log

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    @property
    def nodes(self) -> list[dict[str, Any]]:
        record = self._store.cluster_dir(self.name).load()
        return [n.to_dict() for n in record.cluster.nodes] if record.cluster else []

    def _runner(self):  # noqa: ANN202 - JobRunner, imported lazily (paramiko)
        from cloudtrain.autostop import refuse_if_stopped
        from cloudtrain.jobs.runner import JobRunner

        cdir = self._store.cluster_dir(self.name)
        record = cdir.load()
        if record.status != "ready" or record.cluster is None:
            raise BadInput(f"cluster {self.name} is not ready ({record.status})", "bring it up with cloudtrain.up() first")
        refuse_if_stopped(cdir, record)
        return JobRunner(self._store, cdir, record.cluster, say=self._log)

    def run(
        self,
        script: PathLike,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        workdir: PathLike | None = None,
        output: PathLike | None = None,
        output_mode: str | None = None,
        max_upload: str | None = None,
        nproc_per_node: int | None = None,
        launcher: str = "auto",
        logs: str = "rank0",
        detach: bool = False,
        check: bool = True,
    ) -> Job:
        """Ship the workdir, run `script` on every node, bring its outputs home (as `cloudtrain
        run`). A job that exits non-zero raises `JobFailed` (its outputs home) unless check=False;
        with detach=True it returns once started (`wait` follows it)."""
        from cloudtrain.jobs import session, shipment

        env_list = [f"{k}={v}" for k, v in (env or {}).items()]
        spec = JobSpec.build(script, workdir, list(args), env_list, output, detach, max_upload, output_mode, nproc_per_node, launcher, logs)
        with self._runner() as runner:
            record, code = session.run(self._store, runner, shipment.prepare(spec, self._log), self._log)
        return self._done(record.job_id, code, check)

    def wait(self, job: Job | str, check: bool = True) -> Job:
        """Follow a detached job to its end and bring its outputs home."""
        from cloudtrain.jobs import session
        from cloudtrain.jobs.record import JobRecord

        record = JobRecord.load(self._store, job.job_id if isinstance(job, Job) else job)
        with self._runner() as runner:
            code = session.finish(runner, record, self._log)
        return self._done(record.job_id, code, check)

    def _done(self, job_id: str, code: int | None, check: bool) -> Job:
        from cloudtrain.jobs.record import exit_meaning

        job = Job(self._store, job_id)
        if check and code not in (None, 0):
            raise JobFailed(f"job {job_id} exited {code}{exit_meaning(code)}", code, f"its log and outputs are in {job.output}")
        return job

    def down(self, force: bool = False, output: PathLike | None = None) -> bool:
        """Bring owed outputs home, then destroy (as `cloudtrain down`); False if already gone."""
        from cloudtrain import lifecycle

        return lifecycle.down(self._store, self.name, self._log, force=force, output=Path(output).absolute() if output else None)

    def __repr__(self) -> str:
        return f"Cluster({self.name!r})"


def _store(home: PathLike | None) -> Store:
    return Store(Path(home).expanduser().absolute() if home is not None else None)


def spec(**options: Any) -> ClusterSpec:
    """The ClusterSpec `up` would use, validated (BadInput naming the argument, e.g. gpu=), with
    the CLI's defaults; the options (provider, nodes, name, framework, gpu, ...) and their
    defaults are spec_build.cluster_spec's, the one builder the CLI uses too."""
    return cluster_spec(api_arg, **options)


def up(*, home: PathLike | None = None, log: Log | None = None, **options: Any) -> Cluster:
    """Create a cluster and make it ready (as `cloudtrain up`); the options are `spec`'s.
    Use it in a `with` block to have it downed on the way out."""
    from cloudtrain import lifecycle

    store, say = _store(home), log or _default_log
    cluster_spec = spec(**options)
    lifecycle.up(store, cluster_spec, say)
    return Cluster(cluster_spec.name, store, say)


def cluster(name: str | None = None, *, home: PathLike | None = None, log: Log | None = None) -> Cluster:
    """An existing cluster, by name (or the only one)."""
    store = _store(home)
    return Cluster(store.resolve(name).name, store, log or _default_log)


def down(name: str | None = None, *, home: PathLike | None = None, log: Log | None = None, force: bool = False) -> bool:
    """Bring owed outputs home and destroy a cluster (as `cloudtrain down`)."""
    from cloudtrain import lifecycle

    return lifecycle.down(_store(home), name, log or _default_log, force=force)


def runs(*, home: PathLike | None = None, cluster: str | None = None) -> list[Job]:
    """Past and running jobs, oldest first (optionally of one cluster)."""
    from cloudtrain.jobs.record import all_jobs

    store = _store(home)
    records = sorted(all_jobs(store, warn=_default_log), key=lambda r: r.submitted_at)
    return [Job(store, r.job_id) for r in records if cluster is None or r.cluster == cluster]
