"""`cloudtrain runs [--json]` and `cloudtrain runs show JOB`: past runs, read from files only
(no node is reached, no SSH or cloud code loads; a cloud run's price reads the catalog)."""

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer

from cloudtrain.cli import completion
from cloudtrain.cli.app import app
from cloudtrain.cli.options import say
from cloudtrain.errors import CloudtrainError
from cloudtrain.jobs import history
from cloudtrain.state import Store

runs_app = typer.Typer(
    help="Past runs: id, cluster, script, status, exit code, duration, cost, final metrics, folder.",
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(runs_app, name="runs")


def _pricer() -> history.Price:
    """A cluster spec's $/h, asked of its provisioner once per distinct spec."""
    cache: dict[str, float | None] = {}

    def price(spec: dict[str, Any]) -> float | None:
        key = json.dumps(spec, sort_keys=True, default=str)
        if key not in cache:
            from cloudtrain import provisioner
            from cloudtrain.spec import ClusterSpec

            try:
                parsed = ClusterSpec.from_dict(spec)
                cache[key] = provisioner.get(parsed.provider).hourly_price(parsed)
            except (CloudtrainError, KeyError, TypeError, ValueError, AttributeError):  # an old or edited spec
                cache[key] = None
        return cache[key]

    return price


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def _cost(r: history.Run) -> str:
    if r.price_per_hour is None:
        return "?"
    if r.price_per_hour == 0:
        return "free"
    return "-" if r.cost is None else f"${r.cost:.2f}"


def _metrics(values: dict[str, Any], width: int = 40) -> str:
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    text = " ".join(parts) or "-"
    return text if len(text) <= width else text[: width - 1] + "…"


def _owed(r: history.Run) -> bool:
    """Ended, but its outputs are not home yet (`logs JOB -f` or `down` brings them)."""
    return not r.outputs_home and r.status not in ("starting", "running", "abandoned")


@runs_app.callback()
def runs(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="One JSON list, for scripts.")) -> None:
    """List past runs, oldest first; `cloudtrain runs show JOB` shows one whole.

    Example: cloudtrain runs --json
    """
    if ctx.invoked_subcommand is not None:
        return
    found = history.runs(Store(), Path.cwd(), _pricer(), warn=say)
    if as_json:
        print(json.dumps([r.to_dict() for r in found], indent=2))
        return
    if not found:
        print("no runs")
        return
    rows = [
        (r.job_id, r.cluster, r.script, r.status + (", owed" if _owed(r) else ""), "-" if r.exit_code is None else str(r.exit_code), _duration(r.duration_s), _cost(r), _metrics(r.metrics), r.folder)
        for r in found
    ]
    head = ("JOB", "CLUSTER", "SCRIPT", "STATUS", "EXIT", "TIME", "COST", "METRICS", "FOLDER")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head) - 1)]
    for row in [head, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])


@runs_app.command("show")
def show(
    job: str = typer.Argument(..., help="Job id, or the start of one (see `cloudtrain runs`).", autocompletion=completion.job_ids),
    as_json: bool = typer.Option(False, "--json", help="The record, run.json and outputs as one JSON object."),
) -> None:
    """Everything about one run: its record, run.json, outputs and metrics.

    Example: cloudtrain runs show mnist-20261129-101500-ab12
    """
    store = Store()
    record = history.find(store, job)
    shown = history.show(store, record, _pricer(), warn=say)
    if as_json:
        print(json.dumps(shown, indent=2, default=str))
        return
    r = shown["run"]
    print(f"job       {r['job_id']}")
    print(f"cluster   {r['cluster']}")
    print(f"script    {r['script']} {' '.join(record.args)}".rstrip())
    print(f"status    {r['status']}" + ("" if r["exit_code"] is None else f", exit {r['exit_code']}"))
    if r["submitted_at"]:
        print(f"submitted {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['submitted_at']))}")
    print(f"time      {_duration(r['duration_s'])}")
    print(f"cost      {_cost(history.Run(**r))}" + ("" if not r["price_per_hour"] else f" at ${r['price_per_hour']:.2f}/h"))
    print(f"folder    {r['folder']}")
    if r["note"]:
        print(f"note      {r['note']}")
    for line in shown["metrics_lines"]:
        print(line)
    if shown["metrics_png"]:
        print(f"curves    {shown['metrics_png']}")
    outputs = shown["outputs"]
    if outputs is None:
        print("outputs   not home yet" + ("" if r["status"] in ("abandoned",) else f"; `cloudtrain logs {r['job_id']} -f` brings them"))
    else:
        print(f"outputs   {len(outputs)} file(s), sha256 verified:")
        for name, size in sorted(outputs.items()):
            print(f"  {size:>12}  {name}")
    if shown["run_json"] is not None:
        print(f"run.json  {Path(r['folder']) / 'run.json'}")
