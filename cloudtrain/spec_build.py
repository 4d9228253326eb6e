"""The one builder of the ClusterSpec `up` uses, for both of its callers: the CLI's flags
(cli/options.py) and the Python API's keyword arguments (api.py). The checks and defaults are
the same; only the names in its errors differ (`--gpu` on the CLI, `gpu` in the API), given as
`names`: `cli_flag` or `api_arg` (spec_parse.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from cloudtrain.errors import BadInput
from cloudtrain.spec import ClusterSpec, FrameworkSpec, check_shape, parse_duration, parse_gpu, said

# The options that come as they are from either caller (the CLI's dict of flags holds them
# under these keys); `hosts` and `identity` are the CLI's `host` and `identity` when given.
FIELDS = ("provider", "nodes", "name", "framework", "gpu", "cuda", "cuda_toolkit", "region", "zone", "spot",
          "disk_gb", "image", "ssh_cidr", "autostop", "max_duration")


def cluster_spec(
    names: Callable[[str], str],
    provider: str = "local",
    nodes: int = 1,
    name: str | None = None,
    framework: str = "torch",
    gpu: str | None = None,
    cuda: str | None = None,
    cuda_toolkit: bool = False,
    region: str | None = None,
    zone: str | None = None,
    spot: bool = False,
    disk_gb: int = 100,
    image: str = "dl",
    ssh_cidr: str | None = None,
    autostop: str | None = None,
    max_duration: str | None = None,
    hosts: Iterable[str] | None = (),
    identity: str | Path | None = None,
) -> ClusterSpec:
    """The ClusterSpec these options make, validated (`BadInput`, naming each option by `names`)."""
    from cloudtrain import provisioner  # here: `import cloudtrain` loads no provisioner

    prov = provisioner.get(provider)
    hosts = tuple(hosts or ())
    if (hosts or identity) and not prov.takes_hosts:
        mine = f"{names('hosts')} and {names('identity')}"
        raise BadInput(f"{mine} name machines you own; {said(names('provider'), provider)} makes its own",
                       f"add {said(names('provider'), 'ssh')}, or leave out {names('hosts')}/{names('identity')}")
    gpu_name, gpu_count = parse_gpu(gpu, names("gpu")) if gpu else (None, 1)
    nodes = len(hosts) if hosts else nodes  # one node per host
    check_shape(nodes, gpu_count, image, disk_gb, ssh_cidr, names)
    return ClusterSpec(
        name=name or prov.default_name(gpu_name),
        provider=provider,
        nodes=nodes,
        framework=FrameworkSpec.parse(framework, names("framework")),
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
        autostop_s=None if autostop is None else parse_duration(autostop, names("autostop")),
        max_duration_s=None if max_duration is None else parse_duration(max_duration, names("max_duration"), allow_off=False),
        hosts=hosts,
        identity=str(Path(identity).expanduser().absolute()) if identity else None,
    )
