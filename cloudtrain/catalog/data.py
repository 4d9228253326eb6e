"""The catalog's rows, read from the package's CSV files.

`gpus.csv`: one row per (cloud, GPU, count) with the machine that carries it, its size, its
on-demand price and where it is offered. `images.csv`: the images each cloud boots. Every row
names its source and date, and says whether it was read (`yes`), computed from read figures
(`derived`) or is unverified (`no`), so a wrong figure can be traced and fixed in one place.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True)
class Offer:
    provider: str
    gpu: str  # normalized name: t4, a100-80gb, ...
    count: int  # GPUs per node
    instance_type: str  # AWS instance type, GCP machine type, Azure VM size
    accelerator: str  # GCP accelerator to attach (n1 machines); "" when the type carries its GPUs
    vcpus: int
    ram_gb: float
    gpu_mem_gb: int
    price_hour: float | None  # on-demand $/h per node, None when unknown
    spot_hour: float | None
    locations: tuple[str, ...]  # regions (AWS, Azure) or zones (GCP); the first is the default
    verified: str  # yes | derived | no
    source: str
    date: str
    note: str

    def to_dict(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "gpu": self.gpu,
            "count": self.count,
            "instance_type": self.instance_type,
            "accelerator": self.accelerator or None,
            "vcpus": self.vcpus,
            "ram_gb": self.ram_gb,
            "gpu_mem_gb": self.gpu_mem_gb,
            "price_hour": self.price_hour,
            "spot_hour": self.spot_hour,
            "locations": list(self.locations),
            "verified": self.verified,
            "source": self.source,
            "date": self.date,
            "note": self.note,
        }


@dataclass(frozen=True)
class Image:
    provider: str
    image: str  # dl | ubuntu (spec.IMAGES)
    ref: str  # cloud-specific reference; each cloud module parses its own form
    ssh_user: str
    min_disk_gb: int
    excludes: tuple[str, ...]  # GPUs this image does not support
    verified: str
    source: str
    date: str
    note: str


def _price(text: str) -> float | None:
    return float(text) if text.strip() else None


def _rows(name: str) -> list[dict[str, str]]:
    text = resources.files("cloudtrain.catalog").joinpath(name).read_text()
    return list(csv.DictReader(text.splitlines()))


@lru_cache(maxsize=1)
def offers() -> tuple[Offer, ...]:
    return tuple(
        Offer(
            provider=r["provider"],
            gpu=r["gpu"],
            count=int(r["count"]),
            instance_type=r["instance_type"],
            accelerator=r["accelerator"],
            vcpus=int(r["vcpus"]),
            ram_gb=float(r["ram_gb"]),
            gpu_mem_gb=int(r["gpu_mem_gb"]),
            price_hour=_price(r["price_hour"]),
            spot_hour=_price(r["spot_hour"]),
            locations=tuple(x for x in r["locations"].split(";") if x),
            verified=r["verified"],
            source=r["source"],
            date=r["date"],
            note=r["note"],
        )
        for r in _rows("gpus.csv")
    )


@lru_cache(maxsize=1)
def images() -> tuple[Image, ...]:
    return tuple(
        Image(
            provider=r["provider"],
            image=r["image"],
            ref=r["ref"],
            ssh_user=r["ssh_user"],
            min_disk_gb=int(r["min_disk_gb"]),
            excludes=tuple(x for x in r["excludes"].split(";") if x),
            verified=r["verified"],
            source=r["source"],
            date=r["date"],
            note=r["note"],
        )
        for r in _rows("images.csv")
    )
