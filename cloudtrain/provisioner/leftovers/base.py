"""What a cloud's leftover finder returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The region of kinds that no region holds (IAM roles, service accounts, role definitions): a
# sweep of this region looks for those alone, so `down --cluster` finds them when nothing else is left.
GLOBAL = "global"


@dataclass(frozen=True)
class Leftover:
    kind: str  # "instance", "vpc", ...
    id: str
    region: str
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def line(self) -> str:
        return f"{self.kind} {self.id} in {self.region}"


@dataclass(frozen=True)
class Tagged:
    """A billing resource found by its `cloudtrain-cluster` tag alone (any value): `status --cloud`."""

    cloud: str
    kind: str  # instance, volume, elastic-ip, disk, resource-group
    id: str
    where: str  # region or zone
    state: str
    cluster: str  # the tag's value
    bills: str  # what it costs while it exists
    region: str = ""  # the region its cluster's sweep looks in (a zone's region on GCP)
    machine: str = ""  # instance type / machine type / VM size, to price it by the catalog
