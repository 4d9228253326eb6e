"""`cloudtrain compat`: ask the resolver which driver, CUDA, cuDNN and wheel fit, without a machine."""

import json
from typing import Optional

import typer

from cloudtrain.cli.app import app
from cloudtrain.errors import BadInput
from cloudtrain.spec import FrameworkSpec, parse_gpu


@app.command()
def compat(
    gpu: str = typer.Option(..., "--gpu", help="Catalog GPU NAME[:COUNT]: t4, l4, a10g, a10, v100, a100, a100-80gb, h100, h200, l40s; the count (h100:8) decides NVSwitch / Fabric Manager."),
    os: str = typer.Option("ubuntu-22.04", "--os", help="Node OS: ubuntu-22.04, ubuntu-24.04 (also ubuntu-20.04, debian-12)."),
    framework: str = typer.Option("torch", "--framework", help="torch, tensorflow, jax or none, optionally pinned: torch==2.14.1."),
    cuda: Optional[str] = typer.Option(None, "--cuda", help="CUDA toolkit X.Y to use; default: the resolver chooses."),
    driver: Optional[str] = typer.Option(None, "--driver", help="A driver already on the node (e.g. 580.95.05): keep it, never replace it."),
    python: Optional[str] = typer.Option(None, "--python", help="The node's Python X.Y; default: the OS's own python3 (ubuntu-22.04: 3.10, ubuntu-24.04: 3.12)."),
    cuda_toolkit: bool = typer.Option(False, "--cuda-toolkit", help="Also a system CUDA toolkit and cuDNN matching the framework's CUDA (default: driver only; the wheels bring their CUDA)."),
    as_json: bool = typer.Option(False, "--json", help="Print the resolution as JSON."),
) -> None:
    """Show the driver, kernel modules, CUDA, cuDNN and framework wheel that fit a GPU and an OS.

    Example: cloudtrain compat --gpu v100 --os ubuntu-24.04 --framework torch --cuda 12.6 --json
    Example: cloudtrain compat --gpu h100:8 --python 3.10 --framework jax --cuda-toolkit

    An impossible combination exits 2 with the reason and a request that works.
    """
    from cloudtrain.compat import Node, resolve  # here: the resolver's tables would slow every command's start

    if "==" in gpu:
        raise BadInput(f"--gpu takes a GPU name, got {gpu!r}", "write e.g. --gpu v100 or --gpu h100:8")
    name, count = parse_gpu(gpu)
    node = Node(driver=driver) if driver else None
    res = resolve(name, os, FrameworkSpec.parse(framework), cuda, node, python=python, cuda_toolkit=cuda_toolkit, gpu_count=count)
    if as_json:
        print(json.dumps(res.to_dict(), indent=2))
        return
    driver_line = (
        f"{res.driver} (already on the node; CUDA {res.cuda} needs >= {res.driver_min})"
        if res.driver_source == "preinstalled"
        else f"R{res.driver} via {(res.driver_pin_package + ' + ') if res.driver_pin_package else ''}{res.driver_package} (CUDA {res.cuda} needs >= {res.driver_min})"
    )
    count = f"{res.gpu_count}x " if res.gpu_count > 1 else ""
    rows = [
        ("GPU", f"{count}{res.gpu} (compute capability {res.compute_cap}) on {res.os}"),
        ("Python", f"{res.python} ({res.python_source})" if res.python else "unknown (not checked; pass --python X.Y)"),
        ("driver", driver_line),
        ("kernel modules", res.kernel_modules),
        ("fabric manager", f"{res.fabric_manager_package} (NVSwitch)" if res.fabric_manager else "not needed"),
    ]
    if res.system_toolkit:
        rows.append(("CUDA toolkit", f"{res.cuda} ({res.cuda_package or 'kept'})"))
        rows.append(("cuDNN", f"{res.cudnn} ({res.cudnn_package or 'kept'})"))
    else:
        rows.append(("CUDA toolkit", "none on the system (the wheels bring CUDA and cuDNN; --cuda-toolkit adds one)"))
    if res.framework:
        index = f" --index-url {res.install['index_url']}" if res.install["index_url"] else ""
        rows.append(("framework", f"{res.framework} ({res.framework_variant}, CUDA {res.framework_cuda})"))
        rows.append(("install", f"pip install '{res.install['requirement']}'{index}"))
    rows += [("note", n) for n in res.notes]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
