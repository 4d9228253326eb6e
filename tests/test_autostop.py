"""Autostop and deadlines enforced on the node by its watchdog, on real local nodes: an idle node
stops (its processes and sshd end, its folder stays); a job, a bootstrap step or an open
interactive session keeps it up; `down` brings home what a stopped node owes; `up` starts it
again without reinstalling; `--max-duration` ends a busy node's job and keeps its partial
outputs; the watchdog outlives its node's sshd.

Durations are shrunk with CLOUDTRAIN_WATCHDOG_SCALE (1m = 3s here) and the watchdog looks every
0.2s, so each test takes seconds; a "stays up" check waits several autostop periods. Where a
test needs the node busy first, it arms the watchdog after that with `up --autostop` (an `up` of
the existing cluster changes its watchdog's settings)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Cli, one_line_error, pids_where

SCALE = {"CLOUDTRAIN_WATCHDOG_SCALE": "0.05", "CLOUDTRAIN_WATCHDOG_POLL": "0.2"}
AUTOSTOP_S = 3.0  # 1m scaled
UP = ("up", "--provider", "local", "--framework", "none")


@pytest.fixture
def ct(cli: Cli, monkeypatch: pytest.MonkeyPatch):
    for k, v in SCALE.items():
        monkeypatch.setenv(k, v)
    yield cli
    cli("down", "--force", timeout=120)  # whatever a failed test left


def _root(cli: Cli) -> Path:
    return cli.home / "clusters" / "local" / "provider" / "local-0" / "root"


def _cluster(cli: Cli) -> dict:
    proc = cli("status", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["clusters"][0]


def _node_procs(cli: Cli) -> list[int]:
    marker = f"CLOUDTRAIN_NODE_ROOT={_root(cli)}".encode()
    return pids_where("environ", lambda env: marker in env.split(b"\0"))


def _wait_stopped(cli: Cli, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = _cluster(cli)
        if c["status"] == "stopped":
            return c
        time.sleep(0.3)
    raise AssertionError(f"the node did not stop within {timeout}s; watchdog log: {(_root(cli) / 'watchdog' / 'log.txt').read_text()}")


def _stays_up(cli: Cli, periods: float = 4) -> None:
    time.sleep(periods * AUTOSTOP_S)
    assert _cluster(cli)["status"] == "ready", (_root(cli) / "watchdog" / "log.txt").read_text()


def test_an_idle_node_stops_and_status_says_so(ct: Cli) -> None:
    up = ct(*UP, "--autostop", "1m", timeout=300)
    assert up.returncode == 0, up.stderr
    assert "autostop after 1m idle" in up.stderr
    c = _wait_stopped(ct)
    assert c["stopped"]["reason"] == "autostop" and c["autostop_s"] == 60
    # Stopped: nothing of the node runs any more (sshd, sessions, the watchdog), its files stay.
    deadline = time.monotonic() + 20
    while _node_procs(ct) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _node_procs(ct)
    assert (_root(ct) / "venv").is_dir()
    text = ct("status").stdout
    assert "stopped (autostop, " in text and "autostop 1m" in text and "`cloudtrain up`" in text
    script = ct.cwd / "hello.py"
    script.write_text("print('hello')\n")
    run = ct("run", str(script))  # says it is stopped, and how to get its outputs
    assert run.returncode == 1
    assert "cluster local is stopped (autostop, " in one_line_error(run) and "cloudtrain down" in run.stderr
    down = ct("down", timeout=120)  # nothing owed: destroyed as it is
    assert down.returncode == 0 and "cluster local is down (ran " in down.stderr and "starting it" not in down.stderr


def test_up_starts_a_stopped_cluster_without_reinstalling(ct: Cli) -> None:
    assert ct(*UP, "--autostop", "1m", timeout=300).returncode == 0
    _wait_stopped(ct)
    again = ct(*UP, "--autostop", "off", timeout=300)  # starts it, and turns autostop off
    assert again.returncode == 0, again.stderr
    assert "was stopped (autostop, " in again.stderr and "starting it" in again.stderr
    assert "ready (nothing to do)" in again.stderr and "venv:" not in again.stderr
    # Same address, port and pinned host key: plain OpenSSH with strict checking gets in.
    hello = ct("ssh", "--", "echo", "hello")
    assert hello.returncode == 0 and hello.stdout.strip() == "hello", hello.stderr
    _stays_up(ct, periods=3)
    assert _cluster(ct)["autostop_s"] == 0


def test_a_detached_job_keeps_the_node_up_and_down_brings_its_outputs_home(ct: Cli) -> None:
    assert ct(*UP, timeout=300).returncode == 0
    script = ct.cwd / "train.py"
    release = ct.cwd / "release"  # the job runs until the test says (a local node shares this disk)
    script.write_text(
        "import os, time\nout = os.environ['CLOUDTRAIN_OUTPUT_DIR']\n"
        f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.2)\n"
        "open(os.path.join(out, 'model.txt'), 'w').write('trained')\nprint('done', flush=True)\n"
    )
    run = ct("run", str(script), "--detach")
    assert run.returncode == 0, run.stderr
    _arm(ct, "--autostop", "1m")
    _stays_up(ct)  # 12s of a job still running: well past the 3s autostop
    release.touch()
    c = _wait_stopped(ct)  # the job ended; then idle
    assert c["stopped"]["reason"] == "autostop"
    job_id = json.loads(ct("status", "--json").stdout)["jobs"][0]["job_id"]
    down = ct("down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert "starting it" in down.stderr
    out = ct.cwd / "runs" / job_id
    assert (out / "model.txt").read_text() == "trained"
    assert json.loads((out / "run.json").read_text())["exit_code"] == 0
    assert not (ct.home / "clusters" / "local").exists()


def _arm(cli: Cli, *flags: str) -> None:
    proc = cli(*UP, *flags, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "watchdog on every node" in proc.stderr


def _hold_step(cli: Cli, seconds: int) -> int:
    """A bootstrap step as apply.py leaves it while it runs: a live session named by a pid file."""
    steps = _root(cli) / "bootstrap" / "steps"
    proc = cli("ssh", "--", f"setsid sleep {seconds} </dev/null >/dev/null 2>&1 & echo $! > {steps}/99-slow.pid")
    assert proc.returncode == 0, proc.stderr
    return int((steps / "99-slow.pid").read_text())


def test_a_running_bootstrap_step_keeps_the_node_up(ct: Cli) -> None:
    assert ct(*UP, timeout=300).returncode == 0
    pid = _hold_step(ct, 600)
    _arm(ct, "--autostop", "1m")
    _stays_up(ct)
    os.kill(pid, signal.SIGTERM)
    _wait_stopped(ct)


def test_an_interactive_session_keeps_the_node_up(ct: Cli) -> None:
    assert ct(*UP, timeout=300).returncode == 0
    config = ct.cwd / "ssh_config"
    config.write_text(ct("ssh-config").stdout)
    # -tt: a pseudo-terminal, as a user's `cloudtrain ssh` gets.
    session = subprocess.Popen(["ssh", "-tt", "-F", str(config), "local-0", "sleep", "600"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)  # logged in
        _arm(ct, "--autostop", "1m")
        _stays_up(ct)
    finally:
        session.terminate()
        session.wait(timeout=30)
    _wait_stopped(ct)


def test_max_duration_stops_a_busy_node_and_its_partial_outputs_come_home(ct: Cli) -> None:
    assert ct(*UP, timeout=300).returncode == 0
    script = ct.cwd / "forever.py"
    script.write_text(
        "import os, signal, sys, time\nout = os.environ['CLOUDTRAIN_OUTPUT_DIR']\n"
        "def term(*_):\n    open(os.path.join(out, 'last.ckpt'), 'w').write('saved at TERM'); sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        "open(os.path.join(out, 'epoch1.txt'), 'w').write('epoch 1')\nprint('training', flush=True)\ntime.sleep(3600)\n"
    )
    assert ct("run", str(script), "--detach").returncode == 0
    _arm(ct, "--max-duration", "2m")  # 6s here
    c = _wait_stopped(ct)
    assert c["stopped"]["reason"] == "max-duration"
    job_id = json.loads(ct("status", "--json").stdout)["jobs"][0]["job_id"]
    down = ct("down", timeout=120)
    assert down.returncode == 0, down.stderr
    out = ct.cwd / "runs" / job_id
    assert (out / "epoch1.txt").read_text() == "epoch 1"
    assert (out / "last.ckpt").read_text() == "saved at TERM"
    run = json.loads((out / "run.json").read_text())
    assert run["exit_code"] == 143 and run["ended_by"]["reason"] == "max-duration"


def test_the_watchdog_marks_a_job_before_it_signals_it(tmp_path: Path) -> None:
    """The job's TERM handler finds the watchdog's marker already in its folder: whoever sees
    the job's end can name the watchdog, however the race to `launch` goes."""
    wd = _watchdog_module()
    job = tmp_path / "jobs" / "j1"
    job.mkdir(parents=True)
    (tmp_path / "watchdog").mkdir()
    seen = job / "seen_at_term"
    code = (
        "import os, signal, sys, time\n"
        "def term(*_):\n"
        f"    open({str(seen)!r}, 'w').write(str(os.path.exists({str(job / 'ended_by.json')!r})))\n"
        "    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        f"open({str(job / 'ready')!r}, 'w').close()\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(["python3", "-c", code], start_new_session=True)
    try:
        (job / "pid").write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + 20
        while not (job / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        wd.end_jobs(str(tmp_path / "watchdog"), str(tmp_path), 5.0, "max-duration")
        assert proc.wait(timeout=20) == 143
    finally:
        proc.kill()
        proc.wait()
    assert seen.read_text() == "True"
    assert json.loads((job / "ended_by.json").read_text())["reason"] == "max-duration"


def test_the_watchdog_outlives_its_nodes_sshd(ct: Cli) -> None:
    assert ct(*UP, timeout=300).returncode == 0
    step = _hold_step(ct, 600)
    _arm(ct, "--autostop", "1m")
    watchdog = json.loads((_root(ct) / "watchdog" / "pid.json").read_text())["pid"]
    sshd = int((_root(ct).parent / "sshd.pid").read_text())
    os.kill(sshd, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{sshd}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    again = ct(*UP, timeout=300)  # restarts the sshd; the running watchdog is left as it is
    assert again.returncode == 0, again.stderr
    assert "restarted it" in again.stderr
    assert json.loads((_root(ct) / "watchdog" / "pid.json").read_text())["pid"] == watchdog
    assert Path(f"/proc/{watchdog}").exists()
    os.kill(step, signal.SIGTERM)
    _wait_stopped(ct)  # and it still stops the node, new sshd included


@pytest.mark.parametrize("flag,value,says", [
    ("--autostop", "30s", "invalid --autostop"),
    ("--autostop", "0m", "shorter than a minute"),
    ("--max-duration", "off", "invalid --max-duration"),
    ("--max-duration", "2x", "invalid --max-duration"),
])
def test_bad_durations_are_refused_before_anything_is_made(cli: Cli, flag: str, value: str, says: str) -> None:
    proc = cli(*UP, flag, value)
    assert proc.returncode == 2
    assert says in one_line_error(proc)
    assert not (cli.home / "clusters" / "local").exists()


def _watchdog_module():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("watchdog", REPO / "cloudtrain" / "bootstrap" / "node" / "watchdog.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_what_counts_as_a_running_job_or_step(tmp_path: Path) -> None:
    """Real pid files naming real processes: a live job without exit_code counts; one that has
    its exit_code does not, even with a helper it left still alive (it must not keep the node
    up for ever); nor does a pid file from before this boot, whose pid means nothing now."""
    wd = _watchdog_module()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        jobs = tmp_path / "jobs"
        for name in ("running", "ended", "stale"):
            (jobs / name).mkdir(parents=True)
            (jobs / name / "pid").write_text(f"{alive.pid}\n")
        (jobs / "ended" / "exit_code").write_text("0\n")
        os.utime(jobs / "stale" / "pid", (0, 0))
        assert wd.running_jobs(str(tmp_path)) == [alive.pid]
        steps = tmp_path / "bootstrap" / "steps"
        steps.mkdir(parents=True)
        (steps / "20-venv.pid").write_text(f"{alive.pid}\n")
        assert wd.busy(str(tmp_path), "CLOUDTRAIN_NODE_ROOT=/nowhere") == ["job", "bootstrap step"]
        (jobs / "running" / "exit_code").write_text("0\n")
        alive.kill()
        alive.wait()
        assert wd.busy(str(tmp_path), "CLOUDTRAIN_NODE_ROOT=/nowhere") == []
    finally:
        alive.kill()
        alive.wait()


def test_launch_past_its_max_duration_brings_the_partial_outputs_home_and_says_why(ct: Cli) -> None:
    script = ct.cwd / "forever.py"
    script.write_text(
        "import os, time\nopen(os.path.join(os.environ['CLOUDTRAIN_OUTPUT_DIR'], 'epoch1.txt'), 'w').write('epoch 1')\n"
        "print('training', flush=True)\ntime.sleep(3600)\n"
    )
    # A short patience: `launch` notices the lost node in seconds rather than minutes.
    proc = ct("launch", str(script), *UP[1:], "--max-duration", "2m", env={"CLOUDTRAIN_NODE_PATIENCE": "5"}, timeout=400)
    last = proc.stderr.strip().splitlines()[-1]
    # Whichever reaches `launch` first, the job's end (TERM from the watchdog) or the node's
    # stop, the watchdog is named: it marks the job before it signals it.
    assert proc.returncode == 1, proc.stderr
    assert "was ended by the cluster's watchdog (max-duration, " in last and "partial outputs are in" in last, proc.stderr
    assert "cluster local is down" in proc.stderr
    job_id = next(p.name for p in (ct.cwd / "runs").iterdir())
    assert (ct.cwd / "runs" / job_id / "epoch1.txt").read_text() == "epoch 1"
    assert not (ct.home / "clusters" / "local").exists()

