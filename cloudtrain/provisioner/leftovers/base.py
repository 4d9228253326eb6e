"""What a cloud's leftover finder returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Leftover:
    kind: str  # "instance", "vpc", ...
    id: str
    region: str
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def line(self) -> str:
        return f"{self.kind} {self.id} in {self.region}"
