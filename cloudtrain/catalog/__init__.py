"""GPU catalog lookups: which machine carries `--gpu NAME:COUNT` on each cloud, where, for how much.

`choose(spec)` is the one validation every cloud `up` runs first. It reads only package data,
so a mistake gets the same answer (BadInput, exit 2, naming the valid choices) on a machine
with no credentials, no network and no Pulumi CLI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cloudtrain.catalog.data import Image, Offer, images, offers
from cloudtrain.errors import BadInput
from cloudtrain.spec import ClusterSpec, check_cidr

__all__ = ["GPUS", "MAX_NODES", "Choice", "Image", "Offer", "candidates", "choose", "for_provider", "image_for", "lookup", "providers"]

# Normalized names, smallest first; the order `cloudtrain gpus` prints.
GPUS = ("t4", "l4", "a10g", "a10", "v100", "a100", "a100-80gb", "h100", "l40s")
_ALIASES = {"a100-40gb": "a100", "a100_80gb": "a100-80gb", "a100-80g": "a100-80gb", "h100-80gb": "h100"}
# A guard against typos such as --nodes 100; large clusters need quota planning anyway.
MAX_NODES = 16


@dataclass(frozen=True)
class Choice:
    """A validated placement: the catalog row, the image, and where it goes."""

    offer: Offer
    image: Image
    region: str
    zone: str | None  # AWS: an availability zone when asked; GCP: always; Azure: never

    @property
    def hourly(self) -> float | None:
        return self.offer.price_hour


def providers() -> tuple[str, ...]:
    return tuple(dict.fromkeys(o.provider for o in offers()))


def for_provider(provider: str | None = None) -> list[Offer]:
    rows = [o for o in offers() if provider in (None, o.provider)]
    if provider is not None and not rows:
        raise BadInput(f"no catalog for provider {provider!r}", f"choose one of {', '.join(providers())}")
    return sorted(rows, key=lambda o: (providers().index(o.provider), GPUS.index(o.gpu), o.count))


def normalize(gpu: str) -> str:
    name = _ALIASES.get(gpu.strip().lower(), gpu.strip().lower())
    if name not in GPUS:
        raise BadInput(f"unknown GPU {gpu!r}", f"choose one of {', '.join(GPUS)}")
    return name


def lookup(provider: str, gpu: str, count: int = 1) -> Offer:
    name = normalize(gpu)
    rows = for_provider(provider)
    have = [g for g in GPUS if any(o.gpu == g for o in rows)]
    if name not in have:
        raise BadInput(f"{provider} does not offer GPU {name!r}", f"on {provider} choose one of {', '.join(have)}")
    counts = [o.count for o in rows if o.gpu == name]
    for o in rows:
        if o.gpu == name and o.count == count:
            return o
    listed = ", ".join(f"{name}:{c}" for c in counts)
    raise BadInput(f"{provider} offers no machine with {count} x {name}", f"choose one of {listed}")


def image_for(provider: str, image: str, gpu: str | None = None) -> Image:
    for im in images():
        if im.provider == provider and im.image == image:
            if gpu is not None and gpu in im.excludes:
                raise BadInput(
                    f"the {provider} '{image}' image does not support {gpu}",
                    "pass --image ubuntu (cloudtrain installs the driver)",
                )
            return im
    raise BadInput(f"no {image!r} image for {provider}", "pass --image dl or --image ubuntu")


class _Regions:
    """Locations are regions; an AWS-style zone is its region plus one letter."""

    zone_form = re.compile(r"^([a-z]{2}(?:-[a-z]+)+-\d+)([a-z])$")

    def __init__(self, zones: bool) -> None:
        self.zones = zones

    def place(self, offer: Offer, region: str | None, zone: str | None) -> tuple[str, str | None]:
        where = f"{offer.provider} {offer.instance_type}"
        if zone is not None:
            if not self.zones:
                raise BadInput(f"{offer.provider} takes no --zone", "pass --region only")
            m = self.zone_form.match(zone)
            if not m:
                raise BadInput(f"invalid --zone {zone!r}", "write an availability zone such as us-east-1a")
            if region is not None and m.group(1) != region:
                raise BadInput(f"--zone {zone} is not in --region {region}", f"pass a zone such as {region}a")
            region = m.group(1)
        if region is None:
            return offer.locations[0], zone
        if region not in offer.locations:
            raise BadInput(f"{where} is not offered in {region}", f"choose --region from {', '.join(offer.locations)}")
        return region, zone


class _Zones:
    """Locations are zones (GCP); a region is a zone without its last part."""

    def place(self, offer: Offer, region: str | None, zone: str | None) -> tuple[str, str | None]:
        where = f"{offer.provider} {offer.instance_type}" + (f" + {offer.accelerator}" if offer.accelerator else "")
        if zone is not None:
            if zone not in offer.locations:
                raise BadInput(f"{where} is not offered in zone {zone}", f"choose --zone from {', '.join(offer.locations)}")
            if region is not None and zone.rsplit("-", 1)[0] != region:
                raise BadInput(f"--zone {zone} is not in --region {region}", "pass a zone of that region, or --zone only")
            return zone.rsplit("-", 1)[0], zone
        if region is None:
            first = offer.locations[0]
            return first.rsplit("-", 1)[0], first
        in_region = [z for z in offer.locations if z.rsplit("-", 1)[0] == region]
        if not in_region:
            regions = sorted({z.rsplit("-", 1)[0] for z in offer.locations})
            raise BadInput(f"{where} is not offered in {region}", f"choose --region from {', '.join(regions)}")
        return region, in_region[0]


# How each cloud names locations: data, looked up by name, never branched on.
_SCHEMES = {"aws": _Regions(zones=True), "gcp": _Zones(), "azure": _Regions(zones=False)}


def choose(spec: ClusterSpec) -> Choice:
    """Validate every flag of a cloud spec against the catalog; pure (no I/O beyond package data)."""
    if spec.gpu is None:
        raise BadInput(f"--provider {spec.provider} needs --gpu", f"pass --gpu NAME[:COUNT], one of {', '.join(GPUS)}")
    if spec.nodes > MAX_NODES:
        raise BadInput(f"--nodes {spec.nodes} is more than cloudtrain's limit of {MAX_NODES}", f"pass --nodes 1 to {MAX_NODES}")
    if spec.ssh_cidr is not None:
        check_cidr(spec.ssh_cidr)
    offer = lookup(spec.provider, spec.gpu, spec.gpu_count)
    image = image_for(spec.provider, spec.image, offer.gpu)
    if spec.disk_gb < image.min_disk_gb:
        raise BadInput(
            f"--disk-gb {spec.disk_gb} is smaller than the {spec.provider} '{spec.image}' image ({image.min_disk_gb} GB)",
            f"pass --disk-gb {image.min_disk_gb} or more",
        )
    region, zone = _SCHEMES[spec.provider].place(offer, spec.region, spec.zone)
    return Choice(offer=offer, image=image, region=region, zone=zone)


def _region_of(provider: str, location: str) -> str:
    # GCP lists zones (region + "-x"); AWS and Azure list regions.
    return location.rsplit("-", 1)[0] if isinstance(_SCHEMES[provider], _Zones) else location


def candidates(spec: ClusterSpec) -> list[Choice]:
    """Every placement `up` may try, in order: `choose(spec)` first; then the offer's other
    locations in the same region; then, unless --region or --zone pins it, the other regions,
    cheapest first (spot price with --spot), ties by catalog order. A pinned zone is the only one.

    Pure, like `choose`: failover walks this list; pre-flight's live answer may skip entries.
    """
    first = choose(spec)
    if spec.zone is not None:
        return [first]
    offer, scheme = first.offer, _SCHEMES[spec.provider]
    by_region: dict[str, list[str]] = {}
    for loc in offer.locations:
        by_region.setdefault(_region_of(spec.provider, loc), []).append(loc)
    regions = [first.region] if spec.region is not None else list(by_region)
    out = [first]
    for region in regions:
        for loc in by_region.get(region, []):
            zone = loc if isinstance(scheme, _Zones) else None
            if (region, zone) != (first.region, first.zone) and not (zone is None and region == first.region):
                out.append(Choice(offer=offer, image=first.image, region=region, zone=zone))
    # Regions share one price per row today; a per-region price list sorts them here.
    return out
