"""Version arithmetic for driver and CUDA strings ("580.65.06", "12.9")."""

from __future__ import annotations

import re


def key(version: str) -> tuple[int, ...]:
    """'580.65.06' -> (580, 65, 6); a local tag ('2.9.0+cu129') and suffixes are ignored."""
    base = version.split("+", 1)[0]
    return tuple(int(p) for p in re.findall(r"\d+", base)[:4])


def at_least(version: str, minimum: str) -> bool:
    return key(version) >= key(minimum)


def major(version: str) -> str:
    return version.split(".", 1)[0]


def series(version: str) -> str:
    """'2.9.1' -> '2.9'; '0.10.2' -> '0.10': the release row a pinned version belongs to."""
    parts = version.split("+", 1)[0].split(".")
    return ".".join(parts[:2])


def base(version: str) -> str:
    """'2.9.0+cu129' -> '2.9.0'."""
    return version.split("+", 1)[0]


def local_tag(version: str) -> str | None:
    """'2.9.0+cu129' -> 'cu129'; None without a tag."""
    return version.split("+", 1)[1] if "+" in version else None
