"""Generate `gpus.csv` and `prices.csv` from the dated extracts in `sources/` and `overrides.csv`.

    python -m cloudtrain.catalog.build           # rewrite the two files
    python -m cloudtrain.catalog.build --check   # exit 1 if they differ from what a build gives

Pure: reads only files of this package (no moto, no network). `sources/README.md` names each
source, its commit or version and the date it was read; `overrides.csv` says what they get
wrong or miss, one source per line.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import re
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from cloudtrain.catalog import region_of, select

HERE = Path(__file__).parent
SRC = HERE / "sources"
MOTO = "moto 5.2.5 (2026-10-27) DescribeInstanceTypes + DescribeInstanceTypeOfferings"
SKY = {
    "aws": "skypilot-catalog v7/aws/vms.csv @27f67dd4",
    "gcp": "skypilot-catalog v7/gcp/vms.csv @6f65ab58",
    "azure": "skypilot-catalog v6/azure/vms.csv @098741e7",
}
READ = "2026-12-01"  # the date the extracts were read (sources/README.md)
CLOUDS = ("aws", "gcp", "azure")
Price = tuple[float | None, float | None]  # on-demand, spot ($/h per node)


@dataclass
class Machine:
    provider: str
    gpu: str
    count: int
    instance_type: str
    vcpus: int
    ram_gb: float
    gpu_mem_gb: int
    accelerator: str = ""
    prices: dict[str, Price] = field(default_factory=dict)  # by region
    locations: list[str] = field(default_factory=list)  # zones (AWS, GCP) or regions (Azure)
    restriction: str = ""
    verified: str = "yes"
    source: str = ""
    date: str = READ
    note: str = ""

    def lowest(self) -> float | None:
        return _min([od for od, _ in self.prices.values()])


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def _num(text: str) -> float | None:
    return float(text) if text.strip() else None


def _min(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def aws() -> list[Machine]:
    zones: dict[str, list[str]] = {}
    for r in _csv(SRC / "aws-moto-zones.csv"):
        zones.setdefault(r["instance_type"], []).append(r["zone"])
    od: dict[tuple[str, str], float | None] = {}
    spots: dict[tuple[str, str], list[float | None]] = {}
    for r in _csv(SRC / "skypilot-aws.csv"):
        key = (r["InstanceType"], r["Region"])
        od.setdefault(key, _num(r["Price"]))
        spots.setdefault(key, []).append(_num(r["SpotPrice"]))
    out = []
    for t in select.aws_pick(_csv(SRC / "aws-moto-types.csv"), zones):
        it = t["instance_type"]
        # Spot: the lowest zone's price in the snapshot, what a choice of zone can get.
        prices = {reg: (od[(i, reg)], _min(spots[(i, reg)])) for (i, reg) in od if i == it}
        out.append(
            Machine(
                "aws", str(select.aws_gpu(t["gpu_name"], int(t["gpu_mem_mib"]))), int(t["gpu_count"]), it,
                vcpus=int(t["vcpus"]), ram_gb=int(t["mem_mib"]) / 1024, gpu_mem_gb=round(int(t["gpu_mem_mib"]) / 1024),
                prices=prices, locations=zones.get(it, []),
                source=MOTO + (f"; prices {SKY['aws']}" if prices else "; no price in the sources"),
            )
        )  # fmt: skip
    return out


def _gib(info: str) -> int | None:
    m = re.search(r"'SizeInMiB': (\d+)", info)
    return round(int(m.group(1)) / 1024) if m else None


def gcp() -> list[Machine]:
    hosts: dict[str, dict[str, dict[str, str]]] = {}
    gpus: dict[tuple[str, int], dict[str, dict[str, str]]] = {}
    for r in _csv(SRC / "skypilot-gcp.csv"):
        if r["InstanceType"]:
            hosts.setdefault(r["InstanceType"], {})[r["AvailabilityZone"]] = r
        else:
            gpus.setdefault((r["AcceleratorName"], int(float(r["AcceleratorCount"]))), {})[r["AvailabilityZone"]] = r
    pairs = [(mt, acc, n, True) for mt, (acc, n) in select.GCP_BUNDLED.items()]
    pairs += [(mt, acc, n, False) for (acc, n), mt in select.GCP_N1.items()]
    out = []
    for mt, acc, n, bundled in pairs:
        host, gpu_rows = hosts.get(mt, {}), gpus.get((acc, n), {})
        # Sold where both the machine and its GPUs are; a machine whose GPUs have no rows
        # (H200) is placed by its own rows and has no price.
        zones = sorted(z for z in host if z in gpu_rows) if gpu_rows else sorted(host)
        if not zones:
            continue
        per_region: dict[str, list[Price]] = {}
        for z in zones:
            h, g = host[z], gpu_rows.get(z)
            hp, hs = _num(h["Price"]), _num(h["SpotPrice"])
            gp, gs = (_num(g["Price"]), _num(g["SpotPrice"])) if g else (None, None)
            pair = (hp + gp if hp is not None and gp is not None else None, hs + gs if hs is not None and gs is not None else None)
            per_region.setdefault(h["Region"], []).append(pair)
        name, accel_type = select.GCP_GPUS[acc]
        h0 = host[zones[0]]
        out.append(
            Machine(
                "gcp", name, n, mt, accelerator="" if bundled else accel_type,
                vcpus=int(float(h0["vCPUs"])), ram_gb=float(h0["MemoryGiB"]),
                gpu_mem_gb=(_gib(next(iter(gpu_rows.values()))["GpuInfo"]) if gpu_rows else None) or 0,
                prices={reg: (_min([a for a, _ in v]), _min([b for _, b in v])) for reg, v in per_region.items()},
                locations=zones, verified="derived" if gpu_rows else "no", source=SKY["gcp"],
                note=f"machine + {acc} rows summed per zone" if gpu_rows else f"no {acc} rows in the source: price unknown",
            )
        )  # fmt: skip
    return out


def azure() -> list[Machine]:
    by_type: dict[str, Machine] = {}
    for r in _csv(SRC / "skypilot-azure.csv"):
        gpu = select.AZURE_GPUS.get(r["AcceleratorName"])
        if gpu is None:
            continue
        m = by_type.setdefault(
            r["InstanceType"],
            Machine(
                "azure", gpu, int(float(r["AcceleratorCount"])), r["InstanceType"], vcpus=int(float(r["vCPUs"])),
                ram_gb=float(r["MemoryGiB"]), gpu_mem_gb=select.AZURE_GPU_MEM[gpu], source=SKY["azure"],
            ),
        )  # fmt: skip
        m.prices[r["Region"]] = (_num(r["Price"]), _num(r["SpotPrice"]))
        m.locations.append(r["Region"])
    return list(by_type.values())


def _added(o: dict[str, str]) -> Machine:
    kv = dict(x.split("=", 1) for x in o["value"].split(";"))
    return Machine(
        o["provider"], kv["gpu"], int(kv["count"]), o["instance_type"], vcpus=int(kv["vcpus"]), ram_gb=float(kv["ram_gb"]),
        gpu_mem_gb=int(kv["gpu_mem_gb"]), locations=o["region"].split(";"), verified="no", source="overrides.csv (add)",
        date=o["date"],
    )  # fmt: skip


def apply(machines: list[Machine], overrides: list[dict[str, str]]) -> list[Machine]:
    """What the sources get wrong or miss; each override names its own source in overrides.csv."""
    machines = machines + [_added(o) for o in overrides if o["kind"] == "add"]
    out = []
    for m in machines:
        mine = [o for o in overrides if (o["provider"], o["instance_type"]) == (m.provider, m.instance_type) and o["kind"] != "add"]
        if any(o["kind"] == "retire" for o in mine):
            continue
        for o in mine:
            kind, value = o["kind"], o["value"]
            if kind == "scale":  # a price cut: new/old, the figures of the cited region
                new, old = (Fraction(x) for x in value.split("/"))
                m.prices = {r: (None if p is None else round(float(Fraction(p) * new / old), 4), s) for r, (p, s) in m.prices.items()}
                m.verified = "derived"
            elif kind == "price":
                m.prices[o["region"]] = (float(value), m.prices.get(o["region"], (None, None))[1])
                m.verified = "no"
            elif kind == "restrict":
                m.restriction = value
            elif kind == "set":
                key, _, number = value.partition("=")
                setattr(m, key, int(number))
            elif kind == "note":
                m.note = f"{m.note}; {value}" if m.note else value
            else:
                raise ValueError(f"overrides.csv: unknown kind {kind!r}")
            m.source = f"{m.source}; overrides.csv ({kind})"
        out.append(m)
    return out


def order(m: Machine) -> list[str]:
    """Locations: the home region first when offered, then regions cheapest first (unknown last)."""

    def key(loc: str) -> tuple[object, ...]:
        region = region_of(m.provider, loc)
        od = m.prices.get(region, (None, None))[0]
        return (region != select.HOME_REGION[m.provider], od is None, od or 0.0, region, loc)

    return sorted(dict.fromkeys(m.locations), key=key)


def pick(machines: list[Machine]) -> list[Machine]:
    """One row per (cloud, GPU, count): the cheapest known price anywhere, then the fewest vCPUs."""
    best: dict[tuple[str, str, int], Machine] = {}

    def rank(m: Machine) -> tuple[object, ...]:
        lo = m.lowest()
        return (lo is None, lo or 0.0, m.vcpus, m.instance_type)

    for m in machines:
        key = (m.provider, m.gpu, m.count)
        if key not in best or rank(m) < rank(best[key]):
            best[key] = m
    return [best[k] for k in sorted(best, key=lambda k: (CLOUDS.index(k[0]), k[1], k[2]))]


def _fmt(x: object) -> str:
    return "" if x is None else f"{x:g}" if isinstance(x, float) else str(x)


GPUS_FIELDS = [
    "provider", "gpu", "count", "instance_type", "accelerator", "vcpus", "ram_gb", "gpu_mem_gb",
    "price_hour", "spot_hour", "locations", "restriction", "verified", "source", "date", "note",
]  # fmt: skip


def coverage() -> list[tuple[str, str]]:
    """(cloud, region) for every region the sources know: elsewhere the catalog cannot say.
    An `add` override speaks only for its own machine, so it widens no coverage."""
    out = {("aws", r["region"]) for r in _csv(SRC / "aws-moto-regions.csv")}
    out |= {("gcp", r["Region"]) for r in _csv(SRC / "skypilot-gcp.csv")}
    out |= {("azure", r["Region"]) for r in _csv(SRC / "skypilot-azure.csv")}
    return sorted(out, key=lambda x: (CLOUDS.index(x[0]), x[1]))


def build() -> dict[str, str]:
    """The generated files' text, by name."""
    overrides = _csv(HERE / "overrides.csv")
    rows = pick(apply(aws() + gcp() + azure(), overrides))
    gpus, prices = io.StringIO(), io.StringIO()
    g = csv.DictWriter(gpus, GPUS_FIELDS, lineterminator="\n")
    p = csv.writer(prices, lineterminator="\n")
    g.writeheader()
    p.writerow(["provider", "instance_type", "region", "price_hour", "spot_hour"])
    for m in rows:
        locs = order(m)
        od, spot = m.prices.get(region_of(m.provider, locs[0]), (None, None))
        row = {k: v for k, v in dataclasses.asdict(m).items() if k in GPUS_FIELDS}
        g.writerow({k: _fmt(v) for k, v in {**row, "locations": ";".join(locs), "price_hour": od, "spot_hour": spot}.items()})
        for region, (rod, rspot) in sorted(m.prices.items()):
            p.writerow([m.provider, m.instance_type, region, _fmt(rod), _fmt(rspot)])
    regions = "provider,region\n" + "".join(f"{c},{r}\n" for c, r in coverage())
    return {"gpus.csv": gpus.getvalue(), "prices.csv": prices.getvalue(), "coverage.csv": regions}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cloudtrain.catalog.build", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = ap.parse_args(argv)
    stale = []
    for name, text in build().items():
        path = HERE / name
        if not path.exists() or path.read_text() != text:
            stale.append(name)
            if not args.check:
                path.write_text(text)
    if args.check and stale:
        print(f"stale: {', '.join(stale)}; run python -m cloudtrain.catalog.build", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
