"""`cloudtrain compat`: ask the resolver which driver, CUDA, cuDNN and wheel fit, without a machine."""

from __future__ import annotations

import json
from typing import Optional

import typer

from cloudtrain.cli.app import app
from cloudtrain.compat import Node, resolve
from cloudtrain.errors import BadInput
from cloudtrain.spec import FrameworkSpec


@app.command()
def compat(
    gpu: str = typer.Option(..., "--gpu", help="Catalog GPU name: t4, l4, a10g, a10, v100, a100, a100-80gb, h100, l40s."),
    os: str = typer.Option("ubuntu-22.04", "--os", help="Node OS: ubuntu-22.04, ubuntu-24.04 (also ubuntu-20.04, debian-12)."),
    framework: str = typer.Option("torch", "--framework", help="torch, tensorflow, jax or none, optionally pinned: torch==2.14.1."),
    cuda: Optional[str] = typer.Option(None, "--cuda", help="CUDA toolkit X.Y to use; default: the resolver chooses."),
    driver: Optional[str] = typer.Option(None, "--driver", help="A driver already on the node (e.g. 580.95.05): keep it, never replace it."),
    as_json: bool = typer.Option(False, "--json", help="Print the resolution as JSON."),
) -> None:
    """Show the driver, kernel modules, CUDA, cuDNN and framework wheel that fit a GPU and an OS.

    Example: cloudtrain compat --gpu v100 --os ubuntu-24.04 --framework torch --cuda 12.6 --json

    An impossible combination exits 2 with the reason and a request that works.
    """
    if "==" in gpu or ":" in gpu:
        raise BadInput(f"--gpu takes a GPU name, got {gpu!r}", "write e.g. --gpu v100")
    node = Node(driver=driver) if driver else None
    res = resolve(gpu, os, FrameworkSpec.parse(framework), cuda, node)
    if as_json:
        print(json.dumps(res.to_dict(), indent=2))
        return
    driver_line = (
        f"{res.driver} (already on the node; CUDA {res.cuda} needs >= {res.driver_min})"
        if res.driver_source == "preinstalled"
        else f"R{res.driver} via {(res.driver_pin_package + ' + ') if res.driver_pin_package else ''}{res.driver_package} (>= {res.driver_min} for CUDA {res.cuda})"
    )
    rows = [
        ("GPU", f"{res.gpu} (compute capability {res.compute_cap}) on {res.os}"),
        ("driver", driver_line),
        ("kernel modules", res.kernel_modules),
        ("CUDA toolkit", f"{res.cuda} ({res.cuda_package or 'kept'})"),
        ("cuDNN", f"{res.cudnn} ({res.cudnn_package or 'kept'})"),
    ]
    if res.framework:
        index = f" --index-url {res.install['index_url']}" if res.install["index_url"] else ""
        rows.append(("framework", f"{res.framework} ({res.framework_variant}, CUDA {res.framework_cuda})"))
        rows.append(("install", f"pip install '{res.install['requirement']}'{index}"))
    rows += [("note", n) for n in res.notes]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
