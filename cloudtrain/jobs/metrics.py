"""Reading what a script reports: metrics.json (final summary) and metrics.jsonl (per step/epoch)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

_BARS = "▁▂▃▄▅▆▇█"


def read(output: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, series); missing or damaged files read as empty rather than failing the run."""
    summary: dict[str, Any] = {}
    series: list[dict[str, Any]] = []
    try:
        loaded = json.loads((output / "metrics.json").read_text())
        summary = loaded if isinstance(loaded, dict) else {}
    except (OSError, json.JSONDecodeError):
        pass
    try:
        for line in (output / "metrics.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                series.append(row)
    except OSError:
        pass
    return summary, series


def sparkline(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = hi - lo or 1.0
    return "".join(_BARS[min(len(_BARS) - 1, int((v - lo) / span * (len(_BARS) - 1) + 0.5))] if math.isfinite(v) else " " for v in values)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def render(summary: dict[str, Any], series: list[dict[str, Any]]) -> list[str]:
    """Lines for the terminal: the summary's numbers, then one curve per numeric series."""
    lines = []
    if summary:
        parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items() if _numeric(v) or isinstance(v, str)]
        lines.append("metrics: " + ", ".join(parts))
    keys = [k for k in (series[0] if series else {}) if k not in ("epoch", "step") and _numeric(series[0][k])]
    for key in keys:
        values = [float(row[key]) for row in series if _numeric(row.get(key))]
        if len(values) >= 2:
            lines.append(f"  {key:<16} {sparkline(values)}  {values[0]:.4g} -> {values[-1]:.4g}")
    return lines
