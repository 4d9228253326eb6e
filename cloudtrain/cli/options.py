"""Options shared by several commands, and the few helpers commands share."""

from __future__ import annotations

import typer

from cloudtrain import progress, provisioner
from cloudtrain.cli import completion
from cloudtrain.errors import BadInput
from cloudtrain.spec import ClusterSpec, JobSpec, cli_flag
from cloudtrain.spec_build import FIELDS, cluster_spec

ClusterOpt = typer.Option(None, "--cluster", "-c", help="Cluster name; may be left out when exactly one exists.", autocompletion=completion.cluster_names)


def say(text: str) -> None:
    # Live on a terminal, plain lines elsewhere, or quiet (progress.py); a closed terminal
    # must not turn the teardown this may be reporting into a crash.
    progress.say(text)


def with_task(ctx: typer.Context, path: object, only_task: bool = False) -> dict:
    """The command's parameters, merged with the task file's when `path` is one (taskfile.py):
    flags given on the command line win over the file, the file over the flags' defaults."""
    from cloudtrain import taskfile

    params = dict(ctx.params)
    if only_task and path is not None and not taskfile.is_task(path):
        raise BadInput(f"{path} is not a task file", "name a .yaml task file, or leave it out and use flags")
    if not taskfile.is_task(path):
        return params
    task = taskfile.load(path)  # type: ignore[arg-type]
    given = {k for k in params if (src := ctx.get_parameter_source(k)) is not None and src.name == "COMMANDLINE"}
    merged = taskfile.merge(task, params, given - {"script", "task"})
    if "provider" in params and "gpu" not in given and not provisioner.get(merged["provider"]).needs_gpu:
        if note := taskfile.without_gpu(merged, task.path):
            say(note)
    return merged


def cluster_spec_of(p: dict) -> ClusterSpec:
    return cluster_spec(cli_flag, hosts=p.get("host"), identity=p.get("identity"), **{k: p[k] for k in FIELDS})


def job_spec_of(p: dict, detach: bool = False) -> JobSpec:
    from cloudtrain import taskfile

    if taskfile.is_task(p["script"]) and p.get("shell") is None:
        raise BadInput(f"task file {p['script']} has no `run`", "add `run:` (a script path or shell commands) to the file")
    return JobSpec.build(p["script"], p["workdir"], p["args"] or [], p["env"] or [], p["output"], detach, p["max_upload"], p["output_mode"],
                         p["nproc_per_node"], p["launcher"], p["logs"], p.get("torchrun_restarts", 0), shell=p.get("shell"), setup=p.get("setup"), name=p.get("task_name"),
                         secrets=p.get("secret"))


class UpOptions:
    """The `up` flags, declared once for `up` and `launch`."""

    task = typer.Argument(None, help="A task file (.yaml, SkyPilot-style keys; see the README); flags override it.")
    provider = typer.Option("local", "--provider", "-p", help="local | ssh | aws | gcp | azure.")
    nodes = typer.Option(1, "--nodes", "-n", help="How many nodes.")
    name = typer.Option(None, "--name", help="Cluster name [a-z0-9-]; default 'local', or '<provider>-<gpu>'.")
    framework = typer.Option("torch", "--framework", "-f", help="torch | tensorflow | jax | none, optionally ==VERSION.")
    gpu = typer.Option(None, "--gpu", "-g", help="Cloud GPU, NAME or NAME:COUNT (see `cloudtrain gpus`).")
    cuda = typer.Option(None, "--cuda", help="CUDA version X.Y to use on GPU nodes; default: the newest that fits.")
    cuda_toolkit = typer.Option(False, "--cuda-toolkit", help="GPU nodes also get a system CUDA toolkit and cuDNN matching the framework's CUDA (default: driver only; the wheels bring their own).")
    region = typer.Option(None, "--region", help="Cloud region (default: the catalog's first that offers the GPU).")
    zone = typer.Option(None, "--zone", help="Cloud zone.")
    spot = typer.Option(False, "--spot", help="Use spot/preemptible capacity.")
    disk_gb = typer.Option(100, "--disk-gb", help="Root disk size in GB (clouds).")
    image = typer.Option("dl", "--image", help="dl (the cloud's deep-learning image) | ubuntu (bare Ubuntu LTS).")
    ssh_cidr = typer.Option(None, "--ssh-cidr", help="Who may reach SSH; default: your public address /32.")
    autostop = typer.Option(None, "--autostop", help="Stop the cluster after this long idle (30m, 2h, off); default 60m on clouds, off on local.")
    max_duration = typer.Option(None, "--max-duration", help="Stop the cluster this long after `up` whatever runs (8h); jobs get TERM, then KILL.")
    host = typer.Option(None, "--host", help="--provider ssh: a machine you own, user@host[:port]; repeat for several nodes.")
    identity = typer.Option(None, "--identity", "-i", help="--provider ssh: the private key for --host (default: ~/.ssh/id_ed25519, id_ecdsa or id_rsa).")
