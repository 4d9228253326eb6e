"""Connections over a real two-node local cluster (real sshd, real SSH): one session per node per
command, counted in each node's sshd log; a lost session reopens; slow handshakes are retried
with backoff while a host-key mismatch never is."""

from __future__ import annotations

import os
import signal
import socket
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import Cli, local_cluster, pids_where

OUTPUT_SCRIPT = textwrap.dedent(
    """
    import os
    out = os.environ["CLOUDTRAIN_OUTPUT_DIR"]
    with open(os.path.join(out, "model.bin"), "wb") as f:
        f.write(os.urandom(3 << 20))
    print("rank", os.environ["CLOUDTRAIN_NODE_RANK"], "done", flush=True)
    """
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with local_cluster(tmp_path_factory, "connections", nodes=2) as (cli, _):
        yield cli


def _logins(home: Path) -> dict[str, int]:
    """Authenticated connections each node's sshd has logged so far (LogLevel INFO)."""
    logs = sorted(home.glob("clusters/**/sshd.log"))
    assert len(logs) == 2, logs
    return {log.parent.name: log.read_text(errors="replace").count("Accepted publickey") for log in logs}


def _ssh_clients_of(home: Path) -> list[int]:
    """OpenSSH client processes (masters included) using this cluster's key."""
    return pids_where("cmdline", lambda cmd: cmd.split(b"\0")[0].endswith(b"ssh") and str(home).encode() in cmd)


def _cluster_of(cli: Cli):
    from cloudtrain.state import Store

    record = Store(cli.home).cluster_dir("local").load()
    assert record.cluster is not None
    return record.cluster


def test_a_run_opens_one_control_and_one_bulk_connection_per_node(cluster: Cli, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "train.py").write_text(OUTPUT_SCRIPT)
    for i in range(5):
        (proj / f"data-{i}.txt").write_text(f"data {i}\n" * 1000)
    before = _logins(cluster.home)
    proc = cluster("run", str(proj / "train.py"), "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "model.bin").stat().st_size == 3 << 20
    assert (tmp_path / "out" / "rank-1" / "model.bin").stat().st_size == 3 << 20
    after = _logins(cluster.home)
    # Ship, start, follow and collect share each node's session: paramiko's control connection
    # and the one OpenSSH master that the workdir upload and the outputs download both ride.
    assert {n: after[n] - before[n] for n in after} == {n: 2 for n in after}
    assert _ssh_clients_of(cluster.home) == [], "an OpenSSH master outlived the command"


RUN_PROBE = """
import json, sys
from cloudtrain.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = ("cloudtrain.bootstrap", "cloudtrain.compat", "cloudtrain.lifecycle", "pulumi", "pydantic", "invoke", "rich", "yaml", "importlib.metadata", "email")
print(json.dumps({"code": code, "loaded": sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))}), file=sys.stderr)
"""


def test_a_run_loads_only_what_reaching_nodes_needs(cluster: Cli, tmp_path: Path) -> None:
    """Issue 9: a no-op run costs little more than one ssh. It loaded the whole bootstrap (and the
    resolver's tables) for one facts file, pydantic for its plain str/Path/int options and invoke
    with paramiko, importlib.metadata (and the email parser) for paramiko's version; none is needed to
    ship, run and collect a job."""
    import json
    import subprocess
    import sys

    (tmp_path / "noop.py").write_text("pass\n")
    env = {**os.environ, "CLOUDTRAIN_HOME": str(cluster.home)}
    argv = ["run", str(tmp_path / "noop.py"), "--output", str(tmp_path / "out"), "-e", "A=1", "--", "x"]
    proc = subprocess.run([sys.executable, "-c", RUN_PROBE, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    probe = json.loads(proc.stderr.strip().splitlines()[-1])
    assert probe["code"] == 0, proc.stderr
    assert probe["loaded"] == [], f"`cloudtrain run` loaded {probe['loaded']}"
    assert (tmp_path / "out" / "manifest.json").exists()
    bad = cluster("run", str(tmp_path / "noop.py"), "--nproc-per-node", "one")  # typer still checks what it is given
    assert bad.returncode == 2 and "--nproc-per-node" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_node_paths_are_remembered_per_node_and_a_damaged_or_stale_entry_is_asked_again(cluster: Cli, tmp_path: Path) -> None:
    """Each command asked every node where cloudtrain lives (a node-side shell each, issue 9);
    the answer is kept in the cluster's folder, keyed by the node's address and host key."""
    import json

    remembered = cluster.home / "clusters" / "local" / "node-paths.json"
    (tmp_path / "noop.py").write_text("pass\n")
    remembered.write_text("{not json")  # damaged: ignored and replaced
    assert cluster("run", str(tmp_path / "noop.py"), "--output", str(tmp_path / "a")).returncode == 0
    known = json.loads(remembered.read_text())
    nodes = {n.name: n for n in _cluster_of(cluster).nodes}
    assert set(known) == set(nodes)
    for name, entry in known.items():
        assert entry["root"].endswith(f"{name}/root") and nodes[name].host_key in entry["node"]
    # An entry for another machine under the same name (a replaced node) is not believed.
    stale = {name: {"node": "root@10.9.9.9:22 ssh-ed25519 AAAAstale", "root": "/nowhere"} for name in known}
    remembered.write_text(json.dumps(stale))
    proc = cluster("run", str(tmp_path / "noop.py"), "--output", str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(remembered.read_text()) == known


def test_an_unchanged_workdirs_run_starts_python_on_a_node_only_for_sync_tracker_job_and_collect(cluster: Cli, tmp_path: Path) -> None:
    """Issue 9: each node-side python start is most of a no-op run's cost on a loaded node. The
    workdir's cache was read by one start and updated by another, and run.sh started one more to
    find NCCL's interface. Counted on the nodes: their venv python is wrapped to log each start."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "noop.py").write_text(
        "import os, sys\nif sys.argv[1:]:\n    open(os.path.join(os.environ['CLOUDTRAIN_OUTPUT_DIR'], 'm.bin'), 'wb').write(os.urandom(int(sys.argv[1])))\n"
    )
    pythons = sorted(cluster.home.glob("clusters/local/provider/*/root/venv/bin/python"))
    assert len(pythons) == 2, pythons
    starts = {p: tmp_path / f"starts-{p.parents[3].name}.log" for p in pythons}
    assert cluster("run", str(tmp_path / "proj" / "noop.py"), "--output", str(tmp_path / "first")).returncode == 0  # ships it
    try:
        for python, log in starts.items():
            python.rename(python.with_name("python.real"))  # in the venv's bin: still the venv's python
            python.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" | head -c 300 | tr "\\n" " " >> {log}; echo >> {log}\nexec "$0.real" "$@"\n')
            python.chmod(0o755)
        before = _logins(cluster.home)
        proc = cluster("run", str(tmp_path / "proj" / "noop.py"), "--output", str(tmp_path / "second"))
        assert proc.returncode == 0, proc.stderr
        after = _logins(cluster.home)
        # Nothing to ship and a log to bring home: no OpenSSH master is started for them.
        assert {n: after[n] - before[n] for n in after} == {n: 1 for n in after}
    finally:
        for python in starts:
            if python.with_name("python.real").exists():
                python.with_name("python.real").replace(python)
    for python, log in starts.items():
        lines = log.read_text().splitlines()
        syncs = [line for line in lines if "incremental workdir" in line]  # its first lines hold sync_node_cache.py's docstring
        assert len(syncs) == 1, proc.stderr
        assert not [line for line in lines if "ipaddress" in line], lines  # the NCCL interface probe
        assert len(lines) == 4, lines  # the sync, the tracker, the job, the outputs' sender
    # Outputs that are not small still come home over OpenSSH (paramiko re-keys at 512 MiB).
    before = _logins(cluster.home)
    proc = cluster("run", str(tmp_path / "proj" / "noop.py"), "--output", str(tmp_path / "big"), "--", str(33 << 20))
    assert proc.returncode == 0, proc.stderr
    after = _logins(cluster.home)
    assert {n: after[n] - before[n] for n in after} == {n: 2 for n in after}
    assert (tmp_path / "big" / "m.bin").stat().st_size == (tmp_path / "big" / "rank-1" / "m.bin").stat().st_size == 33 << 20


WAITING_JOB = textwrap.dedent(
    """
    import os, sys, time
    while not os.path.exists(sys.argv[1]):  # the test says when the job may end
        time.sleep(0.05)
    with open(os.path.join(os.environ["CLOUDTRAIN_OUTPUT_DIR"], "model.bin"), "wb") as f:
        f.write(b"m" * 1000)
    """
)


def _senders(home: Path) -> list[int]:
    """This cluster's outputs senders (wire.SENDER, its source on the command line) on its nodes."""
    return pids_where("cmdline", lambda cmd: b"F_SETPIPE_SZ" in cmd and str(home).encode() in cmd)


def _until(check, seconds: float = 30.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + seconds
    while not (found := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _start_run(cluster: Cli, tmp_path: Path, flag: Path, out: Path):  # noqa: ANN202
    import subprocess
    import sys

    (tmp_path / "job.py").write_text(WAITING_JOB)
    env = {**os.environ, "CLOUDTRAIN_HOME": str(cluster.home)}
    argv = [sys.executable, "-m", "cloudtrain.cli", "run", str(tmp_path / "job.py"), "--output", str(out), "--", str(flag)]
    return subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_outputs_sender_is_started_while_the_job_runs_and_ends_with_the_run(cluster: Cli, tmp_path: Path) -> None:
    """Issue 9: the sender started after follow saw the job end, a command's round trips and a
    python start on the node after the job's last second; it now waits on each node while the
    job runs and is given its request at the end. The outputs still come home, verified."""
    flag, out = tmp_path / "go", tmp_path / "out"
    proc = _start_run(cluster, tmp_path, flag, out)
    try:
        waiting = _until(lambda: len(_senders(cluster.home)) == 2)
    finally:
        flag.touch()
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert waiting, "no outputs sender waited on the nodes while the job ran"
    assert (out / "model.bin").read_bytes() == (out / "rank-1" / "model.bin").read_bytes() == b"m" * 1000
    assert _senders(cluster.home) == []


def test_an_interrupted_run_leaves_no_waiting_sender_and_logs_f_brings_the_outputs_home(cluster: Cli, tmp_path: Path) -> None:
    flag, out = tmp_path / "go", tmp_path / "out"
    proc = _start_run(cluster, tmp_path, flag, out)
    try:
        assert _until(lambda: len(_senders(cluster.home)) == 2), "no outputs sender waited on the nodes while the job ran"
        jobs = lambda: set(pids_where("cmdline", lambda cmd: b"job.py" in cmd and str(flag).encode() in cmd)) - {proc.pid}  # noqa: E731
        assert _until(lambda: len(jobs()) == 2), "the job never started on both nodes"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert _until(lambda: _senders(cluster.home) == [], 20), "a sender still waits on a node after `run` ended"
    job_id = max((cluster.home / "jobs").glob("job-*.json"), key=lambda p: p.stat().st_mtime).stem
    flag.touch()
    logs = cluster("logs", job_id, "-f", timeout=300)
    assert logs.returncode == 0, logs.stderr
    assert (out / "model.bin").read_bytes() == (out / "rank-1" / "model.bin").read_bytes() == b"m" * 1000


def test_outputs_come_home_when_the_waiting_senders_die(cluster: Cli, tmp_path: Path) -> None:
    """A waiting sender lost before the job's end (killed; or gone with its connection) costs a
    fresh stream at collect, never the outputs."""
    import json

    flag, out = tmp_path / "go", tmp_path / "out"
    proc = _start_run(cluster, tmp_path, flag, out)
    try:
        assert _until(lambda: len(_senders(cluster.home)) == 2), "no outputs sender waited on the nodes while the job ran"
        for pid in _senders(cluster.home):
            os.kill(pid, signal.SIGKILL)
    finally:
        flag.touch()
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert (out / "model.bin").read_bytes() == (out / "rank-1" / "model.bin").read_bytes() == b"m" * 1000
    assert json.loads((out / "manifest.json").read_text())["complete"] is True


def test_an_empty_checkpoint_folder_is_polled_without_a_command_on_the_node(cluster: Cli, tmp_path: Path) -> None:
    """Issue 9: every run's last checkpoint poll ran a shell and an ls on the node to find the
    folder empty; an SFTP listing on the open session says so. A checkpoint still comes home."""
    from cloudtrain.jobs import checkpoints
    from cloudtrain.layout import NodePaths
    from cloudtrain.remote import SshRemote

    c = _cluster_of(cluster)
    with SshRemote(c.head, c.identity_file) as remote:
        paths = NodePaths.of(remote)
        job = paths.job("probe-checkpoints")
        remote.run(f"mkdir -p {checkpoints.node_dir(job)}")
        commands: list[str] = []
        real_run = remote.run
        remote.run = lambda command, **kw: (commands.append(command), real_run(command, **kw))[1]  # type: ignore[method-assign]
        puller = checkpoints.Puller(remote, lambda _: paths, "probe-checkpoints", tmp_path / "out", lambda _: None)
        assert puller.poll(final=True) == [] and commands == []
        real_run(f"echo weights > {checkpoints.node_dir(job)}/step-1.pt")
        assert puller.poll(final=True) == ["step-1.pt"]
        assert (tmp_path / "out" / "checkpoints" / "step-1.pt").read_text() == "weights\n"
        real_run(f"rm -rf {job.dir}")


def test_warming_up_connects_to_every_node_while_the_job_is_planned(cluster: Cli, tmp_path: Path) -> None:
    """Issue 9: once the node paths were remembered, `warm` had nothing left to ask the nodes and
    the handshake waited for the workdir's shipping; it now connects while the job is planned."""
    from cloudtrain.jobs.runner import JobRunner
    from cloudtrain.state import Store

    (tmp_path / "noop.py").write_text("pass\n")
    assert cluster("run", str(tmp_path / "noop.py"), "--output", str(tmp_path / "out")).returncode == 0  # the paths are remembered
    store = Store(cluster.home)
    c = _cluster_of(cluster)
    before = _logins(cluster.home)
    with JobRunner(store, store.cluster_dir("local"), c, say=lambda _: None) as runner:
        runner.warm()
        for node in c.nodes:
            runner.remote(node)  # waits for that node's warm-up; no command runs
        assert {n: _logins(cluster.home)[n] - before[n] for n in before} == {n: 1 for n in before}


def test_the_control_connection_sends_small_messages_at_once(cluster: Cli) -> None:
    """Issue 9: paramiko leaves Nagle on; a command's stdin and its end (or a channel request
    after another) were two small packets, the second held until the node's delayed ACK, so
    every command cost ~40 ms more on loopback (88 ms a `run` with stdin, 8 with TCP_NODELAY)."""
    from cloudtrain.remote import SshRemote

    c = _cluster_of(cluster)
    with SshRemote(c.head, c.identity_file) as remote:
        sock = remote.client().get_transport().sock  # type: ignore[union-attr]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert remote.run("cat", stdin=b"through").stdout == "through"


def test_a_session_whose_peer_was_killed_reopens_on_next_use(cluster: Cli) -> None:
    from cloudtrain.jobs.sessions import Sessions

    node = _cluster_of(cluster).head
    with Sessions(_cluster_of(cluster).identity_file) as sessions:
        remote = sessions.of(node)
        server = int(remote.run("echo $PPID").stdout)  # the node's sshd process for this connection
        transport = remote.client().get_transport()
        assert transport is not None
        before = _logins(cluster.home)[node.name]
        os.kill(server, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while transport.is_active() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not transport.is_active(), "the killed peer went unnoticed"
        assert sessions.of(node) is remote  # one session per node: the same object, reconnected
        assert int(remote.run("echo $PPID").stdout) != server
        assert _logins(cluster.home)[node.name] == before + 1


class _Stall:
    """A loopback listener whose first connection is accepted and then stalls (silent, or a
    banner and then silence); every later one is relayed to the node's real sshd."""

    def __init__(self, target: tuple[str, int], first: bytes) -> None:
        self.target, self.first = target, first
        self.accepted = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted == 1:
                conn.sendall(self.first)
                self._held.append(conn)  # open and silent: the client's handshake times out
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        for s in self._held:
            s.close()


@pytest.mark.parametrize("first", [b"", b"SSH-2.0-OpenSSH_9.2\r\n"], ids=["banner-timeout", "key-exchange-timeout"])
def test_a_handshake_that_times_out_is_retried(cluster: Cli, first: bytes) -> None:
    from cloudtrain.remote import SshRemote

    c = _cluster_of(cluster)
    stall = _Stall((c.head.host, c.head.port), first)
    try:
        node = replace(c.head, host="127.0.0.1", port=stall.port)
        with SshRemote(node, c.identity_file, connect_timeout=60, handshake_timeout=1.0) as remote:
            assert remote.run("echo through").stdout == "through\n"
        assert stall.accepted == 2
    finally:
        stall.close()


def test_a_host_key_mismatch_is_never_retried(cluster: Cli) -> None:
    from cloudtrain.errors import HostKeyMismatch
    from cloudtrain.remote import SshRemote

    c = _cluster_of(cluster)
    stall = _Stall((c.head.host, c.head.port), b"")
    stall.accepted = 1  # relay from the first connection on
    try:
        other = c.nodes[1].host_key  # a real key, but another node's
        node = replace(c.head, host="127.0.0.1", port=stall.port, host_key=other)
        with SshRemote(node, c.identity_file, connect_timeout=60, handshake_timeout=1.0) as remote:
            with pytest.raises(HostKeyMismatch):
                remote.run("true")
        assert stall.accepted == 2  # one connection: refused at once, never tried again
    finally:
        stall.close()
