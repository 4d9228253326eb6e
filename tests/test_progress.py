"""Live progress (issue 14 item 4): a spinner and bars in a real pseudo-terminal, plain lines in a
pipe, only the result with --quiet. One module-scoped local node, --framework none."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloudtrain import progress
from conftest import Cli, _sshd_pids_under

SPINNER = set("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")  # rich's default "dots" spinner
ESCAPE = "\x1b["
SLOW_JOB = "import time\nprint('working', flush=True)\ntime.sleep(2)\nprint('done', flush=True)\n"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("progress")
    home = base / "home"
    (base / "work").mkdir()
    cli = Cli(home, base / "work")
    proc = cli("up", "--provider", "local", "--framework", "none", timeout=300)
    assert proc.returncode == 0, proc.stderr
    proj = base / "proj"
    proj.mkdir()
    (proj / "slow.py").write_text(SLOW_JOB)
    yield cli, home, proj
    down = cli("down", timeout=120)
    leaked = _sshd_pids_under(home)
    for pid in leaked:
        os.kill(pid, 9)
    assert down.returncode == 0, down.stderr
    assert not leaked, f"sshd left running after down: {leaked}"


def _in_pty(cli: Cli, *args: str, timeout: float = 300) -> tuple[int, str]:
    """Run the real CLI with stdin, stdout and stderr on a pseudo-terminal; all it drew, decoded."""
    master, slave = pty.openpty()
    env = {**os.environ, "CLOUDTRAIN_HOME": str(cli.home), "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    proc = subprocess.Popen([sys.executable, "-m", "cloudtrain.cli", *args], cwd=cli.cwd, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer closed its end
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_a_spinner_with_elapsed_time_and_a_pipe_plain_lines(node, tmp_path: Path) -> None:
    cli, _, proj = node
    code, drawn = _in_pty(cli, "run", str(proj / "slow.py"), "--output", str(tmp_path / "tty-out"))
    assert code == 0, drawn
    assert SPINNER & set(drawn), f"no spinner drawn on the terminal: {drawn[-2000:]!r}"
    assert re.search(r"0:00:0\d", drawn), f"no elapsed time on the terminal: {drawn[-2000:]!r}"
    assert "exited 0" in drawn and "working" in drawn  # the lines still scroll above it

    piped = cli("run", str(proj / "slow.py"), "--output", str(tmp_path / "pipe-out"))
    assert piped.returncode == 0, piped.stderr
    both = piped.stdout + piped.stderr
    assert ESCAPE not in both and "\r" not in both and not SPINNER & set(both), both
    lines = [line for line in piped.stderr.splitlines() if line]
    assert lines and all(line.startswith("cloudtrain: ") for line in lines), piped.stderr
    assert any("exited 0" in line for line in lines) and "working" in piped.stdout  # the job's own output: stdout


def test_quiet_prints_only_the_result(node, tmp_path: Path) -> None:
    cli, _, proj = node
    proc = cli("--quiet", "run", str(proj / "slow.py"), "--output", str(tmp_path / "q-out"))
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line]
    assert len(lines) == 1 and re.match(r"cloudtrain: job \S+ exited 0; \d+ file\(s\) in ", lines[0]), proc.stderr
    assert proc.stdout == "working\ndone\n"  # the job's own output is the job's: it still streams

    code, drawn = _in_pty(cli, "-q", "run", str(proj / "slow.py"), "--output", str(tmp_path / "q-tty"))
    assert code == 0, drawn
    assert not SPINNER & set(drawn) and "shipping" not in drawn and "exited 0" in drawn, drawn

    bad = cli("--quiet", "run", str(proj / "missing.py"))
    assert bad.returncode == 2 and bad.stderr.startswith("cloudtrain: error: "), bad.stderr  # errors still say why


def test_a_byte_phase_draws_bytes_rate_and_eta() -> None:
    """The bar the shipping and bringing-home phases get, fed as transfers feed it."""
    out = io.StringIO()
    reporter = progress.Reporter(progress.LIVE, stream=out)
    with reporter.phase("node-0: bringing home", total=None):
        progress_total = 64 << 20
        reporter_phase = progress._local.phase
        reporter_phase.expect(progress_total)
        for _ in range(16):  # half of it in 1.6 s: several refreshes (8/s) even on a busy machine
            reporter_phase.advance(2 << 20)
            time.sleep(0.1)
    reporter.say("job x exited 0")
    reporter.close()
    drawn = out.getvalue()
    assert "bringing home" in drawn and "/64.0 MiB" in drawn, drawn
    assert "MiB/s" in drawn and "ETA" in drawn, drawn
    assert "cloudtrain: job x exited 0" in drawn


def test_plain_mode_prints_the_lines_and_no_bar() -> None:
    out = io.StringIO()
    reporter = progress.Reporter(progress.PLAIN, stream=out)
    with reporter.phase("shipping", total=10):
        progress.advance(10)  # no live phase on this thread: a no-op
    reporter.say("cluster x is ready")
    assert out.getvalue() == "cloudtrain: cluster x is ready\n"
    quiet = progress.Reporter(progress.QUIET, stream=out)
    quiet.say("shipping 3 file(s)")
    quiet.say(progress.Result("job y exited 0"))
    quiet.say("warning: 1 output file(s) could not be brought home")
    assert out.getvalue().splitlines()[1:] == ["cloudtrain: job y exited 0", "cloudtrain: warning: 1 output file(s) could not be brought home"]
