"""`cloudtrain gpus` (the catalog) and `cloudtrain install-pulumi`."""

import json
from typing import Optional

import typer

from cloudtrain.cli.app import app
from cloudtrain.errors import BadInput


def _price(value: float | None) -> str:
    return f"${value:.3f}" if value is not None else "?"


_SORTS = ("catalog", "price")


@app.command()
def gpus(
    provider: Optional[str] = typer.Option(None, "--provider", "-p", help="Only this cloud: aws, gcp or azure."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Only this GPU: h100 (any count) or h100:8."),
    sort: str = typer.Option("catalog", "--sort", help="Row order: catalog (cloud, GPU, count) or price (cheapest first)."),
    spot: bool = typer.Option(False, "--spot", help="Show spot prices instead of on-demand."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON, with source, date and per-region prices."),
) -> None:
    """List the GPUs each cloud offers: machine, size, $/h per node in the default region and where.

    Example: cloudtrain gpus --gpu h100 --sort price --spot
    """
    from cloudtrain import catalog  # here: loading the catalog's tables would slow every command's start

    if sort not in _SORTS:
        raise BadInput(f"unknown --sort {sort!r}", f"choose one of {', '.join(_SORTS)}")
    rows = catalog.for_provider(provider)
    if gpu is not None:
        name, _, count = gpu.partition(":")
        name = catalog.normalize(name)
        if count and not count.isdigit():
            raise BadInput(f"invalid --gpu {gpu!r}", "write NAME or NAME:COUNT, e.g. h100:8")
        rows = [o for o in rows if o.gpu == name and (not count or o.count == int(count))]
        if not rows:
            asked = f"{name}:{count}" if count else name
            raise BadInput(f"no catalog row for GPU {asked}" + (f" on {provider}" if provider else ""), "run `cloudtrain gpus` to see every row")

    def price(o: catalog.Offer) -> float | None:
        return o.spot_hour if spot else o.price_hour

    if sort == "price":
        rows = sorted(rows, key=lambda o: (price(o) is None, price(o) or 0.0))
    if as_json:
        print(json.dumps([o.to_dict() for o in rows], indent=2))
        return
    header = ("CLOUD", "GPU", "MACHINE", "vCPU", "RAM", "GPU MEM", "spot $/h" if spot else "$/h", "REGIONS (first is default)", "NOTE")
    lines = [header]
    for o in rows:
        machine = f"{o.instance_type} + {o.accelerator}" if o.accelerator else o.instance_type
        regions = list(dict.fromkeys(catalog.region_of(o.provider, loc) for loc in o.locations))
        where = ", ".join(regions[:3]) + (f" +{len(regions) - 3}" if len(regions) > 3 else "")
        figure = _price(price(o)) + ("" if o.verified == "yes" or price(o) is None else "*")
        lines.append((o.provider, f"{o.gpu}:{o.count}", machine, str(o.vcpus), f"{o.ram_gb:g}G", f"{o.gpu_mem_gb}G", figure, where, o.restriction_kind))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    for row in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print("* derived or unverified figure; ? not in the sources. `cloudtrain gpus --json` gives every row's source,")
    print("  date, restriction and per-region prices; `python -m cloudtrain.catalog.build` regenerates the catalog")


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
