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
import io
import re
import sys
from fractions import Fraction
from pathlib import Path

from cloudtrain.catalog import select

HERE = Path(__file__).parent
SRC = HERE / "sources"
MOTO = "moto 5.2.5 DescribeInstanceTypes + DescribeInstanceTypeOfferings"
SKY = {
    "aws": "skypilot-catalog v7/aws/vms.csv @27f67dd4",
    "gcp": "skypilot-catalog v7/gcp/vms.csv @6f65ab58",
    "azure": "skypilot-catalog v6/azure/vms.csv @098741e7",
}
READ = "2026-12-01"  # the date the extracts were read (sources/README.md)
GPUS_FIELDS = [
    "provider", "gpu", "count", "instance_type", "accelerator", "vcpus", "ram_gb", "gpu_mem_gb",
    "price_hour", "spot_hour", "locations", "restriction", "verified", "source", "date", "note",
]  # fmt: skip
PRICE_FIELDS = ["provider", "instance_type", "region", "price_hour", "spot_hour"]


def _csv(name: str) -> list[dict[str, str]]:
    return list(csv.DictReader((SRC / name).read_text().splitlines()))


def _num(text: str) -> float | None:
    return float(text) if text.strip() else None


def _min(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _machine(provider: str, gpu: str, count: int, itype: str, **kw: object) -> dict[str, object]:
    m: dict[str, object] = dict(provider=provider, gpu=gpu, count=count, instance_type=itype, accelerator="")
    m.update(restriction="", verified="yes", source="", date=READ, note="", prices={}, locations=[])
    m.update(kw)
    return m


def aws() -> list[dict[str, object]]:
    zones: dict[str, list[str]] = {}
    for r in _csv("aws-moto-zones.csv"):
        zones.setdefault(r["instance_type"], []).append(r["zone"])
    prices: dict[str, dict[str, tuple[float | None, list[float | None]]]] = {}
    for r in _csv("skypilot-aws.csv"):
        od, spots = prices.setdefault(r["InstanceType"], {}).get(r["Region"], (_num(r["Price"]), []))
        prices[r["InstanceType"]][r["Region"]] = (od, [*spots, _num(r["SpotPrice"])])
    out = []
    for t in select.aws_pick(_csv("aws-moto-types.csv"), zones):
        it = t["instance_type"]
        gpu = select.aws_gpu(t["gpu_name"], int(t["gpu_mem_mib"]))
        # Spot: the lowest zone's price in the snapshot, which is what a zone choice can get.
        p = {reg: (od, _min(spots)) for reg, (od, spots) in prices.get(it, {}).items()}
        src = MOTO + (f"; prices {SKY['aws']}" if p else "; no price in the sources")
        out.append(
            _machine(
                "aws", str(gpu), int(t["gpu_count"]), it,
                vcpus=int(t["vcpus"]), ram_gb=int(t["mem_mib"]) / 1024, gpu_mem_gb=round(int(t["gpu_mem_mib"]) / 1024),
                prices=p, locations=zones.get(it, []), source=src,
            )
        )  # fmt: skip
    return out


def _gib(info: str) -> int | None:
    m = re.search(r"'SizeInMiB': (\d+)", info)
    return round(int(m.group(1)) / 1024) if m else None


def gcp() -> list[dict[str, object]]:
    hosts: dict[str, dict[str, dict[str, str]]] = {}
    gpus: dict[tuple[str, int], dict[str, dict[str, str]]] = {}
    for r in _csv("skypilot-gcp.csv"):
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
        per_region: dict[str, list[tuple[float | None, float | None]]] = {}
        for z in zones:
            h, g = host[z], gpu_rows.get(z)
            od = _num(h["Price"]) + _num(g["Price"]) if g else None  # type: ignore[operator]
            spot = (_num(h["SpotPrice"]) or 0) + (_num(g["SpotPrice"]) or 0) if g and g["SpotPrice"] else None
            per_region.setdefault(h["Region"], []).append((od, spot))
        p = {reg: (_min([a for a, _ in v]), _min([b for _, b in v])) for reg, v in per_region.items()}
        name, accel_type = select.GCP_GPUS[acc]
        h0 = host[zones[0]]
        mem = _gib(next(iter(gpu_rows.values()))["GpuInfo"]) if gpu_rows else None
        out.append(
            _machine(
                "gcp", name, n, mt, accelerator="" if bundled else accel_type,
                vcpus=int(float(h0["vCPUs"])), ram_gb=float(h0["MemoryGiB"]), gpu_mem_gb=mem or 0,
                prices=p, locations=zones, verified="derived" if gpu_rows else "no",
                source=SKY["gcp"], note=f"machine + {acc} rows summed per zone" if gpu_rows else f"no {acc} rows: price unknown",
            )
        )  # fmt: skip
    return out


def azure() -> list[dict[str, object]]:
    by_type: dict[str, dict[str, object]] = {}
    for r in _csv("skypilot-azure.csv"):
        it = r["InstanceType"]
        if r["AcceleratorName"] not in select.AZURE_GPUS:
            continue
        gpu = select.AZURE_GPUS[r["AcceleratorName"]]
        m = by_type.setdefault(
            it,
            _machine(
                "azure", gpu, int(float(r["AcceleratorCount"])), it, vcpus=int(float(r["vCPUs"])),
                ram_gb=float(r["MemoryGiB"]), gpu_mem_gb=select.AZURE_GPU_MEM[gpu], source=SKY["azure"],
            ),
        )  # fmt: skip
        m["prices"][r["Region"]] = (_num(r["Price"]), _num(r["SpotPrice"]))  # type: ignore[index]
        m["locations"].append(r["Region"])  # type: ignore[attr-defined]
    return list(by_type.values())


def _apply(machines: list[dict[str, object]], overrides: list[dict[str, str]]) -> list[dict[str, object]]:
    out = []
    for o in overrides:
        if o["kind"] == "add":
            kv = dict(x.split("=", 1) for x in o["value"].split(";"))
            machines.append(
                _machine(
                    o["provider"], kv["gpu"], int(kv["count"]), o["instance_type"], vcpus=int(kv["vcpus"]),
                    ram_gb=float(kv["ram_gb"]), gpu_mem_gb=int(kv["gpu_mem_gb"]), locations=o["region"].split(";"),
                    verified="no", source="overrides.csv", date=o["date"],
                )
            )  # fmt: skip
    for m in machines:
        mine = [o for o in overrides if (o["provider"], o["instance_type"]) == (m["provider"], m["instance_type"])]
        if any(o["kind"] == "retire" for o in mine):
            continue
        for o in mine:
            kind, prices = o["kind"], m["prices"]
            if kind == "scale":
                new, old = (Fraction(x) for x in o["value"].split("/"))
                m["prices"] = {r: (None if od is None else round(float(Fraction(od) * new / old), 4), s) for r, (od, s) in prices.items()}  # type: ignore[attr-defined]
                m["verified"] = "derived"
            elif kind == "price":
                prices[o["region"]] = (float(o["value"]), prices.get(o["region"], (None, None))[1])  # type: ignore[index,attr-defined]
                m["verified"] = "no"
            elif kind == "restrict":
                m["restriction"] = o["value"]
            elif kind == "set":
                key, value = o["value"].split("=", 1)
                m[key] = int(value)
            if kind != "add":
                m["source"] = f"{m['source']}; overrides.csv ({kind})" if m["source"] else "overrides.csv"
        out.append(m)
    return out


def _order(m: dict[str, object]) -> list[str]:
    """Locations: the home region first when offered, then regions cheapest first (unknown last)."""
    provider, locs, prices = str(m["provider"]), list(m["locations"]), m["prices"]  # type: ignore[call-overload]
    region = (lambda loc: loc) if provider == "azure" else (lambda loc: loc.rstrip("abcdefghijklmnopqrstuvwxyz") if provider == "aws" else loc.rsplit("-", 1)[0])

    def key(loc: str) -> tuple[object, ...]:
        r = region(loc)
        od = prices.get(r, (None, None))[0]  # type: ignore[attr-defined]
        return (r != select.HOME_REGION[provider], od is None, od or 0.0, r, loc)

    return sorted(dict.fromkeys(locs), key=key)


def _pick(machines: list[dict[str, object]]) -> list[dict[str, object]]:
    """One row per (cloud, GPU, count): the cheapest known price anywhere, then the fewest vCPUs."""
    best: dict[tuple[object, ...], dict[str, object]] = {}
    for m in machines:
        key = (m["provider"], m["gpu"], m["count"])
        lo = _min([od for od, _ in m["prices"].values()])  # type: ignore[attr-defined]
        rank = (lo is None, lo or 0.0, m["vcpus"], m["instance_type"])
        if key not in best or rank < best[key]["_rank"]:  # type: ignore[operator]
            best[key] = {**m, "_rank": rank}
    return [best[k] for k in sorted(best, key=lambda k: (("aws", "gcp", "azure").index(str(k[0])), str(k[1]), int(k[2])))]  # type: ignore[call-overload]


def _fmt(x: object) -> str:
    return "" if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def build() -> dict[str, str]:
    """The generated files' text, by name."""
    rows = _pick(_apply(aws() + gcp() + azure(), _csv("../overrides.csv")))
    gpus, prices = io.StringIO(), io.StringIO()
    g = csv.DictWriter(gpus, GPUS_FIELDS, lineterminator="\n", extrasaction="ignore")
    p = csv.writer(prices, lineterminator="\n")
    g.writeheader()
    p.writerow(PRICE_FIELDS)
    for m in rows:
        locs = _order(m)
        m["locations"] = ";".join(locs)
        first = locs[0] if m["provider"] == "azure" else locs[0].rstrip("abcdefghijklmnopqrstuvwxyz") if m["provider"] == "aws" else locs[0].rsplit("-", 1)[0]
        m["price_hour"], m["spot_hour"] = m["prices"].get(first, (None, None))  # type: ignore[attr-defined]
        g.writerow({k: _fmt(v) for k, v in m.items()})
        for reg, (od, spot) in sorted(m["prices"].items()):  # type: ignore[attr-defined]
            p.writerow([m["provider"], m["instance_type"], reg, _fmt(od), _fmt(spot)])
    return {"gpus.csv": gpus.getvalue(), "prices.csv": prices.getvalue()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cloudtrain.catalog.build", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = ap.parse_args(argv)
    stale = []
    for name, text in build().items():
        if (HERE / name).read_text() != text:
            stale.append(name)
            if not args.check:
                (HERE / name).write_text(text)
    if args.check and stale:
        print(f"stale: {', '.join(stale)}; run python -m cloudtrain.catalog.build", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
