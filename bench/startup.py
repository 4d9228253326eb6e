#!/usr/bin/env python3
"""How long `cloudtrain --help` and `cloudtrain status` take to start, against typer itself,
measured in the same run (issue 9's goal: at most 2.0x `python -c "import typer"`).

    .venv/bin/python bench/startup.py [--runs 15] [--json FILE]

Three baselines: `python -c "import typer"` (the goal's), a one-command typer app that runs
(what any typer CLI pays before its own code: typer builds its click command and loads
pydantic there), and `python -c pass`. Each timing is the median of N fresh processes, with an
empty cloudtrain home, so nothing but start-up is measured. Ratios, not pass/fail: these
machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
CLI = [PY, "-m", "cloudtrain.cli"]
TYPER_APP = "import typer; app = typer.Typer(); app.command()(lambda: None); app([], standalone_mode=False)"


def compile_package() -> None:
    """Byte-compile cloudtrain as an install does (its __pycache__ is git-ignored): with
    PYTHONDONTWRITEBYTECODE set, an editable checkout would otherwise compile every module on
    every start, which no installed cloudtrain does, and typer beside it is compiled."""
    import compileall

    import cloudtrain

    compileall.compile_dir(str(Path(cloudtrain.__file__).parent), quiet=1)


def median_seconds(argv: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    compile_package()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "CLOUDTRAIN_HOME": home}
        cases = {
            "python -c pass": [PY, "-c", "pass"],
            'python -c "import typer"': [PY, "-c", "import typer"],
            "a one-command typer app": [PY, "-c", TYPER_APP],
            "cloudtrain --help": [*CLI, "--help"],
            "cloudtrain status": [*CLI, "status"],
        }
        seconds = {name: median_seconds(argv, args.runs, env) for name, argv in cases.items()}
    base = seconds['python -c "import typer"']
    print(f"{'command':<28} {'median s':>9} {'x import typer':>15}")
    for name, value in seconds.items():
        print(f"{name:<28} {value:>9.3f} {value / base:>15.2f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "seconds": seconds, "ratio_to_import_typer": {k: v / base for k, v in seconds.items()}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
