"""Shared fixtures: an isolated cloudtrain home per test, and the CLI run as a real process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent


def pids_where(name: str, test: Callable[[bytes], bool]) -> list[int]:
    """Processes whose /proc/PID/<name> (cmdline, environ, stat) passes `test`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            data = (entry / name).read_bytes()
        except OSError:
            continue
        if test(data):
            pids.append(int(entry.name))
    return pids


def _sshd_pids_under(root: Path) -> list[int]:
    """sshd daemons whose command line names a config under `root` (the local provider's)."""
    return pids_where("cmdline", lambda cmd: b"sshd" in cmd and str(root).encode() in cmd)


@pytest.fixture(scope="session", autouse=True)
def _ctrl_c_reaches_the_cli() -> Iterator[None]:
    """The tests' Ctrl-C (SIGINT to a CLI process) must reach a handler. A suite started with `&`
    from a script inherits SIGINT ignored, and an ignored signal stays ignored across exec, so
    every CLI it starts would ignore it too; a handler here is reset to the default at exec."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture(scope="session", autouse=True)
def _matplotlib_cache(tmp_path_factory: pytest.TempPathFactory):
    """metrics.png's matplotlib keeps a font cache: the tests' (theirs and the CLI's they start) in a temp dir, not ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("MPLCONFIGDIR", str(tmp_path_factory.mktemp("matplotlib")))
    yield
    patch.undo()


@pytest.fixture(scope="session", autouse=True)
def _uv_cache(tmp_path_factory: pytest.TempPathFactory):
    """uv's cache, which local nodes share (provisioner/local.py): one for the session, in a temp
    dir, so torch is unpacked once and every later node's install links from it. One that the
    environment names (a CI cache kept between runs) is used as it is."""
    patch = pytest.MonkeyPatch()
    if not os.environ.get("UV_CACHE_DIR"):
        patch.setenv("UV_CACHE_DIR", str(tmp_path_factory.mktemp("uv-cache")))
    yield
    patch.undo()


_CLOUD_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                    "GOOGLE_APPLICATION_CREDENTIALS", "ARM_CLIENT_ID", "ARM_CLIENT_SECRET", "ARM_USE_MSI")


@pytest.fixture(autouse=True)
def _no_cloud_credentials_carry_over() -> Iterator[None]:
    """A test's cloud credentials end with it: a mock (moto's start/stop) undone in the wrong order
    once left moto's fake key in the process, and every later `down` of an unknown name asked AWS."""
    before = {k: os.environ.get(k) for k in _CLOUD_VARIABLES}
    yield
    for k, v in before.items():
        if os.environ.get(k) != v:
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh CLOUDTRAIN_HOME; after the test, no sshd of it may still run."""
    root = tmp_path / "ct-home"
    monkeypatch.setenv("CLOUDTRAIN_HOME", str(root))
    yield root
    leaked = _sshd_pids_under(root)
    for pid in leaked:  # clean up before failing, so one bad test does not poison the machine
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    assert not leaked, f"sshd processes left running: {leaked}"


class Cli:
    def __init__(self, home: Path, cwd: Path) -> None:
        self.home = home
        self.cwd = cwd

    def __call__(self, *args: str, timeout: float = 900, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "CLOUDTRAIN_HOME": str(self.home), **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "cloudtrain.cli", *args],
            cwd=cwd or self.cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
        )


@pytest.fixture
def cli(home: Path, tmp_path: Path) -> Cli:
    work = tmp_path / "work"
    work.mkdir()
    return Cli(home, work)


@contextlib.contextmanager
def local_cluster(tmp_path_factory: pytest.TempPathFactory, name: str, nodes: int = 1, framework: str = "none",
                  up_timeout: float = 300, down_timeout: float = 120) -> Iterator[tuple[Cli, Any]]:
    """A ready local cluster for a module's tests: the Cli (its home and work folder fresh under
    `name`) and the cluster's record. At the end it is downed, and no sshd of it may be left
    (any found is killed, then the test fails), nor its record."""
    from cloudtrain.state import Store

    base = tmp_path_factory.mktemp(name)
    home, work = base / "home", base / "work"
    work.mkdir()
    cli = Cli(home, work)
    try:
        proc = cli("up", "--provider", "local", "--nodes", str(nodes), "--framework", framework, timeout=up_timeout)
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield cli, Store(home).resolve("local").load()
    finally:
        down = cli("down", timeout=down_timeout)
        leaked = _sshd_pids_under(home)
        for pid in leaked:
            os.kill(pid, 9)
    assert down.returncode == 0, down.stderr
    assert not leaked, f"sshd left running after down: {leaked}"
    assert not (home / "clusters" / "local").exists()


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The stderr of a refused command: exactly one line, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {proc.stderr!r}"
    assert "Traceback" not in proc.stderr
    return lines[0]
