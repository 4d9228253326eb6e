"""Write the catalog's dated source extracts (`sources/`) from the full upstream data.

    python -m cloudtrain.catalog.extract --moto                 # AWS types + offerings from moto
    python -m cloudtrain.catalog.extract --skypilot DIR         # GPU rows of skypilot-catalog

Run by hand when a source moves on; the generator (`build.py`) reads only the committed
extracts, so building the catalog needs neither moto nor the upstream files. SkyPilot rows are
copied verbatim (same characters, same order); only rows of the machines the catalog uses are kept.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
from pathlib import Path

from cloudtrain.catalog import select

SOURCES = Path(__file__).with_name("sources")


def moto_types(root: Path) -> list[dict[str, object]]:
    """NVIDIA x86-64 instance types with whole GPUs, from moto's DescribeInstanceTypes data."""
    data = json.loads(gzip.decompress((root / "instance_types.json.gz").read_bytes()))
    out = []
    for name, t in sorted(data.items()):
        gpus = (t.get("GpuInfo") or {}).get("Gpus") or []
        if len(gpus) != 1 or gpus[0].get("Manufacturer") != "NVIDIA":
            continue
        g = gpus[0]
        # g6f and similar sell a fraction of one GPU: not a training machine.
        if g.get("GpuPartitionSize", 1.0) != 1.0 or "x86_64" not in t["ProcessorInfo"]["SupportedArchitectures"]:
            continue
        if select.aws_gpu(str(g["Name"]), int(g["MemoryInfo"]["SizeInMiB"])) is None:
            continue
        out.append(
            {
                "instance_type": name,
                "gpu_name": g["Name"],
                "gpu_count": g["Count"],
                "gpu_mem_mib": g["MemoryInfo"]["SizeInMiB"],
                "vcpus": t["VCpuInfo"]["DefaultVCpus"],
                "mem_mib": t["MemoryInfo"]["SizeInMiB"],
            }
        )
    return out


def moto_zones(root: Path, types: set[str]) -> list[tuple[str, str]]:
    """(instance type, availability zone) for the given types, from DescribeInstanceTypeOfferings."""
    rows = set()
    for f in sorted((root / "instance_type_offerings" / "availability-zone").glob("*.json.gz")):
        for o in json.loads(gzip.decompress(f.read_bytes())):
            if o["InstanceType"] in types:
                rows.add((o["InstanceType"], o["Location"]))
    return sorted(rows)


def write_moto() -> None:
    import moto  # only the extractor needs it

    root = Path(moto.__file__).parent / "ec2" / "resources"
    types = moto_types(root)
    with (SOURCES / "aws-moto-types.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(types[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(types)
    with (SOURCES / "aws-moto-zones.csv").open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["instance_type", "zone"])
        w.writerows(moto_zones(root, {str(t["instance_type"]) for t in types}))
    # The regions moto's offerings cover: a region outside them is unknown, not "not offered".
    regions = sorted(f.name.removesuffix(".json.gz") for f in (root / "instance_type_offerings" / "region").glob("*.json.gz"))
    (SOURCES / "aws-moto-regions.csv").write_text("region\n" + "".join(f"{r}\n" for r in regions))
    print(f"moto {moto.__version__}: {len(types)} types, {len(regions)} regions")


def _keep_lines(src: Path, dst: Path, keep) -> int:
    lines = src.read_text().splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    names = next(csv.reader([header]))
    kept = [line for line, row in zip(body, csv.reader(body)) if keep(dict(zip(names, row)))]
    dst.write_text(header + "".join(kept))
    return len(kept)


def write_skypilot(folder: Path) -> None:
    types = list(csv.DictReader((SOURCES / "aws-moto-types.csv").open()))
    zones: dict[str, list[str]] = {}
    for r in csv.DictReader((SOURCES / "aws-moto-zones.csv").open()):
        zones.setdefault(r["instance_type"], []).append(r["zone"])
    aws_types = {t["instance_type"] for t in select.aws_pick(types, zones)}
    n = _keep_lines(folder / "aws-gpu.csv", SOURCES / "skypilot-aws.csv", lambda r: r["InstanceType"] in aws_types)
    print(f"aws: {n} rows")
    # GCP host rows only in zones where one of the catalog's GPUs is sold.
    gpu_zones = {r["AvailabilityZone"] for r in csv.DictReader((folder / "gcp-gpu.csv").open()) if r["AcceleratorName"] in select.GCP_GPUS}
    n = _keep_lines(
        folder / "gcp-gpu.csv",
        SOURCES / "skypilot-gcp.csv",
        lambda r: select.gcp_row_wanted(r) and (not r["InstanceType"] or r["AvailabilityZone"] in gpu_zones),
    )
    print(f"gcp: {n} rows")
    n = _keep_lines(folder / "azure-gpu.csv", SOURCES / "skypilot-azure.csv", lambda r: r["AcceleratorName"] in select.AZURE_GPUS)
    print(f"azure: {n} rows")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cloudtrain.catalog.extract", description=__doc__.splitlines()[0])
    p.add_argument("--moto", action="store_true", help="AWS types and zone offerings from the installed moto")
    p.add_argument("--skypilot", type=Path, metavar="DIR", help="folder with aws-gpu.csv, gcp-gpu.csv, azure-gpu.csv")
    args = p.parse_args(argv)
    SOURCES.mkdir(exist_ok=True)
    if args.moto:
        write_moto()
    if args.skypilot:
        write_skypilot(args.skypilot)


if __name__ == "__main__":
    main()
