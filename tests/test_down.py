"""`down` brings home what a still-running job has made, stops every process the cluster
started (detached jobs included), and leaves no node directory behind."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from conftest import Cli, _sshd_pids_under, pids_where


def _procs_with_env(marker: str) -> list[int]:
    return pids_where("environ", lambda env: marker.encode() in env)


def test_down_collects_a_running_detached_job_and_stops_everything(cli: Cli) -> None:
    assert cli("up", "--provider", "local", "--framework", "none", "--nodes", "2", timeout=300).returncode == 0
    script = cli.cwd / "forever.py"
    script.write_text(
        "import os, time\nout = os.environ['CLOUDTRAIN_OUTPUT_DIR']\n"
        "open(os.path.join(out, 'checkpoint.txt'), 'w').write('epoch 1')\n"
        "print('training forever', flush=True)\ntime.sleep(3600)\n"
    )
    run = cli("run", str(script), "--detach", "--env", "MY_MARK=down-test")
    assert run.returncode == 0, run.stderr
    job_id = json.loads(cli("status", "--json").stdout)["jobs"][0]["job_id"]
    node_roots = cli.home / "clusters" / "local" / "provider"
    marker = f"CLOUDTRAIN_NODE_ROOT={node_roots}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len(_procs_with_env(marker)) >= 2 and all(
            (node_roots / f"local-{i}" / "root" / "jobs" / job_id / "out" / "checkpoint.txt").exists() for i in (0, 1)
        ):
            break
        time.sleep(0.2)
    assert _procs_with_env(marker), "the detached job should be running"

    down = cli("down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert "still running; stopping it" in down.stderr
    out = cli.cwd / "runs" / job_id
    assert (out / "checkpoint.txt").read_text() == "epoch 1"
    assert (out / "rank-1" / "checkpoint.txt").read_text() == "epoch 1"
    assert "training forever" in (out / "log.txt").read_text()
    assert json.loads((out / "run.json").read_text())["exit_code"] != 0
    assert not _procs_with_env(marker), "a process the cluster started is still running"
    assert not _sshd_pids_under(cli.home)
    assert not (cli.home / "clusters" / "local").exists()
    status = json.loads(cli("status", "--json").stdout)
    assert status["clusters"] == [] and status["jobs"][0]["status"] == "fetched"


def test_up_that_fails_midway_removes_everything_it_made(cli: Cli, tmp_path: Path) -> None:
    """A real sshd that refuses to run any command: nodes start, bootstrap fails, and `up`
    stops the sshds and removes the cluster rather than leave a half-made one running."""
    wrapper = tmp_path / "sshd-refusing"
    wrapper.write_text('#!/bin/sh\nexec /usr/sbin/sshd -o "ForceCommand=echo refused >&2; exit 97" "$@"\n')
    wrapper.chmod(0o755)
    proc = cli("up", "--provider", "local", "--nodes", "2", "--framework", "none", env={"CLOUDTRAIN_SSHD": str(wrapper)}, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "did not come up; removing whatever was made" in proc.stderr
    assert "probing node local-" in proc.stderr.strip().splitlines()[-1]
    assert not _sshd_pids_under(cli.home)
    assert not (cli.home / "clusters" / "local").exists()
    assert json.loads(cli("status", "--json").stdout)["clusters"] == []


def test_down_reports_a_finished_detached_job_with_its_real_exit_code(cli: Cli) -> None:
    assert cli("up", "--provider", "local", "--framework", "none", timeout=300).returncode == 0
    script = cli.cwd / "quick.py"
    script.write_text("import os\nopen(os.environ['CLOUDTRAIN_OUTPUT_DIR'] + '/done.txt', 'w').write('ok')\n")
    assert cli("run", str(script), "--detach").returncode == 0
    job_id = json.loads(cli("status", "--json").stdout)["jobs"][0]["job_id"]
    node_out = cli.home / "clusters" / "local" / "provider" / "local-0" / "root" / "jobs" / job_id / "exit_code"
    deadline = time.monotonic() + 30
    while not node_out.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    down = cli("down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert "still running" not in down.stderr
    run = json.loads((cli.cwd / "runs" / job_id / "run.json").read_text())
    assert run["exit_code"] == 0
    assert (cli.cwd / "runs" / job_id / "done.txt").read_text() == "ok"


def test_jobs_belong_to_one_incarnation_of_a_cluster_name(tmp_path: Path) -> None:
    from cloudtrain.jobs.record import JobRecord, jobs_of
    from cloudtrain.state import Store

    store = Store(tmp_path)
    for job_id, created in (("old-job", 100.0), ("new-job", 200.0)):
        JobRecord(job_id, "local", str(tmp_path / job_id), "a.py", [], [], str(tmp_path), ["local-0"], cluster_created_at=created).save(store)
    assert [j.job_id for j in jobs_of(store, "local", 200.0)] == ["new-job"]


def test_down_refuses_while_outputs_cannot_come_home_and_force_destroys(cli: Cli) -> None:
    """The output folder became a file under a detached job: `down` keeps the cluster (and
    its status) rather than lose the outputs; `--force` destroys anyway and says what was lost."""
    assert cli("up", "--provider", "local", "--framework", "none", timeout=300).returncode == 0
    script = cli.cwd / "sleeper.py"
    script.write_text("import os, time\nopen(os.environ['CLOUDTRAIN_OUTPUT_DIR'] + '/a.txt', 'w').write('x')\ntime.sleep(3600)\n")
    assert cli("run", str(script), "--detach", "--output", str(cli.cwd / "out" / "r1")).returncode == 0
    job_id = json.loads(cli("status", "--json").stdout)["jobs"][0]["job_id"]
    marker = f"CLOUDTRAIN_NODE_ROOT={cli.home / 'clusters' / 'local' / 'provider'}"
    shutil.rmtree(cli.cwd / "out", ignore_errors=True)
    (cli.cwd / "out").write_text("not a folder")

    refused = cli("down", timeout=120)
    assert refused.returncode == 1, refused.stderr
    assert "Traceback" not in refused.stderr
    assert "could not bring home the outputs of local" in refused.stderr and "add --force" in refused.stderr
    status = json.loads(cli("status", "--json").stdout)
    assert [c["status"] for c in status["clusters"]] == ["ready"]  # not left "destroying"
    assert _sshd_pids_under(cli.home)

    forced = cli("down", "--force", timeout=120)
    assert forced.returncode == 0, forced.stderr
    assert f"job {job_id}'s outputs were not brought home" in forced.stderr
    status = json.loads(cli("status", "--json").stdout)
    assert status["clusters"] == [] and status["jobs"][0]["status"] == "abandoned"
    assert not _procs_with_env(marker), "the job outlived its cluster"
    assert not _sshd_pids_under(cli.home)
    assert (cli.cwd / "out").read_text() == "not a folder"  # the user's file is untouched


def test_down_stops_a_child_the_job_started_with_an_empty_environment(cli: Cli) -> None:
    """The environment mark misses a child started with env={} (a helper server, say); the
    job's session (it starts with setsid) still ties that child to the node."""
    assert cli("up", "--provider", "local", "--framework", "none", timeout=300).returncode == 0
    script = cli.cwd / "spawner.py"
    script.write_text(
        "import subprocess\n"
        "subprocess.Popen(['/bin/sleep', '3600.0417'], env={}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print('started a helper', flush=True)\n"
    )
    assert cli("run", str(script)).returncode == 0

    def helpers() -> list[int]:
        return pids_where("cmdline", lambda cmd: b"3600.0417" in cmd)

    survivors = helpers()
    assert survivors, "the helper should outlive the job"
    assert all(b"CLOUDTRAIN_NODE_ROOT" not in Path(f"/proc/{p}/environ").read_bytes() for p in survivors)
    try:
        assert cli("down", timeout=120).returncode == 0
        assert not helpers(), "down left the job's helper running"
    finally:
        for pid in helpers():
            os.kill(pid, 9)
