"""metrics.png: one panel per numeric series of metrics.jsonl against its step/epoch key, titled
with the job id, drawn by real matplotlib (Agg); the data on the axes are the run's own."""

from __future__ import annotations

import json
import math
from pathlib import Path

from cloudtrain.jobs import plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_series(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _panels(fig) -> dict[str, tuple[list[float], list[float]]]:
    """{y label: (xs, ys)} of every panel's one line, as matplotlib holds them."""
    out = {}
    for ax in fig.axes:
        (line,) = ax.get_lines()
        out[ax.get_ylabel()] = ([float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()])
    return out


def test_each_numeric_series_is_a_panel_against_its_step_with_the_runs_own_values(tmp_path: Path) -> None:
    rows = [{"step": s, "loss": 1.0 / (s + 1), "acc": 0.1 * s, "phase": "train", "flag": True} for s in range(0, 50, 5)]
    rows.insert(3, {"step": 12, "lr": 0.01})  # a series only some rows carry
    rows.append({"note": "no step here", "loss": 99.0})  # no x: adds no point anywhere
    rows.append({"step": 60, "loss": float("nan")})  # non-finite: left out
    _write_series(tmp_path, rows)

    fig = plot.figure(json.loads("[" + ",".join((tmp_path / "metrics.jsonl").read_text().splitlines()) + "]"), "train-20261201-1-ab12")
    panels = _panels(fig)

    assert set(panels) == {"loss", "acc", "lr"}  # strings, booleans and the x key are not series
    steps = [float(s) for s in range(0, 50, 5)]
    assert panels["loss"] == (steps, [1.0 / (s + 1) for s in range(0, 50, 5)])
    assert panels["acc"] == (steps, [0.1 * s for s in range(0, 50, 5)])
    assert panels["lr"] == ([12.0], [0.01])
    assert fig._suptitle.get_text() == "train-20261201-1-ab12"
    assert fig.axes[-1].get_xlabel() == "step"


def test_save_writes_a_valid_png_of_the_folders_series(tmp_path: Path) -> None:
    _write_series(tmp_path, [{"epoch": e, "val_loss": math.exp(-e)} for e in range(1, 8)])

    path = plot.save(tmp_path, "job-x")

    assert path == tmp_path / "metrics.png"
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    from matplotlib.image import imread  # decodes the whole file: a truncated PNG fails here

    pixels = imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0  # something was drawn, not a blank canvas
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left

    x_label, found = plot.curves([{"epoch": e, "val_loss": math.exp(-e)} for e in range(1, 8)])
    assert x_label == "epoch" and found["val_loss"][0] == [float(e) for e in range(1, 8)]


def test_rows_without_a_step_are_placed_by_their_position(tmp_path: Path) -> None:
    x_label, found = plot.curves([{"loss": 3.0}, {"loss": 2.0}, {"other": "x"}, {"loss": 1.0}])
    assert x_label == "row"
    assert found == {"loss": ([0.0, 1.0, 3.0], [3.0, 2.0, 1.0])}


def test_no_series_means_no_png_and_no_error(tmp_path: Path) -> None:
    assert plot.save(tmp_path, "job") is None  # no metrics.jsonl at all
    _write_series(tmp_path, [{"step": 1, "phase": "warmup"}])
    (tmp_path / "metrics.jsonl").write_text((tmp_path / "metrics.jsonl").read_text() + "{not json\n")
    assert plot.save(tmp_path, "job") is None  # no numeric series, one damaged line
    assert not (tmp_path / "metrics.png").exists()


def test_many_series_are_capped_and_the_title_says_so(tmp_path: Path) -> None:
    rows = [{"step": s, **{f"m{i:02d}": float(i * s) for i in range(plot.MAX_PANELS + 5)}} for s in range(3)]
    fig = plot.figure(rows, "wide")
    assert len(fig.axes) == plot.MAX_PANELS
    assert fig._suptitle.get_text() == f"wide (first {plot.MAX_PANELS} of {plot.MAX_PANELS + 5} series)"
