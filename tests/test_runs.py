"""`cloudtrain runs [--json]` and `runs show JOB` over real runs on a real local cluster, and the
metrics.png each run with curves brings home: listed from any folder, damaged files skipped
with a note, unknown ids answered with the close ones, and no SSH or cloud code loaded."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import local_cluster, one_line_error
from test_startup import PROBE

from cloudtrain.jobs import plot

ROWS = [{"step": s, "loss": round(2.0 / (s + 1), 6), "acc": round(0.1 * s, 6)} for s in range(0, 9)]

CURVES = textwrap.dedent(
    f"""
    import json, os
    out = os.environ["CLOUDTRAIN_OUTPUT_DIR"]
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        for row in {ROWS!r}:
            f.write(json.dumps(row) + "\\n")
    json.dump({{"acc": 0.8, "loss": 0.2}}, open(os.path.join(out, "metrics.json"), "w"))
    print("trained", flush=True)
    """
)

FAILS = "import sys\nprint('no curves here')\nsys.exit(3)\n"


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory):
    """A one-node cluster and two finished runs: one with curves (exit 0), one failing without."""
    with local_cluster(tmp_path_factory, "runs") as (cli, _):
        work = cli.cwd
        ids = {}
        for name, text, code in (("curves.py", CURVES, 0), ("fails.py", FAILS, 3)):
            (work / name).write_text(text)
            proc = cli("run", str(work / name), timeout=300)
            assert proc.returncode == code, proc.stderr
            ids[name] = re.search(r"job (\S+) started", proc.stderr).group(1)  # type: ignore[union-attr]
        yield cli, ids


def test_runs_lists_each_run_with_its_outcome_metrics_cost_and_folder_from_any_folder(ran, tmp_path: Path) -> None:
    cli, ids = ran
    proc = cli("runs", "--json", cwd=tmp_path)  # not the folder the runs were started from
    assert proc.returncode == 0, proc.stderr
    listed = {r["job_id"]: r for r in json.loads(proc.stdout)}
    good, bad = listed[ids["curves.py"]], listed[ids["fails.py"]]
    assert good["status"] == "succeeded" and good["exit_code"] == 0
    assert bad["status"] == "failed" and bad["exit_code"] == 3
    assert good["cluster"] == "local" and good["script"] == "curves.py"
    assert good["folder"] == str(cli.cwd / "runs" / ids["curves.py"])  # where `run` put it: ./runs under its cwd
    assert good["metrics"] == {"acc": 0.8, "loss": 0.2}  # the job's final summary
    assert bad["metrics"] == {}
    assert good["duration_s"] is not None and good["duration_s"] >= 0
    assert good["price_per_hour"] == 0 and good["cost"] == 0  # a local cluster bills nothing
    assert good["outputs_home"] is True

    table = cli("runs", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["JOB", "CLUSTER", "SCRIPT", "STATUS"]
    row = next(line for line in lines if line.startswith(ids["curves.py"]))
    assert "succeeded" in row and "acc=0.8 loss=0.2" in row and "free" in row and row.endswith(good["folder"])


def test_metrics_png_is_drawn_from_the_runs_own_series(ran) -> None:
    cli, ids = ran
    out = cli.cwd / "runs" / ids["curves.py"]
    png = (out / "metrics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    assert imread(out / "metrics.png").shape[0] > 100  # decodes whole
    # The figure for the script's own rows (what it wrote, not what came home), drawn again:
    # the file holds exactly that picture, so its panels plot exactly these series.
    fig = plot.figure(ROWS, ids["curves.py"])
    panels = {ax.get_ylabel(): [list(ax.get_lines()[0].get_xdata()), list(ax.get_lines()[0].get_ydata())] for ax in fig.axes}
    assert panels == {"loss": [[r["step"] for r in ROWS], [r["loss"] for r in ROWS]], "acc": [[r["step"] for r in ROWS], [r["acc"] for r in ROWS]]}
    assert fig._suptitle.get_text() == ids["curves.py"]
    again = io.BytesIO()
    fig.savefig(again, format="png", dpi=100)
    assert again.getvalue() == png
    run = json.loads((out / "run.json").read_text())
    assert run["metrics_png"] is True and run["status"] == "succeeded"
    # No curves: no picture and no complaint.
    failed = cli.cwd / "runs" / ids["fails.py"]
    assert not (failed / "metrics.png").exists()
    assert json.loads((failed / "run.json").read_text())["metrics_png"] is False


def test_runs_show_prints_the_whole_record_and_accepts_the_start_of_an_id(ran) -> None:
    cli, ids = ran
    job = ids["curves.py"]
    proc = cli("runs", "show", job[:-3])
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert f"job       {job}" in text and "status    succeeded, exit 0" in text
    assert re.search(r"^  loss +[▁▂▃▄▅▆▇█]+  2 -> 0\.2222$", text, re.M)  # the terminal curve stays
    assert f"curves    {cli.cwd / 'runs' / job / 'metrics.png'}" in text
    assert re.search(r"^ +\d+  metrics\.jsonl$", text, re.M) and re.search(r"^ +\d+  log\.txt$", text, re.M)
    shown = json.loads(cli("runs", "show", job, "--json").stdout)
    assert shown["run_json"]["job_id"] == job and shown["record"]["exit_code"] == 0
    assert set(shown["outputs"]) >= {"metrics.jsonl", "metrics.json", "log.txt"}


def test_runs_show_of_an_unknown_id_is_exit_2_naming_the_close_ones(ran) -> None:
    cli, ids = ran
    typo = ids["fails.py"].replace("fails", "fail")
    proc = cli("runs", "show", typo)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert line.startswith(f"cloudtrain: error: unknown job {typo!r}") and ids["fails.py"] in line


def test_damaged_and_partial_run_files_are_skipped_with_a_note_never_a_traceback(ran) -> None:
    cli, ids = ran
    runs = cli.cwd / "runs"
    run_json = runs / ids["fails.py"] / "run.json"
    kept = run_json.read_text()
    job_record = cli.home / "jobs" / f"{ids['curves.py']}.json"
    kept_record = job_record.read_bytes()
    strangers = [runs / "cut-off", runs / "partial"]
    try:
        run_json.write_text(kept[: len(kept) // 2])  # cut off mid-write
        for folder in strangers:
            folder.mkdir()
        (runs / "cut-off" / "run.json").write_text('{"job_id": "x", ')
        (runs / "partial" / "run.json").write_text(json.dumps({"job_id": "other-20260101-000000-beef", "exit_code": "7"}))
        job_record.write_text("[]")  # a job record that is not one

        proc = cli("runs", "--json")

        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        listed = {r["job_id"]: r for r in json.loads(proc.stdout)}
        assert f"skipping job {ids['curves.py']}" in proc.stderr  # its record; its folder's run.json still lists it
        assert listed[ids["curves.py"]]["note"] == "its record in this cloudtrain home is damaged; listed from its run.json"
        assert listed[ids["curves.py"]]["status"] == "succeeded" and listed[ids["curves.py"]]["metrics"] == {"acc": 0.8, "loss": 0.2}
        assert "run.json is damaged" in listed[ids["fails.py"]]["note"]  # still listed, from its record
        assert listed[ids["fails.py"]]["status"] == "failed" and listed[ids["fails.py"]]["exit_code"] == 3
        assert f"skipping {runs / 'cut-off'}" in proc.stderr and "x" not in listed
        other = listed["other-20260101-000000-beef"]  # another home's run: what its file says, no more
        assert other["exit_code"] is None and other["cluster"] == "?" and other["note"] == "not in this cloudtrain home"
        assert cli("runs").returncode == 0
    finally:
        run_json.write_text(kept)
        job_record.write_bytes(kept_record)
        for folder in strangers:
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()


def test_runs_loads_no_ssh_or_cloud_code(ran) -> None:
    cli, _ = ran
    for args in (["runs"], ["runs", "--json"], ["runs", "show", next(iter(_.values()))]):
        env = {**os.environ, "CLOUDTRAIN_HOME": str(cli.home)}
        proc = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, cwd=cli.cwd, capture_output=True, text=True, timeout=60)
        loaded = json.loads(proc.stderr.strip().splitlines()[-1])
        assert loaded == [], f"`cloudtrain {' '.join(args)}` loaded {loaded}"


def test_a_jobs_own_metrics_png_is_kept_beside_the_one_cloudtrain_draws(ran) -> None:
    cli, _ = ran
    script = cli.cwd / "own_png.py"
    script.write_text(
        "import json, os\nout = os.environ['CLOUDTRAIN_OUTPUT_DIR']\n"
        "open(os.path.join(out, 'metrics.png'), 'wb').write(b'the job drew this')\n"
        "open(os.path.join(out, 'metrics.jsonl'), 'w').write(json.dumps({'epoch': 1, 'loss': 1.0}) + '\\n' + json.dumps({'epoch': 2, 'loss': 0.5}) + '\\n')\n"
    )
    proc = cli("run", str(script), timeout=300)
    assert proc.returncode == 0, proc.stderr
    job = re.search(r"job (\S+) started", proc.stderr).group(1)  # type: ignore[union-attr]
    out = cli.cwd / "runs" / job
    assert (out / "metrics.from-job.png").read_bytes() == b"the job drew this"
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "kept as metrics.from-job.png" in proc.stderr
