"""Bootstrap steps run detached on the node: a connection cut mid-step (real sshd, real SSH)
loses nothing, the step completes exactly once, and a dpkg left interrupted is finished first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import local_cluster, _sshd_pids_under

from cloudtrain.bootstrap import apply as applier
from cloudtrain.bootstrap import detached, dpkg
from cloudtrain.bootstrap.steps import Step
from cloudtrain.layout import NodePaths
from cloudtrain.remote import SshRemote
from cloudtrain.state import Store


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    """A one-node local cluster (framework none): its Node, key and the node's root folder here."""
    with local_cluster(tmp_path_factory, "resume") as (cli, record):
        cluster = record.cluster
        assert cluster is not None
        identity = Store(cli.home).resolve("local").identity_file
        with SshRemote(cluster.nodes[0], identity) as remote:
            root = Path(NodePaths.of(remote).root)
        yield cluster.nodes[0], identity, root, cli.home
        with SshRemote(cluster.nodes[0], identity) as remote:
            applier.end_steps(remote)  # a failed test's stand-in step must not outlive it


def _descendants(pids: list[int]) -> list[int]:
    parent_of = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent_of[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], set(pids)
    while frontier:
        frontier = {pid for pid, parent in parent_of.items() if parent in frontier}
        found.extend(frontier)
    return found


def _cut_connections(home: Path) -> int:
    """Kill the node's sshd processes that serve connections (its monitor and the session
    process that holds the socket), as a dropped link would: the listener stays, so a
    reconnect works, and the step, in a session of its own, is not among them."""
    cut = 0
    daemons = _sshd_pids_under(home)  # the keeper and the listener: left running
    for pid in set(_descendants(daemons)) - set(daemons):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sshd"):
                os.kill(pid, signal.SIGKILL)
                cut += 1
        except (OSError, ProcessLookupError):
            pass
    return cut


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _long_step(name: str, root: Path) -> Step:
    """A stand-in for a long apt step: counts its starts, then runs until the test says go."""
    return Step(
        name,
        "a long stand-in step",
        script=f'echo started >> "$CLOUDTRAIN_NODE_ROOT/{name}.count"\n'
        f'while [ ! -e "$CLOUDTRAIN_NODE_ROOT/{name}.go" ]; do sleep 0.1; done\n'
        'echo "finished"\n',
    )


def _state(root: Path) -> dict[str, str]:
    return json.loads((root / "bootstrap" / "state.json").read_text())


def test_a_connection_cut_mid_step_is_survived_and_the_step_runs_exactly_once(node) -> None:
    n, key, root, home = node
    step = _long_step("cut-mid-step", root)
    said: list[str] = []
    failure: list[BaseException] = []

    def bootstrap() -> None:
        try:
            with SshRemote(n, key) as remote:
                applier.apply(remote, [step], {"is_root": True}, say=said.append)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            failure.append(e)

    worker = threading.Thread(target=bootstrap, daemon=True)
    worker.start()
    _wait_for(root / "cut-mid-step.count")
    time.sleep(0.5)  # the bootstrap is now watching the step over its connection
    assert _cut_connections(home) >= 1
    deadline = time.monotonic() + 60
    while not any("lost the connection" in s for s in said) and not failure:
        assert time.monotonic() < deadline, said
        time.sleep(0.05)
    (root / "cut-mid-step.go").touch()
    worker.join(120)
    assert not worker.is_alive()
    assert not failure, failure
    assert any("reconnected" in s for s in said), said
    assert (root / "cut-mid-step.count").read_text() == "started\n"  # exactly once
    assert _state(root)["cut-mid-step"] == step.fingerprint
    log = next((root / "bootstrap" / "logs").glob("*-cut-mid-step.log")).read_text()
    assert log.strip().endswith("finished")


def test_a_bootstrap_after_one_that_lost_the_node_reattaches_to_the_running_step(node) -> None:
    """The first bootstrap's process died (laptop closed) with its step still running on the
    node: the next one waits for that run instead of starting a second."""
    n, key, root, home = node
    step = _long_step("left-running", root)
    said: list[str] = []
    with SshRemote(n, key) as remote:
        paths = NodePaths.of(remote)
        remote.run(f"mkdir -p {paths.steps} {paths.logs}")
        script_path = f"{paths.steps}/00-left-running.sh"
        remote.write_text(script_path, f"#!/usr/bin/env bash\nset -euo pipefail\nexport CLOUDTRAIN_NODE_ROOT={paths.root}\n{step.script}", mode=0o700)
        detached.start(remote, script_path, f"{paths.logs}/00-left-running.log", "bash", step.fingerprint)
    _wait_for(root / "left-running.count")
    threading.Timer(1.0, (root / "left-running.go").touch).start()
    with SshRemote(n, key) as remote:
        outcomes = applier.apply(remote, [step], {"is_root": True}, say=said.append)
    assert [o.status for o in outcomes] == ["ran"]
    assert any("already running on the node; reattaching" in s for s in said), said
    assert (root / "left-running.count").read_text() == "started\n"
    assert _state(root)["left-running"] == step.fingerprint


def test_a_step_that_finished_while_no_bootstrap_watched_is_not_run_again(node) -> None:
    n, key, root, home = node
    step = _long_step("finished-unwatched", root)
    (root / "finished-unwatched.go").touch()
    with SshRemote(n, key) as remote:
        paths = NodePaths.of(remote)
        remote.run(f"mkdir -p {paths.steps} {paths.logs}")
        script_path = f"{paths.steps}/00-finished-unwatched.sh"
        remote.write_text(script_path, f"#!/usr/bin/env bash\nset -euo pipefail\nexport CLOUDTRAIN_NODE_ROOT={paths.root}\n{step.script}", mode=0o700)
        detached.start(remote, script_path, f"{paths.logs}/00-finished-unwatched.log", "bash", step.fingerprint)
        assert detached.wait(remote, script_path, lambda _: None).code == 0
        said: list[str] = []
        applier.apply(remote, [step], {"is_root": True}, say=said.append)
    assert any("had finished on the node" in s for s in said), said
    assert (root / "finished-unwatched.count").read_text() == "started\n"


def test_a_failing_step_still_names_itself_with_its_log_tail(node) -> None:
    n, key, root, home = node
    step = Step("fails-detached", "a failing step", script='echo "apt said no" >&2\nexit 4\n')
    with SshRemote(n, key) as remote, pytest.raises(Exception) as caught:
        applier.apply(remote, [step], {"is_root": True}, say=lambda _: None)
    assert "bootstrap step 'fails-detached' failed" in str(caught.value) and "apt said no" in str(caught.value)
    assert getattr(caught.value, "layer", None) == "fails-detached"


def test_the_dpkg_repair_runs_before_the_first_apt_step(node, monkeypatch: pytest.MonkeyPatch) -> None:
    n, key, root, home = node
    # A harmless stand-in: the real one would ask this machine's own dpkg (the node is this machine).
    monkeypatch.setattr(dpkg, "REPAIR", Step("dpkg-repair", "stand-in", script="echo checked\n", sudo=True))
    steps = [
        Step("plain-first", "no sudo", script="true\n"),
        Step("apt-like", "a sudo step", script="true\n", sudo=True),
        Step("apt-like-2", "another sudo step", script="true\n", sudo=True),
    ]
    with SshRemote(n, key) as remote:
        applier.apply(remote, steps, {"is_root": True}, say=lambda _: None)
    logs = root / "bootstrap" / "logs"
    assert (logs / "01-dpkg-repair.log").exists()
    assert not (logs / "00-dpkg-repair.log").exists() and not (logs / "02-dpkg-repair.log").exists()


def _dpkg_box(tmp_path: Path, interrupted: bool) -> tuple[dict[str, str], Path]:
    """The repair script's world: a sysroot and a stand-in dpkg that records its calls."""
    sysroot = tmp_path / "sysroot"
    (sysroot / "var/lib/dpkg/updates").mkdir(parents=True)
    if interrupted:
        (sysroot / "var/lib/dpkg/updates/0003").write_text("half-written status\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "dpkg").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (bin_dir / "dpkg").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CLOUDTRAIN_SYSROOT": str(sysroot)}
    return env, calls


@pytest.mark.parametrize("interrupted", [True, False])
def test_the_dpkg_repair_finishes_an_interrupted_dpkg_only(tmp_path: Path, interrupted: bool) -> None:
    env, calls = _dpkg_box(tmp_path, interrupted)
    proc = subprocess.run(["bash", "-c", "set -euo pipefail\n" + dpkg.REPAIR.script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    recorded = calls.read_text().splitlines()
    assert ("--configure -a" in recorded) == interrupted
    assert "--audit" in recorded or interrupted


def test_a_forgotten_step_runs_again(node) -> None:
    """What bootstrap does when the installed framework is the wrong build: the next one reinstalls."""
    n, key, root, home = node
    step = Step("forgettable", "counts its runs", script='echo run >> "$CLOUDTRAIN_NODE_ROOT/forgettable.count"\n')
    with SshRemote(n, key) as remote:
        applier.apply(remote, [step], {"is_root": True}, say=lambda _: None)
        assert [o.status for o in applier.apply(remote, [step], {"is_root": True}, say=lambda _: None)] == ["done before"]
        applier.forget(remote, "forgettable")
        assert [o.status for o in applier.apply(remote, [step], {"is_root": True}, say=lambda _: None)] == ["ran"]
    assert (root / "forgettable.count").read_text() == "run\nrun\n"
