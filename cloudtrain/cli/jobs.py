"""Job commands: run, logs, cancel, launch."""

import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from cloudtrain import interrupts
from cloudtrain.cli import completion
from cloudtrain.cli.app import app
from cloudtrain.cli.options import ClusterOpt, UpOptions, cluster_spec_of, job_spec_of, say, with_task
from cloudtrain.errors import BadInput, CloudtrainError, JobFailed
from cloudtrain.jobs.record import JobRecord, exit_meaning
from cloudtrain.spec import check_output
from cloudtrain.state import Store

if TYPE_CHECKING:
    from cloudtrain.jobs.runner import JobRunner

O = UpOptions
WorkdirOpt = typer.Option(None, "--workdir", "-w", help="Folder to ship (default: the script's folder).")
EnvOpt = typer.Option(None, "--env", "-e", help="K=V set in the job's environment; repeatable.")
SecretOpt = typer.Option(None, "--secret", help="NAME (its value from your environment) or NAME=@FILE: in the job's environment only, never in a file, argv or log; repeatable.")
OutputOpt = typer.Option(None, "--output", "-o", help="Where outputs land (default: ./runs/<job-id>).")
OutputModeOpt = typer.Option(None, "--output-mode", help="When --output is not empty: merge (keep other files, overwrite same names) | replace (empty a folder cloudtrain filled).")
MaxUploadOpt = typer.Option(None, "--max-upload", help="Refuse a workdir bigger than this, e.g. 500M or 2G (powers of 1024).")
ArgsArg = typer.Argument(None, help="Arguments for the script, after --.")
NprocOpt = typer.Option(None, "--nproc-per-node", help="torchrun processes per node (default: the node's GPUs, 1 on a CPU node).")
LauncherOpt = typer.Option("auto", "--launcher", help="auto (torchrun for torch on several nodes or GPUs, or with --nproc-per-node) | torchrun | none (one plain process per node).")
RestartsOpt = typer.Option(0, "--torchrun-restarts", help="Under torchrun: restart a node's worker group up to N times after a worker fails (torchrun --max-restarts; default 0).")
LogsOpt = typer.Option("rank0", "--logs", help="rank0 (stream rank 0's log) | all (every node's, each line prefixed [node i]).")


def _exit_with(code: int, record: JobRecord) -> None:
    if record.outcome() == "cancelled":  # by `cloudtrain cancel` from another terminal
        raise JobFailed(f"job {record.job_id} was cancelled (exit {code})", code or 143, f"its partial outputs are in {record.output}")
    ended_by = record.extra.get("ended_by")
    if code != 0 and isinstance(ended_by, dict):  # TERMed at its deadline: name the watchdog, not the signal
        from cloudtrain.autostop import stop_phrase

        raise CloudtrainError(f"job {record.job_id} was ended by the cluster's watchdog ({stop_phrase(ended_by)})", f"its partial outputs are in {record.output}")
    if code != 0:
        raise JobFailed(f"job {record.job_id} exited {code}{exit_meaning(code)}", code, f"its log and outputs are in {record.output}")


def _runner(store: Store, cluster: Optional[str]) -> "JobRunner":
    from cloudtrain.jobs.runner import JobRunner  # paramiko and the bootstrap load only for commands that reach nodes

    cdir = store.resolve(cluster)
    record = cdir.load()
    if record.status != "ready" or record.cluster is None:
        raise BadInput(f"cluster {cdir.name} is not ready ({record.status})", "run `cloudtrain up` for it first")
    from cloudtrain.autostop import refuse_if_stopped

    refuse_if_stopped(cdir, record)
    return JobRunner(store, cdir, record.cluster, say=say)


@app.command()
def run(
    ctx: typer.Context,
    script: Path = typer.Argument(..., help="The Python script to run, inside the workdir, or a task file (.yaml)."),
    args: Optional[List[str]] = ArgsArg,
    cluster: Optional[str] = ClusterOpt,
    workdir: Optional[Path] = WorkdirOpt,
    env: Optional[List[str]] = EnvOpt,
    secret: Optional[List[str]] = SecretOpt,
    output: Optional[Path] = OutputOpt,
    output_mode: Optional[str] = OutputModeOpt,
    max_upload: Optional[str] = MaxUploadOpt,
    detach: bool = typer.Option(False, "--detach", "-d", help="Start the job and return; follow with `cloudtrain logs`."),
    nproc_per_node: Optional[int] = NprocOpt,
    launcher: str = LauncherOpt,
    logs: str = LogsOpt,
    torchrun_restarts: int = RestartsOpt,
) -> None:
    """Ship the workdir, run SCRIPT on every node, stream its output, bring outputs home.
    Exits with the job's exit code.

    Example: cloudtrain run examples/mnist.py --env SEED=1 -- --epochs 3
    """
    from cloudtrain.jobs import session, shipment

    spec = job_spec_of(with_task(ctx, script), detach)
    store = Store()
    with _runner(store, cluster) as runner:  # one session per node for the whole command
        runner.warm()  # the nodes are reached while the workdir is planned here
        record, code = session.run(store, runner, shipment.prepare(spec, say), say)
    if code is not None:
        _exit_with(code, record)


@app.command()
def logs(
    job: str = typer.Argument(..., help="Job id (see `cloudtrain status`).", autocompletion=completion.job_ids),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep streaming until the job ends, then bring outputs home."),
    rank: int = typer.Option(0, "--rank", "-r", help="Whose log to print on a multi-node job (default 0, the one -f streams)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="With -f: bring the outputs into this folder instead of the recorded one."),
    output_mode: Optional[str] = OutputModeOpt,
) -> None:
    """Print a job's log; with -f follow it to the end and bring its outputs home.

    Example: cloudtrain logs mnist-20261129-101500-ab12 -f
    """
    from cloudtrain.jobs import session
    from cloudtrain.layout import NodePaths
    from cloudtrain.remote import SshRemote

    store = Store()
    record = JobRecord.load(store, job)
    if not 0 <= rank < len(record.nodes):
        raise BadInput(f"job {job} ran on {len(record.nodes)} node(s); --rank {rank} is not one of them", f"pass --rank 0..{len(record.nodes) - 1}")
    if follow and rank != 0:
        raise BadInput("-f follows rank 0's log, which decides when the job has ended", f"drop -f to print rank {rank}'s log so far")
    if (output is not None or output_mode is not None) and not follow:
        raise BadInput("--output says where -f brings the outputs", f"write `cloudtrain logs {job} -f --output DIR`")
    new_output = check_output(output, output_mode)
    local_log = Path(record.output) / (f"rank-{rank}/log.txt" if rank else "log.txt")
    gone = record.cluster not in store.cluster_names() or record.cluster_created_at not in (
        None, store.cluster_dir(record.cluster).load().created_at
    )  # a cluster made again under the same name never ran this job
    if record.status in ("fetched", "abandoned") or gone:
        if output is not None:
            raise BadInput(f"job {job} owes no outputs any more ({'cluster gone' if gone else record.status}; what came home is in {record.output})", "drop --output")
        if not local_log.exists():
            raise BadInput(f"job {job}'s cluster is gone and its log is not in {record.output}", "nothing more can be fetched")
        sys.stdout.write(local_log.read_text(errors="replace"))
        return
    runner = _runner(store, record.cluster)
    if not follow:
        with SshRemote(runner.cluster.nodes[rank], runner.cluster.identity_file) as remote:
            path = NodePaths.of(remote).job(job).log
            offset = 0
            while chunk := remote.read_from(path, offset):
                sys.stdout.buffer.write(chunk)
                offset += len(chunk)
        sys.stdout.flush()
        return
    if new_output is not None:
        session.redirect(store, record, new_output, output_mode, say)
    with runner:
        code = session.finish(runner, record, say)
    _exit_with(code, record)


@app.command()
def cancel(
    job: str = typer.Argument(..., help="Job id (see `cloudtrain runs`).", autocompletion=completion.job_ids),
    grace: float = typer.Option(10.0, "--grace", min=0, help="Seconds between TERM and KILL, for a job that saves a checkpoint on TERM."),
) -> None:
    """Stop a job on every node (TERM, then KILL after the grace) and bring its partial outputs home.
    A job that already ended is said so; its outputs come home if they are still owed.

    Example: cloudtrain cancel mnist-20261129-101500-ab12
    """
    from cloudtrain.jobs import cancel as cancelling, history

    store = Store()
    cancelling.cancel(store, history.find(store, job), lambda cluster: _runner(store, cluster), say, grace)


@app.command()
def launch(
    ctx: typer.Context,
    script: Path = typer.Argument(..., help="The Python script to run, inside the workdir, or a task file (.yaml)."),
    args: Optional[List[str]] = ArgsArg,
    provider: str = O.provider,
    nodes: int = O.nodes,
    name: Optional[str] = O.name,
    framework: str = O.framework,
    gpu: Optional[str] = O.gpu,
    cuda: Optional[str] = O.cuda,
    cuda_toolkit: bool = O.cuda_toolkit,
    region: Optional[str] = O.region,
    zone: Optional[str] = O.zone,
    spot: bool = O.spot,
    recover: bool = typer.Option(False, "--recover", help="When a node is preempted (gone), replace it, restore $CLOUDTRAIN_CHECKPOINT_DIR and restart the job; this command must keep running."),
    max_restarts: Optional[int] = typer.Option(None, "--max-restarts", help="With --recover: give up after this many restarts (default 3)."),
    disk_gb: int = O.disk_gb,
    image: str = O.image,
    ssh_cidr: Optional[str] = O.ssh_cidr,
    autostop: Optional[str] = O.autostop,
    max_duration: Optional[str] = O.max_duration,
    host: Optional[List[str]] = O.host,
    identity: Optional[Path] = O.identity,
    workdir: Optional[Path] = WorkdirOpt,
    env: Optional[List[str]] = EnvOpt,
    secret: Optional[List[str]] = SecretOpt,
    output: Optional[Path] = OutputOpt,
    output_mode: Optional[str] = OutputModeOpt,
    max_upload: Optional[str] = MaxUploadOpt,
    nproc_per_node: Optional[int] = NprocOpt,
    launcher: str = LauncherOpt,
    logs: str = LogsOpt,
    torchrun_restarts: int = RestartsOpt,
) -> None:
    """up + run + down in one go. Tears down even when the job fails or is interrupted,
    after bringing home what exists.

    Example: cloudtrain launch examples/mnist.py --provider local --framework torch==2.13.0
    """
    from cloudtrain import lifecycle
    from cloudtrain.jobs import session, shipment
    from cloudtrain.jobs.runner import JobRunner

    store = Store()
    p = with_task(ctx, script)
    job = shipment.prepare(job_spec_of(p), say)
    spec = cluster_spec_of(p)
    if store.cluster_dir(spec.name).exists():
        raise BadInput(f"cluster {spec.name!r} already exists and launch would tear it down", "pass --name for a new cluster, or use `cloudtrain run` on the existing one")
    from cloudtrain import recovery

    if max_restarts is not None and not recover:
        raise BadInput("--max-restarts says how often --recover restarts the job", "add --recover, or drop --max-restarts")
    policy = recovery.RecoveryPolicy(3 if max_restarts is None else max_restarts) if recover else None
    recovery.check(spec, policy)
    code: int | None = None
    record = None
    stopped: str | None = None
    try:
        # Inside the try: a signal just after `up` returns must still tear the cluster down.
        cluster = lifecycle.up(store, spec, say).cluster
        assert cluster is not None  # up returns only ready clusters
        if policy is not None:
            recovering = recovery.Recovering(store, store.cluster_dir(spec.name), policy, say)
            try:
                code = recovering.run(job)
            finally:
                record = recovering.record
        else:
            with JobRunner(store, store.cluster_dir(spec.name), cluster, say=say) as runner:
                record = runner.submit(job)
                say(f"job {record.job_id} started on {', '.join(record.nodes)}")
                code = session.finish(runner, record, say)
    except CloudtrainError:
        # Lost the nodes because their watchdog stopped them (--max-duration): say that, not
        # "cannot reach node"; `down` below still brings the partial outputs home.
        from cloudtrain.autostop import observed_stop, stop_phrase

        cdir = store.cluster_dir(spec.name)
        stop = observed_stop(cdir, cdir.load()) if record is not None and cdir.exists() else None
        if stop is None:
            raise
        stopped = stop_phrase(stop)
    finally:
        # `down` brings home whatever is still owed (a failed or interrupted job included);
        # a second signal must not cut it short and leave a machine billing.
        if _made_by_up(store, spec.name):
            with interrupts.shielded():
                lifecycle.down(store, spec.name, say, force=False)
            if interrupts.signalled():
                owed = f"outputs of job {record.job_id} are in {record.output}; " if record is not None else ""
                interrupts.note(f"{owed}cluster {spec.name} is down")
    if stopped is not None and record is not None:
        raise CloudtrainError(f"job {record.job_id} was ended by the cluster's watchdog ({stopped})", f"its partial outputs are in {record.output}")
    if record is not None and code is not None:
        _exit_with(code, record)


def _made_by_up(store: Store, name: str) -> bool:
    """Whether `up` finished making the cluster (a failed `up` removes what it made itself)."""
    cdir = store.cluster_dir(name)
    try:
        return cdir.exists() and cdir.load().status == "ready"
    except (CloudtrainError, ValueError):
        return cdir.exists()  # a damaged record: let `down` try, it says what is wrong
