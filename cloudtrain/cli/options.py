"""Options shared by several commands, and the few helpers commands share."""

from __future__ import annotations

from typing import Optional

import typer

from cloudtrain import progress, provisioner
from cloudtrain.spec import ClusterSpec, FrameworkSpec, parse_duration, parse_gpu

ClusterOpt = typer.Option(None, "--cluster", "-c", help="Cluster name; may be left out when exactly one exists.")


def say(text: str) -> None:
    # Live on a terminal, plain lines elsewhere, or quiet (progress.py); a closed terminal
    # must not turn the teardown this may be reporting into a crash.
    progress.say(text)


def build_spec(
    provider: str,
    nodes: int,
    name: Optional[str],
    framework: str,
    gpu: Optional[str],
    cuda: Optional[str],
    region: Optional[str],
    zone: Optional[str],
    spot: bool,
    disk_gb: int,
    image: str,
    ssh_cidr: Optional[str],
    cuda_toolkit: bool = False,
    autostop: Optional[str] = None,
    max_duration: Optional[str] = None,
) -> ClusterSpec:
    prov = provisioner.get(provider)
    gpu_name, gpu_count = parse_gpu(gpu) if gpu else (None, 1)
    return ClusterSpec(
        name=name or prov.default_name(gpu_name),
        provider=provider,
        nodes=nodes,
        framework=FrameworkSpec.parse(framework),
        gpu=gpu_name,
        gpu_count=gpu_count,
        cuda=cuda,
        cuda_toolkit=cuda_toolkit,
        region=region,
        zone=zone,
        spot=spot,
        disk_gb=disk_gb,
        image=image,
        ssh_cidr=ssh_cidr,
        autostop_s=None if autostop is None else parse_duration(autostop, "--autostop"),
        max_duration_s=None if max_duration is None else parse_duration(max_duration, "--max-duration", allow_off=False),
    )


class UpOptions:
    """The `up` flags, declared once for `up` and `launch`."""

    provider = typer.Option("local", "--provider", "-p", help="local | aws | gcp | azure.")
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
