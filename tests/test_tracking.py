"""Jobs tracked by their session, nodes that stop answering, local nodes repaired and fully
reaped: real sshd, real SSH, real processes and real signals on a one-node local cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import Cli, one_line_error, pids_where

TICKS = textwrap.dedent(
    """
    import os, sys, time
    out = os.environ["CLOUDTRAIN_OUTPUT_DIR"]
    for i in range(int(sys.argv[1])):
        print("tick", i, flush=True)
        time.sleep(0.5)
    open(os.path.join(out, "done.txt"), "w").write("finished")
    """
)


def _up(cli: Cli) -> None:
    proc = cli("up", "--provider", "local", "--framework", "none", timeout=300)
    assert proc.returncode == 0, proc.stderr


def _node_dir(cli: Cli) -> Path:
    return cli.home / "clusters" / "local" / "provider" / "local-0"


def _children(pid: int) -> list[int]:
    return pids_where("stat", lambda stat: stat.rsplit(b")", 1)[1].split()[1] == str(pid).encode())


def _start_run(cli: Cli, script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cloudtrain.cli", "run", str(script), "--", *args],
        cwd=cli.cwd, env={**os.environ, "CLOUDTRAIN_HOME": str(cli.home), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _read_until(proc: subprocess.Popen, prefix: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"the job never printed {prefix!r}: {proc.stderr.read() if proc.stderr else ''}")


def _job_id(cli: Cli) -> str:
    return json.loads(cli("status", "--json").stdout)["jobs"][-1]["job_id"]


def _error_line(err: str) -> str:
    """The one error line of a command that ended in an error (after its progress lines)."""
    lines = [line for line in err.splitlines() if line.startswith("cloudtrain: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _kill_node_sshd(cli: Cli) -> None:
    """The node's sshd dies: its listener and every connection it serves (jobs run on)."""
    listener = int((_node_dir(cli) / "sshd.pid").read_text())
    for pid in _children(listener):
        os.kill(pid, signal.SIGKILL)
    os.kill(listener, signal.SIGKILL)


def test_a_node_that_stops_answering_is_said_plainly_shown_by_status_and_repaired_by_up(cli: Cli) -> None:
    _up(cli)
    host_key = (_node_dir(cli) / "ssh_host_ed25519_key.pub").read_text()
    record = json.loads(cli("status", "--json").stdout)["clusters"][0]
    script = cli.cwd / "ticks.py"
    script.write_text(TICKS)
    run = _start_run(cli, script, "40", env={"CLOUDTRAIN_NODE_PATIENCE": "8"})
    _read_until(run, "tick 2")
    job_id = _job_id(cli)
    _kill_node_sshd(cli)
    _, err = run.communicate(timeout=180)  # bounded: patience 8 s plus one reconnection attempt
    assert run.returncode == 1, err
    assert "local-0 is unreachable" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("cloudtrain: error: local-0 did not answer") and "Traceback" not in err
    assert job_id in last and "outputs are still owed" in last and f"`cloudtrain logs {job_id} -f`" in last

    status = json.loads(cli("status", "--json").stdout)["clusters"][0]
    assert status["nodes"][0]["answering"] is False and "local-0" in status["not_answering"]
    assert "not answering over SSH: local-0" in cli("status").stdout

    up = cli("up", "--provider", "local", "--framework", "none", timeout=300)
    assert up.returncode == 0, up.stderr
    assert "local-0: its sshd was not running; restarted it" in up.stderr
    assert (_node_dir(cli) / "ssh_host_ed25519_key.pub").read_text() == host_key
    again = json.loads(cli("status", "--json").stdout)["clusters"][0]
    assert again["nodes"][0]["answering"] is True and again["nodes"][0]["port"] == record["nodes"][0]["port"]
    # The job ran on while its node was unreachable; its outputs come home now.
    logs = cli("logs", job_id, "-f", timeout=180)
    assert logs.returncode == 0, logs.stderr
    assert (cli.cwd / "runs" / job_id / "done.txt").read_text() == "finished"
    assert cli("run", str(script), "--", "2", timeout=180).returncode == 0
    assert cli("down", timeout=120).returncode == 0


def test_a_job_that_kills_its_wrapper_is_followed_until_it_ends(cli: Cli) -> None:
    _up(cli)
    script = cli.cwd / "orphan.py"
    script.write_text(
        "import os, signal, time\n"
        "out = os.environ['CLOUDTRAIN_OUTPUT_DIR']\n"
        "print('killing my wrapper', flush=True)\n"
        "os.kill(os.getppid(), signal.SIGKILL)\n"
        "for i in range(16):\n    time.sleep(0.5)\n    print('still here', i, flush=True)\n"
        "open(os.path.join(out, 'late.txt'), 'w').write('written after the wrapper died')\n"
    )
    proc = cli("run", str(script), "--output", str(cli.cwd / "out"), timeout=180)
    out = cli.cwd / "out"
    assert proc.returncode == 0, proc.stderr  # its own status, though its wrapper never saw it
    assert (out / "late.txt").read_text() == "written after the wrapper died"
    assert "still here 15" in (out / "log.txt").read_text()
    assert cli("down", timeout=120).returncode == 0


def test_a_job_folder_that_vanishes_ends_run_with_a_clear_error(cli: Cli) -> None:
    _up(cli)
    script = cli.cwd / "ticks.py"
    script.write_text(TICKS)
    run = _start_run(cli, script, "240")
    _read_until(run, "tick 1")
    job_id = _job_id(cli)
    shutil.rmtree(_node_dir(cli) / "root" / "jobs" / job_id)
    _, err = run.communicate(timeout=120)  # bounded: before the fix, `run` waited forever
    assert run.returncode == 1
    assert f"job {job_id}'s folder" in _error_line(err) and "vanished from local-0" in err
    marker = f"CLOUDTRAIN_JOB_ID={job_id}".encode()
    assert not pids_where("environ", lambda env: marker in env.split(b"\0")), "the job was left running"
    down = cli("down", timeout=120)
    assert down.returncode == 0, down.stderr


def test_down_ends_a_double_forked_daemon_with_an_empty_environment(cli: Cli) -> None:
    _up(cli)
    script = cli.cwd / "daemon.py"
    script.write_text(
        "import os, subprocess\n"
        "pidfile = os.path.join(os.environ['CLOUDTRAIN_OUTPUT_DIR'], 'daemon.pid')\n"
        "subprocess.run(['setsid', 'env', '-i', 'sh', '-c', 'sleep 1000.4242 >/dev/null 2>&1 & echo $! > \"$1\"', 'sh', pidfile], check=True)\n"
    )
    proc = cli("run", str(script), "--output", str(cli.cwd / "out"), timeout=180)
    assert proc.returncode == 0, proc.stderr
    pid = int((cli.cwd / "out" / "daemon.pid").read_text())
    try:
        assert b"1000.4242" in Path(f"/proc/{pid}/cmdline").read_bytes(), "the daemon should outlive its job"
        assert b"CLOUDTRAIN" not in Path(f"/proc/{pid}/environ").read_bytes()
        assert cli("down", timeout=120).returncode == 0
        assert not pids_where("cmdline", lambda cmd: b"1000.4242" in cmd), "down left the daemon running"
    finally:
        for left in pids_where("cmdline", lambda cmd: b"1000.4242" in cmd):
            os.kill(left, signal.SIGKILL)


def test_a_bad_patience_setting_is_refused_before_the_job_starts(cli: Cli) -> None:
    _up(cli)
    script = cli.cwd / "ticks.py"
    script.write_text(TICKS)
    proc = cli("run", str(script), "--", "1", env={"CLOUDTRAIN_NODE_PATIENCE": "soon"})
    assert proc.returncode == 2
    assert "CLOUDTRAIN_NODE_PATIENCE='soon' is not a number of seconds" in one_line_error(proc)
    assert not list((_node_dir(cli) / "root" / "jobs").glob("*")), "nothing may ship before the refusal"
    assert not list((cli.home / "jobs").glob("*.json")), "a refused job must not be recorded"
    assert cli("down", timeout=120).returncode == 0


def test_status_probe_tells_a_silent_or_foreign_listener_from_an_ssh_server() -> None:
    """Real sockets on loopback: a port that accepts but never speaks, and one that speaks
    something other than SSH, are both 'not answering'; the probe is bounded by its timeout."""
    import socket
    import threading

    from cloudtrain.reachability import why_silent

    silent, foreign = socket.socket(), socket.socket()
    for s in (silent, foreign):
        s.bind(("127.0.0.1", 0))
        s.listen(1)

    def speak() -> None:
        conn, _ = foreign.accept()
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    threading.Thread(target=speak, daemon=True).start()
    try:
        assert why_silent("127.0.0.1", silent.getsockname()[1], timeout=0.5) == "no answer within 0.5s"
        assert why_silent("127.0.0.1", foreign.getsockname()[1], timeout=5) == "something other than SSH answers there"
    finally:
        silent.close()
        foreign.close()
    assert why_silent("127.0.0.1", 1, timeout=1)  # nothing listens on port 1: refused
