"""`cloudtrain cancel JOB` on a real two-node local cluster (real sshd, real signals): the job
stops on every node (TERM, then KILL after the grace), its partial outputs come home verified,
run.json says cancelled; a job that already ended is said so and its outputs still come home."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from conftest import Cli, local_cluster, one_line_error, pids_where

# Rank 0 saves a checkpoint on TERM and exits; rank 1 ignores TERM, and so does its child
# (an ignored signal stays ignored across exec): only KILL stops them.
STUBBORN = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    out, rank = os.environ["CLOUDTRAIN_OUTPUT_DIR"], os.environ["CLOUDTRAIN_NODE_RANK"]
    open(os.path.join(out, "partial.txt"), "w").write(f"rank {rank} half done")
    def checkpoint(*_):
        open(os.path.join(out, "checkpoint.txt"), "w").write("saved on TERM")
        sys.exit(0)
    if rank == "0":
        signal.signal(signal.SIGTERM, checkpoint)
    else:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen(["sleep", "1000"])
    print("ready", flush=True)
    while True:
        time.sleep(0.2)
    """
)

QUICK = textwrap.dedent(
    """
    import os
    open(os.path.join(os.environ["CLOUDTRAIN_OUTPUT_DIR"], "result.txt"), "w").write("complete")
    print("done", flush=True)
    """
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with local_cluster(tmp_path_factory, "cancel", nodes=2) as (cli, _):
        yield cli


def _detach(cli: Cli, name: str, text: str, marker: str) -> str:
    script = cli.cwd / name
    script.write_text(text)
    proc = cli("run", "--detach", str(script), "--env", f"MY_MARK={marker}", timeout=120)
    assert proc.returncode == 0, proc.stderr
    return re.search(r"job (\S+) started", proc.stderr).group(1)  # type: ignore[union-attr]


def _node_job_dirs(cli: Cli, job_id: str) -> list[Path]:
    state = json.loads((cli.home / "clusters" / "local" / "cluster.json").read_text())
    return [Path(d) / "root" / "jobs" / job_id for d in state["provider_state"]["node_dirs"]]


def _job_pids(cli: Cli, job_id: str, marker: str) -> list[int]:
    """Every process of the job on either node: the program and its children (they carry the
    job's environment) and the session leader (its cwd is the job's folder)."""
    dirs = {str(d) for d in _node_job_dirs(cli, job_id)}
    by_env = pids_where("environ", lambda env: f"MY_MARK={marker}".encode() in env.split(b"\0"))
    by_cwd = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "cwd") in dirs:
                by_cwd.append(int(entry.name))
        except OSError:
            continue
    return sorted(set(by_env) | set(by_cwd))


def _wait(what: str, test, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_cancel_stops_the_job_on_every_node_and_brings_its_partial_outputs_home(cluster: Cli) -> None:
    marker = uuid.uuid4().hex
    job = _detach(cluster, "stubborn.py", STUBBORN, marker)
    _wait("the job ready on both nodes", lambda: _ready(cluster, job, marker))
    pids = _job_pids(cluster, job, marker)
    assert len(pids) >= 5, pids  # 2 leaders, 2 wrappers, 2 programs, rank 1's sleep: some may be exec'd

    proc = cluster("cancel", job, "--grace", "2", timeout=120)

    assert proc.returncode == 0, proc.stderr
    assert f"job {job} cancelled" in proc.stderr
    assert _job_pids(cluster, job, marker) == [], "the job still runs on a node after cancel"
    out = cluster.cwd / "runs" / job
    assert (out / "partial.txt").read_text() == "rank 0 half done"
    assert (out / "rank-1" / "partial.txt").read_text() == "rank 1 half done"
    assert (out / "checkpoint.txt").read_text() == "saved on TERM"  # TERM came first, and the grace was kept
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert {"partial.txt", "rank-1/partial.txt", "checkpoint.txt", "log.txt", "rank-1/log.txt"} <= set(manifest["files"])
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "cancelled" and run["cancelled_at"] is not None
    assert run["exit_code"] == 143  # rank 1 had to be KILLed; rank 0 exited 0 on its TERM
    listed = {r["job_id"]: r for r in json.loads(cluster("runs", "--json").stdout)}
    assert listed[job]["status"] == "cancelled" and listed[job]["outputs_home"] is True

    again = cluster("cancel", job, timeout=60)
    assert again.returncode == 0, again.stderr
    assert f"job {job} had already ended (cancelled, exit 143)" in again.stderr


def test_cancel_while_run_follows_the_job_ends_both_with_one_cancelled_record(cluster: Cli) -> None:
    marker = uuid.uuid4().hex
    script = cluster.cwd / "followed.py"
    script.write_text(STUBBORN)
    env = {**os.environ, "CLOUDTRAIN_HOME": str(cluster.home)}
    follower = subprocess.Popen(
        [sys.executable, "-m", "cloudtrain.cli", "run", str(script), "--env", f"MY_MARK={marker}"],
        cwd=cluster.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait("the job's record", lambda: any((cluster.home / "jobs").glob("followed-*.json")))
        job = next((cluster.home / "jobs").glob("followed-*.json")).stem
        _wait("the job ready on both nodes", lambda: _ready(cluster, job, marker))

        proc = cluster("cancel", job, "--grace", "1", timeout=120)
        out, err = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert proc.returncode == 0, proc.stderr
    assert follower.returncode == 143, err
    assert f"job {job} was cancelled" in err.splitlines()[-1]
    assert "Traceback" not in err + proc.stderr
    assert _job_pids(cluster, job, marker) == []
    folder = cluster.cwd / "runs" / job
    run = json.loads((folder / "run.json").read_text())
    assert run["status"] == "cancelled"  # whichever of the two brought it home last
    assert json.loads((cluster.home / "jobs" / f"{job}.json").read_text())["extra"]["cancelled_at"] is not None
    assert (folder / "rank-1" / "partial.txt").read_text() == "rank 1 half done"
    assert json.loads((folder / "manifest.json").read_text())["complete"] is True


def _ready(cli: Cli, job: str, marker: str) -> bool:
    """Both ranks are past their signal setup: each said ready in its log on its node."""
    try:
        return all("ready" in (d / "log.txt").read_text() for d in _node_job_dirs(cli, job))
    except OSError:
        return False


def test_cancel_of_a_job_that_already_ended_says_so_and_brings_its_outputs_home(cluster: Cli) -> None:
    marker = uuid.uuid4().hex
    job = _detach(cluster, "quick.py", QUICK, marker)
    _wait("the job's exit status on both nodes", lambda: all((d / "exit_code").exists() for d in _node_job_dirs(cluster, job)))
    out = cluster.cwd / "runs" / job
    assert not (out / "run.json").exists()  # owed: nobody followed it
    row = next(line for line in cluster("runs").stdout.splitlines() if line.startswith(job))
    assert " running " in row  # as last recorded: `runs` reads files, it reaches no node

    proc = cluster("cancel", job, timeout=120)

    assert proc.returncode == 0, proc.stderr
    assert f"job {job} had already ended; bringing its outputs home" in proc.stderr
    assert f"job {job} ended (exit 0)" in proc.stderr
    assert (out / "result.txt").read_text() == "complete"
    assert (out / "rank-1" / "result.txt").read_text() == "complete"
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "succeeded" and run["exit_code"] == 0 and run["cancelled_at"] is None


def test_cancel_of_an_unknown_job_names_the_close_ones(cluster: Cli) -> None:
    known = sorted(p.stem for p in (cluster.home / "jobs").glob("*.json"))
    assert known
    typo = known[0][:-1] + ("x" if known[0][-1] != "x" else "y")
    proc = cluster("cancel", typo)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert f"unknown job {typo!r}" in line and known[0] in line
