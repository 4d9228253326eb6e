#!/usr/bin/env python3
"""The framework install with uv against pip, on the local provider (issue 11 item 9).

    .venv/bin/python bench/install.py [--runs 3] [--requirement torch==2.13.0] [--json FILE]

Brings up a one-node local cluster (framework none) in a temporary CLOUDTRAIN_HOME, then runs
bootstrap's own framework step script (plan.py, with the CPU torch index, as a CPU node gets
it) over SSH into a fresh venv each time, three ways:

    pip       CLOUDTRAIN_INSTALLER=pip: the pip path
    uv-cold   uv with an empty cache (what a new node pays)
    uv-warm   uv with the cache the earlier runs filled (a re-install on the same node)

The wheels come from this machine's pip configuration (its local mirror), which the local
provider hands to the node; uv gets the same sources through the translation in uv.py.
Each row is the median of N runs; the ratio is pip / uv. uv itself is had once, before the
timed runs. Not a test: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cloudtrain.bootstrap.gpu import TORCH_CPU_INDEX, Install
from cloudtrain.bootstrap.plan import _framework
from cloudtrain.layout import NodePaths
from cloudtrain.remote import SshRemote
from cloudtrain.state import Store

CLI = [sys.executable, "-m", "cloudtrain.cli"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requirement", default="torch==2.13.0")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    script = _framework(Install((args.requirement,), index_url=TORCH_CPU_INDEX)).script
    with tempfile.TemporaryDirectory(prefix="ct-bench-install-") as tmp:
        env = {**os.environ, "CLOUDTRAIN_HOME": str(Path(tmp) / "home")}
        subprocess.run([*CLI, "up", "--provider", "local", "--framework", "none", "--name", "bench"], env=env, check=True, cwd=tmp)
        try:
            cdir = Store(Path(tmp) / "home").resolve("bench")
            cluster = cdir.load().cluster
            assert cluster is not None
            with SshRemote(cluster.nodes[0], cdir.identity_file) as remote:
                figures = _measure(remote, script, args.runs)
        finally:
            subprocess.run([*CLI, "down", "--cluster", "bench"], env=env, check=True, cwd=tmp)
    pip_s = figures["pip"]
    print(f"{'installer':<10} {'median s':>9}  runs")
    for name, runs in figures["runs"].items():
        print(f"{name:<10} {statistics.median(runs):9.1f}  {', '.join(f'{r:.1f}' for r in runs)}")
    for name in ("uv-cold", "uv-warm"):
        print(f"pip / {name}: {pip_s / figures[name]:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"requirement": args.requirement, "date": time.strftime("%Y-%m-%d"), **figures}, indent=2) + "\n")
    return 0


def _measure(remote: SshRemote, script: str, runs: int) -> dict:
    paths = NodePaths.of(remote)
    q = shlex.quote
    fresh = f"rm -rf {q(paths.venv)} && python3 -m venv {q(paths.venv)}"
    step = f"{paths.root}/bench-framework.sh"
    remote.write_text(step, "set -euo pipefail\n" + script, mode=0o700)
    base = {**paths.env()}
    # uv had once (PATH, an earlier copy, or pip install uv), outside the timings.
    remote.run(fresh)
    remote.run(f"bash {q(step)}", env={**base, "CLOUDTRAIN_INSTALLER": "uv"})
    cache = f"{paths.root}/bench-uv-cache"
    timings: dict[str, list[float]] = {"pip": [], "uv-cold": [], "uv-warm": []}
    for _ in range(runs):
        for name, extra, prep in (
            ("pip", {"CLOUDTRAIN_INSTALLER": "pip"}, ""),
            ("uv-cold", {"CLOUDTRAIN_INSTALLER": "uv", "UV_CACHE_DIR": cache}, f"rm -rf {q(cache)}"),
            ("uv-warm", {"CLOUDTRAIN_INSTALLER": "uv", "UV_CACHE_DIR": cache}, ""),
        ):
            remote.run(fresh + (f" && {prep}" if prep else ""))
            started = time.perf_counter()
            out = remote.run(f"bash {q(step)}", env={**base, **extra}, timeout=1800).stdout
            timings[name].append(time.perf_counter() - started)
            print(f"{name}: {timings[name][-1]:.1f}s ({out.strip().splitlines()[0]})", file=sys.stderr, flush=True)
    return {"runs": timings, **{name: statistics.median(t) for name, t in timings.items()}}


if __name__ == "__main__":
    sys.exit(main())
