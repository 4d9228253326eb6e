"""GPU catalog lookups: which machine carries `--gpu NAME:COUNT` on each cloud, where, for how much.

`choose(spec)` is the one validation every cloud `up` runs first. It reads only package data,
so a mistake gets the same answer (BadInput, exit 2, naming the valid choices) on a machine
with no credentials, no network and no Pulumi CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudtrain.catalog.data import Image, Offer, images, offers
from cloudtrain.catalog.places import SCHEMES, Zones, region_of, where
from cloudtrain.errors import BadInput
from cloudtrain.spec import ClusterSpec, check_cidr

__all__ = ["GPUS", "MAX_NODES", "Choice", "Image", "Offer", "candidates", "choose", "for_provider", "image_for", "lookup", "providers", "region_of"]

# Normalized names, smallest first; the order `cloudtrain gpus` prints.
GPUS = ("t4", "l4", "a10g", "a10", "l40s", "v100", "a100", "a100-80gb", "h100", "h200", "b200")
_ALIASES = {"a100-40gb": "a100", "a100_80gb": "a100-80gb", "a100-80g": "a100-80gb", "h100-80gb": "h100", "h200-141gb": "h200"}
# A guard against typos such as --nodes 100; large clusters need quota planning anyway.
MAX_NODES = 16


@dataclass(frozen=True)
class Choice:
    """A validated placement: the catalog row, the image, and where it goes."""

    offer: Offer
    image: Image
    region: str
    # AWS and GCP: the region's first offering zone unless --zone (None in an AWS region the
    # sources do not cover: pre-flight picks one live); Azure: never.
    zone: str | None

    @property
    def hourly(self) -> float | None:
        """On-demand $/h per node in this region; None where the sources give no price."""
        return self.offer.price_in(self.region)


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


def _restrict(offer: Offer, spec: ClusterSpec) -> None:
    """Apply the row's restriction (overrides.csv says why): spot only, or refused outright."""
    kind, why = offer.restriction_kind, offer.restriction_reason
    if not kind:
        return
    others = [o for o in for_provider(offer.provider) if o.gpu == offer.gpu and o.restriction_kind != kind]
    elsewhere = ", ".join(f"{o.gpu}:{o.count}" for o in others)
    if kind == "spot-only" and not spec.spot:
        hint = "pass --spot" + (f", or --gpu {elsewhere} on demand" if elsewhere else "")
        raise BadInput(f"{where(offer)} ({offer.gpu}:{offer.count}) is sold as spot only: {why}", hint)
    if kind == "refuse":
        hint = f"choose another --gpu ({elsewhere})" if elsewhere else "choose another --gpu or --provider"
        raise BadInput(f"{where(offer)} ({offer.gpu}:{offer.count}) is not supported: {why}", hint)


def choose(spec: ClusterSpec) -> Choice:
    """Validate every flag of a cloud spec against the catalog; pure (no I/O beyond package data)."""
    if spec.gpu is None:
        raise BadInput(f"--provider {spec.provider} needs --gpu", f"pass --gpu NAME[:COUNT], one of {', '.join(GPUS)}")
    if spec.nodes > MAX_NODES:
        raise BadInput(f"--nodes {spec.nodes} is more than cloudtrain's limit of {MAX_NODES}", f"pass --nodes 1 to {MAX_NODES}")
    if spec.ssh_cidr is not None:
        check_cidr(spec.ssh_cidr)
    offer = lookup(spec.provider, spec.gpu, spec.gpu_count)
    _restrict(offer, spec)
    image = image_for(spec.provider, spec.image, offer.gpu)
    if spec.disk_gb < image.min_disk_gb:
        raise BadInput(
            f"--disk-gb {spec.disk_gb} is smaller than the {spec.provider} '{spec.image}' image ({image.min_disk_gb} GB)",
            f"pass --disk-gb {image.min_disk_gb} or more",
        )
    region, zone = SCHEMES[spec.provider].place(offer, spec.region, spec.zone)
    return Choice(offer=offer, image=image, region=region, zone=zone)


def candidates(spec: ClusterSpec) -> list[Choice]:
    """Every placement `up` may try, in order: `choose(spec)` first; then the other zones of
    that region; then, unless --region or --zone pins it, the other regions, cheapest first
    (spot price with --spot; a region without a price last), ties by catalog order. A pinned
    zone is the only one.

    Pure, like `choose`: failover walks this list; pre-flight's live answer may skip entries.
    """
    first = choose(spec)
    if spec.zone is not None:
        return [first]
    offer, scheme = first.offer, SCHEMES[spec.provider]
    by_region: dict[str, list[str]] = {}
    for loc in offer.locations:
        by_region.setdefault(scheme.region_of(loc), []).append(loc)
    others = [r for r in by_region if r != first.region] if spec.region is None else []

    def cost(region: str) -> tuple[bool, float]:
        price = offer.price_in(region, spot=spec.spot)
        return (price is None, price or 0.0)

    out = [first]
    for region in [first.region, *sorted(others, key=cost)]:
        zones = by_region.get(region, [first.zone]) if isinstance(scheme, Zones) else [None]
        for zone in zones:
            if (region, zone) != (first.region, first.zone):
                out.append(Choice(offer=offer, image=first.image, region=region, zone=zone))
    return out
