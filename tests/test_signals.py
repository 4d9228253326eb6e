"""SIGTERM, SIGHUP and Ctrl-C on real CLI processes over a real local cluster: `launch` brings
home what exists and tears down, `up` removes what it made without waiting for its bootstrap
to finish, `bootstrap` ends its step on the node, and a second signal cannot cut a teardown
short. Real signals, a real closed terminal (a pty whose master is closed), real pip."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from conftest import Cli, pids_where

SLOW_JOB = textwrap.dedent(
    """
    import os, time
    out = os.environ["CLOUDTRAIN_OUTPUT_DIR"]
    open(os.path.join(out, "partial.txt"), "w").write("half done")
    print("working", flush=True)
    time.sleep(3600)
    """
)


def _env(cli: Cli, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "CLOUDTRAIN_HOME": str(cli.home), **(extra or {})}


def _start(cli: Cli, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cloudtrain.cli", *args],
        cwd=cli.cwd, env=env or _env(cli), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _read_until(proc: subprocess.Popen, wanted: str, seen: list[str]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if wanted in line:
            return
    raise AssertionError(f"{wanted!r} never came; stderr: {''.join(seen)}")


def _node_processes(home: Path, also: Callable[[bytes], bool] = lambda cmd: True) -> list[int]:
    """Processes started on the home's local nodes (their sessions carry the node-root mark)."""
    mark = f"CLOUDTRAIN_NODE_ROOT={home}".encode()
    marked = set(pids_where("environ", lambda env: any(v.startswith(mark) for v in env.split(b"\0"))))
    return sorted(marked & set(pids_where("cmdline", also)))


def _wait_for(found: Callable[[], list[int]], what: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit  # a bound on a wait, not a speed check
    while not found():
        assert time.monotonic() < deadline, f"{what} never started"
        time.sleep(0.2)


@pytest.fixture
def cleanup(cli: Cli) -> Iterator[list[subprocess.Popen]]:
    """Whatever a test leaves (on the old code: a cluster, its job, a hung CLI) is removed."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if (cli.home / "clusters").is_dir() and any((cli.home / "clusters").iterdir()):
        cli("down", "--force", timeout=120)
    for pid in _node_processes(cli.home):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _assert_torn_down(cli: Cli) -> None:
    assert not (cli.home / "clusters" / "local").exists(), "the cluster is still recorded"
    assert "no clusters" in cli("status").stdout
    assert _node_processes(cli.home) == [], "processes of the node are still running"


def test_sigterm_during_launch_brings_outputs_home_and_tears_down_even_when_signalled_again(cli: Cli, cleanup: list) -> None:
    script = cli.cwd / "proj" / "slow.py"
    script.parent.mkdir()
    script.write_text(SLOW_JOB)
    proc = _start(cli, "launch", str(script), "--framework", "none")
    cleanup.append(proc)
    seen: list[str] = []
    _read_until(proc, " started on ", seen)
    _wait_for(lambda: _node_processes(cli.home, lambda cmd: b"slow.py" in cmd), "the job")
    proc.send_signal(signal.SIGTERM)
    _read_until(proc, "stopping it and bringing home what exists", seen)
    proc.send_signal(signal.SIGTERM)  # during the teardown the first one started
    _, rest = proc.communicate(timeout=180)
    err = "".join(seen) + rest
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert err.count("already stopping") == 1
    job_id = next(line.split()[2] for line in seen if " started on " in line).rstrip(":")
    assert (cli.cwd / "runs" / job_id / "partial.txt").read_text() == "half done"
    assert "working" in (cli.cwd / "runs" / job_id / "log.txt").read_text()
    last = err.strip().splitlines()[-1]
    assert last.startswith("cloudtrain: stopped by SIGTERM;") and "cluster local is down" in last, last
    _assert_torn_down(cli)


def test_closed_terminal_during_launch_still_brings_outputs_home_and_tears_down(cli: Cli, cleanup: list) -> None:
    """The CLI runs on a pty as its controlling terminal; closing the terminal's master side
    is what closing a terminal window does: SIGHUP, then every write to it fails (EIO)."""
    script = cli.cwd / "proj" / "slow.py"
    script.parent.mkdir()
    script.write_text(SLOW_JOB)
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudtrain.cli", "launch", str(script), "--framework", "none"],
        cwd=cli.cwd, env=_env(cli), stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    cleanup.append(proc)
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + 180
    try:
        while b"working" not in shown:  # the job's first line, streamed to the terminal
            assert time.monotonic() < deadline, shown.decode(errors="replace")
            if select.select([master], [], [], 1.0)[0]:
                shown += os.read(master, 65536)
    finally:
        os.close(master)  # the terminal goes away
    assert proc.wait(timeout=180) == 129
    job_id = next(w for line in shown.decode().splitlines() if " started on " in line for w in line.split() if w.startswith("slow-"))
    assert (cli.cwd / "runs" / job_id / "partial.txt").read_text() == "half done"
    _assert_torn_down(cli)


@pytest.fixture
def silent_index() -> Iterator[str]:
    """A package index that accepts connections and never answers: pip hangs in it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)  # the kernel completes the handshakes; nobody ever reads
        yield f"http://127.0.0.1:{server.getsockname()[1]}/simple/"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_up_stops_the_bootstrap_step_and_removes_the_cluster(cli: Cli, cleanup: list, silent_index: str, sig: int) -> None:
    # Only this index, pip's config files skipped, no retries and a long read timeout: the
    # framework step hangs for ten minutes unless cloudtrain ends it.
    env = {k: v for k, v in _env(cli).items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=silent_index, PIP_DEFAULT_TIMEOUT="600", PIP_RETRIES="0")
    proc = _start(cli, "up", "--framework", "tensorflow", env=env)
    cleanup.append(proc)
    seen: list[str] = []
    _read_until(proc, "framework: install", seen)
    _wait_for(lambda: _node_processes(cli.home, lambda cmd: b"pip\0install" in cmd), "pip")
    proc.send_signal(sig)
    _, rest = proc.communicate(timeout=90)  # bounds the wait; the old code waited for pip
    err = "".join(seen) + rest
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    assert "did not come up; removing whatever was made" in err
    assert err.strip().splitlines()[-1] == ("cloudtrain: interrupted" if sig == signal.SIGINT else "cloudtrain: stopped by SIGTERM")
    _assert_torn_down(cli)


def test_sigterm_during_bootstrap_ends_the_step_on_the_node_and_keeps_the_cluster(cli: Cli, cleanup: list) -> None:
    """`bootstrap` leaves the machine up, so the step it was running must be ended there."""
    up = cli("up", "--framework", "none", timeout=300)
    assert up.returncode == 0, up.stderr
    root = cli.home / "clusters" / "local" / "provider" / "local-0" / "root"
    (root / "bootstrap" / "state.json").unlink()  # forget the applied steps: `venv` runs again
    # ... and hangs, as a step waiting on a dead mirror would: the venv's python never returns.
    python = root / "venv" / "bin" / "python"
    python.unlink()
    python.write_text("#!/bin/sh\nexec sleep 3600\n")
    python.chmod(0o755)
    proc = _start(cli, "bootstrap")
    cleanup.append(proc)
    _wait_for(lambda: _node_processes(cli.home, lambda cmd: cmd.startswith(b"sleep\x003600")), "the step")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert _node_processes(cli.home, lambda cmd: b"sleep" in cmd) == [], f"the step still runs on the node: {err}"
    assert "local" in cli("status").stdout
    assert not list((root / "bootstrap" / "steps").glob("*.pid"))


def test_sigterm_during_run_detaches_and_the_job_keeps_running(cli: Cli, cleanup: list) -> None:
    up = cli("up", "--framework", "none", timeout=300)
    assert up.returncode == 0, up.stderr
    script = cli.cwd / "proj" / "slow.py"
    script.parent.mkdir()
    script.write_text(SLOW_JOB)
    proc = _start(cli, "run", str(script))
    cleanup.append(proc)
    seen: list[str] = []
    _read_until(proc, " started on ", seen)
    _wait_for(lambda: _node_processes(cli.home, lambda cmd: b"slow.py" in cmd), "the job")
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=90)
    err = "".join(seen) + rest
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    job_id = next(line.split()[2] for line in seen if " started on " in line)
    assert f"keeps running. Follow it with `cloudtrain logs {job_id} -f`" in err
    assert err.strip().splitlines()[-1] == "cloudtrain: stopped by SIGTERM"
    assert _node_processes(cli.home, lambda cmd: b"slow.py" in cmd), "the job should still run"
    down = cli("down", timeout=180)  # collects it: what it wrote so far comes home
    assert down.returncode == 0, down.stderr
    assert (cli.cwd / "runs" / job_id / "partial.txt").read_text() == "half done"


STUBBORN_JOB = textwrap.dedent(
    """
    import os, signal, time
    signal.signal(signal.SIGTERM, lambda *_: print("ignoring TERM", flush=True))
    open(os.path.join(os.environ["CLOUDTRAIN_OUTPUT_DIR"], "partial.txt"), "w").write("half done")
    print("working", flush=True)
    time.sleep(3600)
    """
)


def test_sigterm_during_down_keeps_the_cluster_and_says_how_to_finish(cli: Cli, cleanup: list) -> None:
    up = cli("up", "--framework", "none", timeout=300)
    assert up.returncode == 0, up.stderr
    script = cli.cwd / "proj" / "stubborn.py"
    script.parent.mkdir()
    script.write_text(STUBBORN_JOB)
    started = cli("run", str(script), "--detach")
    assert started.returncode == 0, started.stderr
    _wait_for(lambda: _node_processes(cli.home, lambda cmd: b"stubborn.py" in cmd), "the job")
    proc = _start(cli, "down")  # stops the job first: TERM, which it ignores, then 10 s to KILL
    cleanup.append(proc)
    seen: list[str] = []
    _read_until(proc, "stopping it", seen)
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=90)
    err = "".join(seen) + rest
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert "the cluster is still up" in err and "cloudtrain down --cluster local" in err, err
    assert '"status": "ready"' in cli("status", "--json").stdout
    again = cli("down", timeout=180)
    assert again.returncode == 0, again.stderr
    assert list((cli.cwd / "runs").glob("*/partial.txt")), "the job's outputs never came home"


def test_a_signal_during_a_teardown_is_taken_after_it(tmp_path: Path) -> None:
    """A teardown not started by a signal (launch's `down` after its job ended) is shielded:
    a signal during it is said and taken once it is over, never in its middle."""
    program = textwrap.dedent(
        """
        import os, signal
        from cloudtrain import interrupts
        interrupts.install()
        steps = []
        try:
            with interrupts.shielded():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGHUP)
                steps.append("teardown finished")
        except KeyboardInterrupt:
            steps.append("then stopped")
        print(steps, interrupts.exit_code())
        """
    )
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.stdout.strip() == "['teardown finished', 'then stopped'] 143", proc.stderr
    assert proc.stderr.count("already stopping") == 1


def test_under_nohup_a_closed_terminal_does_not_stop_the_command(cli: Cli, cleanup: list) -> None:
    """`nohup` (SIGHUP ignored) means: outlive the terminal. Handling SIGHUP must not undo it.
    (This one passes on the code before SIGHUP was handled too: it guards that contract.)"""
    up = cli("up", "--framework", "none", timeout=300)
    assert up.returncode == 0, up.stderr
    script = cli.cwd / "proj" / "short.py"
    script.parent.mkdir()
    script.write_text(
        "import os, time\nwhile not os.path.exists(os.environ['HUP_SENT']):\n    time.sleep(0.1)\n"
        "open(os.path.join(os.environ['CLOUDTRAIN_OUTPUT_DIR'], 'done.txt'), 'w').write('finished')\n"
    )
    flag = cli.cwd / "hup-sent"  # the node is this machine: the job sees the flag file
    proc = subprocess.Popen(
        ["nohup", sys.executable, "-m", "cloudtrain.cli", "run", str(script), "--env", f"HUP_SENT={flag}"],
        cwd=cli.cwd, env=_env(cli), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    cleanup.append(proc)
    seen: list[str] = []
    _read_until(proc, " started on ", seen)
    proc.send_signal(signal.SIGHUP)
    flag.touch()
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(seen) + rest
    job_id = next(line.split()[2] for line in seen if " started on " in line)
    assert (cli.cwd / "runs" / job_id / "done.txt").read_text() == "finished"
    assert cli("down", timeout=180).returncode == 0
