"""metrics.png: a run's curves as a picture, one panel per numeric series of metrics.jsonl
against its step (or epoch) key, titled with the job id.

matplotlib loads only here, and only for a run with a series to draw; it draws with the Agg
canvas directly (no pyplot), so no display, backend choice or global figure state is involved.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudtrain.jobs import metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

X_KEYS = ("step", "epoch")  # the first one a row carries is its position on the x axis
MAX_PANELS = 20  # a figure past this is too tall to read (and Agg caps a side at 2**16 px)
FILE = "metrics.png"

Curves = dict[str, tuple[list[float], list[float]]]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def curves(series: list[dict[str, Any]]) -> tuple[str, Curves]:
    """(x label, {name: (xs, ys)}) for every numeric series, in the order keys first appear.

    x is the rows' step key (else epoch, else the row's position); a row without a number for
    a series (or for x) adds no point to it; non-finite values are left out, not drawn as gaps."""
    x_key = next((k for k in X_KEYS if any(_number(row.get(k)) for row in series)), None)
    found: Curves = {}
    for i, row in enumerate(series):
        x = row.get(x_key) if x_key else i
        if not _number(x) or not math.isfinite(x):
            continue
        for key, value in row.items():
            if key in X_KEYS or not _number(value) or not math.isfinite(value):
                continue
            xs, ys = found.setdefault(key, ([], []))
            xs.append(float(x))
            ys.append(float(value))
    return x_key or "row", found


def figure(series: list[dict[str, Any]], job_id: str) -> "Figure | None":
    """The figure for these rows, or None when there is no numeric series to draw."""
    x_label, found = curves(series)
    if not found:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = list(found.items())[:MAX_PANELS]
    fig = Figure(figsize=(7.0, 1.2 + 2.0 * len(shown)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(shown), 1, squeeze=False, sharex=True)[:, 0]
    for ax, (name, (xs, ys)) in zip(axes, shown):
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None, linewidth=1.2)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel(x_label)
    more = f" (first {MAX_PANELS} of {len(found)} series)" if len(found) > MAX_PANELS else ""
    fig.suptitle(f"{job_id}{more}")
    return fig


def save(output: Path, job_id: str) -> Path | None:
    """Draw `output`/metrics.jsonl into `output`/metrics.png; None (and no file) without a series.

    Written then renamed, so a failure leaves no half-written picture."""
    _, series = metrics.read(output)
    fig = figure(series, job_id)
    if fig is None:
        return None
    path = output / FILE
    tmp = output / f".{FILE}.tmp"
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
