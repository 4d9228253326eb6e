"""What a stopped cluster's disks cost: one root disk per node, of the type and size the Pulumi
program created (`diskGb` from the cluster's spec), priced from `sources/disk_prices.csv`.

Each row there is one cited fact (source, date, the quoted line). AWS and GCP price per GB-month;
Azure prices Premium SSD per tier, a disk billing as the smallest tier that holds it. Where the
sources give only a US region's price, the line says which region's list price it is.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

from cloudtrain.spec import ClusterSpec

SOURCE = Path(__file__).resolve().parent / "sources" / "disk_prices.csv"


@dataclass(frozen=True)
class DiskPrice:
    cloud: str
    region: str  # "*": the source names no region
    disk_type: str  # as the program creates it: gp3, pd-balanced, Premium_LRS
    tier_gb: Optional[int]  # per-tier pricing (Azure); None: priced per GB-month
    per_gb_month: Optional[float]
    per_disk_month: Optional[float]  # a tier's whole monthly price; None: not in the sources
    source_url: str
    retrieved: str


@dataclass(frozen=True)
class DiskCost:
    disks: int
    disk_gb: int
    disk_type: str
    usd_per_month: Optional[float]  # all disks together; None: no price in the sources
    basis: str  # what the figure is: "us-east-1 list price", "P10 tier, 128 GB", ...
    at_most: bool = False  # a smaller tier, absent from the sources, may be what bills

    def to_dict(self) -> dict:
        return {"disks": self.disks, "disk_gb": self.disk_gb, "disk_type": self.disk_type,
                "usd_per_month": self.usd_per_month, "basis": self.basis, "at_most": self.at_most}

    def line(self) -> str:
        """`disks: 2 × 100 GB, ~$16.00/month while stopped (gp3, us-east-1 list price)`"""
        what = f"disks: {self.disks} × {self.disk_gb} GB"
        if self.usd_per_month is None:
            return f"{what}, billed while stopped ({self.disk_type}: {self.basis})"
        return f"{what}, {'up to ' if self.at_most else ''}~${self.usd_per_month:.2f}/month while stopped ({self.disk_type}, {self.basis})"


def _num(text: str, kind: type) -> Optional[float]:
    return kind(text) if text.strip() else None


@lru_cache(maxsize=1)
def prices() -> tuple[DiskPrice, ...]:
    with SOURCE.open(newline="", encoding="utf-8") as f:
        return tuple(
            DiskPrice(r["cloud"], r["region"], r["disk_type"], _num(r["tier_gb"], int), _num(r["usd_per_gb_month"], float),
                      _num(r["usd_per_disk_month"], float), r["source_url"], r["retrieved"])
            for r in csv.DictReader(f)
        )


def _region_note(row: DiskPrice) -> str:
    return "list price, region not stated by its source" if row.region == "*" else f"{row.region} list price"


def stopped_cost(spec: ClusterSpec) -> Optional[DiskCost]:
    """What the cluster's disks bill per month while its machines are stopped; None for a
    provider whose disks the sources do not cover (local, ssh: nothing of cloudtrain's bills)."""
    rows = [p for p in prices() if p.cloud == spec.provider]
    if not rows:
        return None
    # The cluster's own region's row first, else the one the sources have (a US list price).
    rows.sort(key=lambda p: (p.region != (spec.region or ""), p.region == "*"))
    disk_type = rows[0].disk_type
    n, gb = spec.nodes, spec.disk_gb
    flat = next((p for p in rows if p.tier_gb is None and p.per_gb_month is not None), None)
    if flat is not None:
        return DiskCost(n, gb, disk_type, round(flat.per_gb_month * gb * n, 2), _region_note(flat))
    tiers = sorted((p for p in rows if p.tier_gb is not None), key=lambda p: p.tier_gb)
    tier = next((p for p in tiers if p.tier_gb >= gb), None)
    if tier is None:
        return DiskCost(n, gb, disk_type, None, f"no tier of {gb} GB or more in the sources")
    if tier.per_disk_month is None:
        return DiskCost(n, gb, disk_type, None, f"the {tier.tier_gb} GB tier's price is not in the sources")
    # Below the smallest tier the sources list, a smaller (unlisted) tier may be what bills.
    at_most = tier is tiers[0] and gb < tier.tier_gb
    return DiskCost(n, gb, disk_type, round(tier.per_disk_month * n, 2), f"{tier.tier_gb} GB tier, {_region_note(tier)}", at_most)


# Disks bill per second of their life, at the monthly price over a 30-day month (AWS's own
# pricing examples: "86,400 seconds/day * 30-day month").
MONTH_S = 30 * 86400


def cost_over(spec: ClusterSpec, seconds: float) -> Optional[float]:
    """What the cluster's disks cost over `seconds` of their life (running or stopped: the
    machines' hourly price does not include them); None where the sources give no price."""
    cost = stopped_cost(spec)
    if cost is None or cost.usd_per_month is None:
        return None
    return cost.usd_per_month * seconds / MONTH_S
