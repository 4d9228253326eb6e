#!/usr/bin/env python3
"""What `cloudtrain runs` and metrics.png cost: `runs` over N past runs against `status` and
`--help` (issue 14: `runs` must stay fast, files only), and drawing metrics.png for a series of
S steps x 4 metrics in a fresh process (what collect adds to a run that reports curves).

    .venv/bin/python bench/runs.py [--runs 200] [--steps 1000] [--repeat 5]

Each timing is the median of --repeat fresh processes in a temporary home. Figures, not
pass/fail: these machines are shared and noisy.
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


def _median(cmd: list[str], env: dict[str, str], cwd: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        home, work = base / "home", base / "work"
        (home / "jobs").mkdir(parents=True)
        for i in range(a.runs):
            job = f"train-20261201-{i:06d}-beef"
            folder = work / "runs" / job
            folder.mkdir(parents=True)
            record = {"job_id": job, "cluster": "local", "output": str(folder), "script": "train.py", "args": [], "env_keys": [],
                      "workdir": str(work), "nodes": ["local-0"], "status": "fetched", "exit_code": 0,
                      "submitted_at": 1.7e9 + i, "started_at": 1.7e9 + i, "ended_at": 1.7e9 + i + 60, "timings": {}, "extra": {}}
            (home / "jobs" / f"{job}.json").write_text(json.dumps(record))
            (folder / "run.json").write_text(json.dumps({"job_id": job, "status": "succeeded", "metrics": {"acc": 0.9}, "timings": {"run_s": 60}}))
        env = {**os.environ, "CLOUDTRAIN_HOME": str(home)}
        for args in (["runs"], ["runs", "--json"], ["status"], ["--help"]):
            t = _median([PY, "-m", "cloudtrain.cli", *args], env, work, a.repeat)
            print(f"cloudtrain {' '.join(args):<12} {a.runs} runs: {t:.3f} s")
        series = base / "series"
        series.mkdir()
        with open(series / "metrics.jsonl", "w") as f:
            for s in range(a.steps):
                f.write(json.dumps({"step": s, "loss": 1 / (s + 1), "acc": s / a.steps, "lr": 0.1, "grad_norm": 2.0}) + "\n")
        draw = f"from pathlib import Path; from cloudtrain.jobs import plot; plot.save(Path({str(series)!r}), 'bench')"
        t = _median([PY, "-c", draw], env, base, a.repeat)
        print(f"metrics.png, {a.steps} steps x 4 series, fresh process (matplotlib import included): {t:.3f} s")
        t = _median([PY, "-c", "import cloudtrain.jobs.collect"], env, base, a.repeat)
        print(f"baseline: python -c 'import cloudtrain.jobs.collect': {t:.3f} s")


if __name__ == "__main__":
    main()
