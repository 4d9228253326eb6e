"""A bootstrap step: one named piece of making a node ready, decided from the node's facts.

Steps are planned from facts (`probe`), then applied in order over a `Remote`. Each applied
step is recorded on the node with its fingerprint, so a second bootstrap of the same node
with the same plan runs nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Callable, Optional

from cloudtrain.errors import CloudtrainError


@dataclass(frozen=True)
class Step:
    name: str  # stable id, e.g. "venv", "framework", "nvidia-driver"
    summary: str  # what it does, for the plan: "install torch==2.13.0 (CPU build)"
    script: str = ""  # bash run on the node (with `set -euo pipefail`); "" when not needed
    skip_reason: str | None = None  # e.g. "not needed: no NVIDIA GPU"; then nothing runs
    env: dict[str, str] = field(default_factory=dict)  # exported before `script`
    reboot_after: bool = False  # the node must reboot before the next step; apply reconnects
    sudo: bool = False  # run as root (via sudo when the SSH user is not root)
    # Reads a failed step's whole log and names what is broken (e.g. which GPU layer);
    # None, or returning None, gives the generic "step failed" error with the log's tail.
    explain: Optional[Callable[[str, str], Optional[CloudtrainError]]] = field(default=None, compare=False)

    @property
    def needed(self) -> bool:
        return self.skip_reason is None

    @property
    def fingerprint(self) -> str:
        """Changes whenever what the step would do changes, so a new plan reruns it."""
        h = hashlib.sha256()
        for part in (self.name, self.script, repr(sorted(self.env.items())), str(self.sudo)):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()[:16]

    def plan_line(self) -> str:
        return f"{self.name}: {self.summary}" if self.needed else f"{self.name}: {self.skip_reason}"


@lru_cache(maxsize=None)
def _text(name: str) -> str:
    return resources.files("cloudtrain.bootstrap").joinpath(f"scripts/{name}.sh").read_text()


def script(name: str) -> str:
    """A packaged step's full bash text (bootstrap/scripts/NAME.sh): the shared helpers of
    common.sh, then the step's own script."""
    return _text("common") + "\n" + _text(name)
