"""`cloudtrain gpus` (the catalog) and `cloudtrain install-pulumi`."""

from __future__ import annotations

import json
from typing import Optional

import typer

from cloudtrain import catalog
from cloudtrain.cli.app import app


def _price(value: float | None) -> str:
    return f"${value:.3f}" if value is not None else "?"


@app.command()
def gpus(
    provider: Optional[str] = typer.Option(None, "--provider", "-p", help="Only this cloud: aws, gcp or azure."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON, with source and date."),
) -> None:
    """List the GPUs each cloud offers: machine, size, $/h per node and where.

    Example: cloudtrain gpus --provider gcp
    """
    rows = catalog.for_provider(provider)
    if as_json:
        print(json.dumps([o.to_dict() for o in rows], indent=2))
        return
    header = ("CLOUD", "GPU", "MACHINE", "vCPU", "RAM", "GPU MEM", "$/h", "WHERE (first is default)")
    lines = [header]
    for o in rows:
        machine = f"{o.instance_type} + {o.accelerator}" if o.accelerator else o.instance_type
        where = ", ".join(o.locations[:3]) + (f" +{len(o.locations) - 3}" if len(o.locations) > 3 else "")
        price = _price(o.price_hour) + ("" if o.verified == "yes" else "*")
        lines.append((o.provider, f"{o.gpu}:{o.count}", machine, str(o.vcpus), f"{o.ram_gb:g}G", f"{o.gpu_mem_gb}G", price, where))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    for row in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print("* derived or unverified figure; `cloudtrain gpus --json` gives every row's source and date")


@app.command("install-pulumi")
def install_pulumi() -> None:
    """Install the Pulumi CLI that cloud providers need, with the Pulumi SDK's own installer.

    Example: cloudtrain install-pulumi
    """
    from cloudtrain.provisioner import require_cloud_extra

    require_cloud_extra("`cloudtrain install-pulumi`", ("pulumi",))  # the installer is the SDK's
    from cloudtrain.provisioner.preflight.pulumi_cli import install

    where = install()
    print(f"Pulumi CLI ready: {where}")
