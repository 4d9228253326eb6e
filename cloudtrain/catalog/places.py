"""Where a catalog row may go: each cloud's way of naming regions and zones, and `place()`,
which turns --region/--zone into a (region, zone) or refuses with the places that work.

The catalog refuses only what its sources say: a region they cover but do not list for the
machine is refused, naming where it is offered; a region they do not cover at all (Azure's
source is US-only; a region newer than the sources) is left to pre-flight's live answer.
"""

from __future__ import annotations

import re

from cloudtrain.catalog.data import Offer, covered
from cloudtrain.errors import BadInput

_AWS_ZONE = re.compile(r"^([a-z]{2}(?:-[a-z]+)+-\d+)([a-z])$")


def where(offer: Offer) -> str:
    return f"{offer.provider} {offer.instance_type}" + (f" + {offer.accelerator}" if offer.accelerator else "")


class Regions:
    """Locations are regions (Azure): no zones."""

    region_form = re.compile(r"^[a-z][a-z0-9]+$")

    def region_of(self, location: str) -> str:
        return location

    def place(self, offer: Offer, region: str | None, zone: str | None) -> tuple[str, str | None]:
        if zone is not None:
            raise BadInput(f"{offer.provider} takes no --zone", "pass --region only")
        if region is None:
            return offer.locations[0], None
        if region not in offer.locations:
            _refuse_or_unknown(offer, region, offer.locations, self.region_form, "eastus2")
        return region, None


class Zones:
    """Locations are zones; a region is a zone less its last part (GCP `us-east4-a`) or its
    letter (AWS `us-east-1a`). Without --zone the region's first listed zone is chosen."""

    def __init__(self, zone_form: re.Pattern[str], region_form: re.Pattern[str], example: str, names_are_per_account: bool) -> None:
        self.zone_form, self.region_form, self.example = zone_form, region_form, example
        # AWS maps zone names to physical zones per account: the sources' zone list is one
        # account's, so a zone of an offered region is left to pre-flight's live answer.
        self.names_are_per_account = names_are_per_account

    def region_of(self, location: str) -> str:
        m = self.zone_form.match(location)
        return m.group(1) if m else location

    def place(self, offer: Offer, region: str | None, zone: str | None) -> tuple[str, str | None]:
        regions = sorted(dict.fromkeys(self.region_of(z) for z in offer.locations))
        if zone is not None:
            if not self.zone_form.match(zone):
                raise BadInput(f"invalid --zone {zone!r}", f"write a zone such as {self.example}")
            zr = self.region_of(zone)
            if region is not None and zr != region:
                raise BadInput(f"--zone {zone} is not in --region {region}", "pass a zone of that region, or --zone only")
            known = zr not in covered(offer.provider) or (self.names_are_per_account and zr in regions)
            if zone not in offer.locations and not known:
                here = [z for z in offer.locations if self.region_of(z) == zr] or offer.locations
                raise BadInput(f"{where(offer)} is not offered in zone {zone}", f"choose --zone from {', '.join(here)}")
            return zr, zone
        if region is None:
            first = offer.locations[0]
            return self.region_of(first), first
        in_region = [z for z in offer.locations if self.region_of(z) == region]
        if in_region:
            return region, in_region[0]
        _refuse_or_unknown(offer, region, regions, self.region_form, self.region_of(self.example))
        if not self.names_are_per_account:
            # GCP places a VM in a zone: without data for the region, the user names it.
            raise BadInput(f"the catalog has no zones of {region} for {where(offer)}", f"pass --zone {region}-a (or another zone of {region})")
        return region, None  # AWS: pre-flight picks a zone that offers the type, live


def _refuse_or_unknown(offer: Offer, region: str, offered: list[str] | tuple[str, ...], form: re.Pattern[str], example: str) -> None:
    """Refuse a region the sources cover but do not offer the machine in; let an uncovered one by."""
    if not form.match(region):
        raise BadInput(f"invalid --region {region!r}", f"write a region such as {example}")
    if region in covered(offer.provider):
        raise BadInput(f"{where(offer)} is not offered in {region}", f"choose --region from {', '.join(offered)}")


# How each cloud names locations: data, looked up by name, never branched on.
SCHEMES: dict[str, Regions | Zones] = {
    "aws": Zones(_AWS_ZONE, re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d+$"), "us-east-1a", names_are_per_account=True),
    "gcp": Zones(re.compile(r"^([a-z]+-[a-z]+\d+)-([a-z])$"), re.compile(r"^[a-z]+-[a-z]+\d+$"), "us-central1-a", names_are_per_account=False),
    "azure": Regions(),
}


def region_of(provider: str, location: str) -> str:
    """The region of a catalog location: itself (Azure), or the zone's region (AWS, GCP)."""
    return SCHEMES[provider].region_of(location)
