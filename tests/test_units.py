"""Small pieces on their own: specs, workdir selection, metrics, the remote's error boundary."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloudtrain import keys
from cloudtrain.errors import BadInput, RemoteError
from cloudtrain.jobs import metrics
from cloudtrain.jobs.record import exit_meaning
from cloudtrain.jobs.workdir import select_files
from cloudtrain.machine import Cluster, Node
from cloudtrain.remote import SshRemote
from cloudtrain.spec import ClusterSpec, FrameworkSpec, JobSpec, parse_env, parse_gpu
from cloudtrain.state import ClusterRecord, Store


def test_framework_spec_parsing() -> None:
    assert FrameworkSpec.parse("torch==2.13.0") == FrameworkSpec("torch", "2.13.0")
    assert FrameworkSpec.parse("JAX") == FrameworkSpec("jax", None)
    assert str(FrameworkSpec.parse("tensorflow==2.20.0")) == "tensorflow==2.20.0"
    for bad in ("caffe", "torch==", "none==1", "torch==;rm -rf /"):
        with pytest.raises(BadInput):
            FrameworkSpec.parse(bad)


def test_gpu_env_and_spec_validation() -> None:
    assert parse_gpu("A100:8") == ("a100", 8)
    assert parse_gpu("t4") == ("t4", 1)
    for bad in ("a100:0", "a100:x", ":2"):
        with pytest.raises(BadInput):
            parse_gpu(bad)
    assert parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    for bad in (["A"], ["1A=2"], ["=v"]):
        with pytest.raises(BadInput):
            parse_env(bad)
    with pytest.raises(BadInput, match="whole internet"):
        ClusterSpec(name="x", provider="aws", ssh_cidr="0.0.0.0/0")
    spec = ClusterSpec(name="ok-1", provider="local", nodes=3, framework=FrameworkSpec("torch", "2.13.0"))
    assert ClusterSpec.from_dict(spec.to_dict()) == spec


def test_job_spec_paths(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    script = tmp_path / "a" / "train.py"
    script.write_text("")
    job = JobSpec.build(script)
    assert job.workdir == tmp_path / "a" and job.script_rel == "train.py"
    job = JobSpec.build(script, workdir=tmp_path)
    assert job.script_rel == "a/train.py"
    (tmp_path / "b").mkdir()
    with pytest.raises(BadInput, match="outside"):
        JobSpec.build(script, workdir=tmp_path / "b")


def _make_tree(root: Path) -> None:
    for rel, text in {
        "train.py": "", "data/x.csv": "", "data/cache/big.bin": "", "notes.log": "", "keep.log": "",
        ".venv/lib/site.py": "", "sub/__pycache__/m.pyc": "", "sub/m.py": "", "outs/r.txt": "",
        ".gitignore": "*.log\n!keep.log\ndata/cache/\n", ".cloudtrainignore": "data/*.csv\n",
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


EXPECTED = [".cloudtrainignore", ".gitignore", "keep.log", "sub/m.py", "train.py"]


def test_select_files_outside_git(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    assert select_files(tmp_path, exclude=[tmp_path / "outs"]) == EXPECTED


def test_select_files_outside_git_honours_nested_gitignores_and_skips_tool_caches(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    for rel, text in {
        "sub/.gitignore": "m.py\n/local-only.txt\n", "sub/local-only.txt": "", "sub/deeper/local-only.txt": "",
        ".mypy_cache/.gitignore": "*\n", ".mypy_cache/3.11/x.json": "", ".pytest_cache/v/cache": "",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert select_files(tmp_path, exclude=[tmp_path / "outs"]) == [
        ".cloudtrainignore", ".gitignore", "keep.log", "sub/.gitignore", "sub/deeper/local-only.txt", "train.py",
    ]


def test_select_files_in_a_git_repo_uses_git_rules(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    (tmp_path / "sub" / ".gitignore").write_text("m.py\n")  # nested rules: only git knows them all
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert select_files(tmp_path, exclude=[tmp_path / "outs"]) == [".cloudtrainignore", ".gitignore", "keep.log", "sub/.gitignore", "train.py"]


def test_metrics_read_and_render(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text('{"test_accuracy": 0.9712, "device": "cpu"}')
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "loss": 2.0}\nnot json\n{"epoch": 2, "loss": 1.0}\n{"epoch": 3, "loss": 0.5}\n')
    summary, series = metrics.read(tmp_path)
    assert summary["test_accuracy"] == 0.9712 and len(series) == 3
    lines = metrics.render(summary, series)
    assert lines[0] == "metrics: test_accuracy=0.9712, device=cpu"
    assert lines[1].split()[:2] == ["loss", "█▃▁"]
    assert metrics.read(tmp_path / "missing") == ({}, [])


def test_remote_unreachable_becomes_one_actionable_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    identity = tmp_path / "id_ed25519"
    keys.write_pair(identity)
    _, host_key = keys.generate()
    node = Node("n0", "127.0.0.1", port, "nobody", host_key, "127.0.0.1")
    started = time.monotonic()
    with pytest.raises(RemoteError) as info:
        SshRemote(node, identity, connect_timeout=2).run("true")
    assert time.monotonic() - started < 15
    assert "cannot reach node n0" in info.value.line() and "\n" not in info.value.line()


def test_status_shows_what_each_cluster_costs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cloud cluster's record alone (no cloud involved: status only reads records) shows its
    hourly price and what it has cost so far, so a forgotten VM is visible."""
    monkeypatch.setenv("CLOUDTRAIN_HOME", str(tmp_path / "home"))
    store = Store()
    cdir = store.cluster_dir("aws-t4")
    cdir.create()
    node = Node("aws-t4-0", "203.0.113.9", 22, "ubuntu", keys.generate()[1], "10.77.0.5")
    spec = ClusterSpec(name="aws-t4", provider="aws", gpu="t4", nodes=2, region="us-east-1", ssh_cidr="198.51.100.7/32")
    record = ClusterRecord(spec=spec, cluster=Cluster("aws-t4", (node,), cdir.identity_file), status="ready")
    record.created_at -= 2 * 3600 - 10  # up for two hours, less the seconds the status calls below take (a node probe each)
    cdir.save(record)
    proc = subprocess.run([sys.executable, "-m", "cloudtrain.cli", "status", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)["clusters"]
    assert row["price_per_hour"] == pytest.approx(2 * 0.526)
    assert row["cost_so_far"] == pytest.approx(2 * 0.526 * 2, abs=0.01)
    text = subprocess.run([sys.executable, "-m", "cloudtrain.cli", "status"], capture_output=True, text=True).stdout
    assert "$1.05/h, ~$2.10 so far" in text


def test_outputs_named_outside_their_folder_are_refused(tmp_path: Path) -> None:
    from cloudtrain.errors import TransferError
    from cloudtrain.jobs.transfer import _safe

    # Names are the node's bytes (any encoding); only their shape is checked.
    assert _safe(b"a/b\xff.txt") == b"a/b\xff.txt"
    for bad in (b"../../.bashrc", b"/etc/passwd", b"a/../../x", b"a//b", b"./a"):
        with pytest.raises(TransferError):
            _safe(bad)


def test_exit_codes_from_a_signal_are_named() -> None:
    # The node's run.sh records the shell's status: 128+N when the job died of signal N.
    aborted = subprocess.run(["bash", "-c", f"{sys.executable} -c 'import os; os.abort()'; exit $?"]).returncode
    assert aborted == 134
    assert exit_meaning(aborted) == " (SIGABRT: the process aborted)"
    killed = subprocess.run(["bash", "-c", "sleep 30 & kill -KILL $!; wait $!"]).returncode
    assert "SIGKILL" in exit_meaning(killed) and "out-of-memory" in exit_meaning(killed)
    assert exit_meaning(3) == exit_meaning(0) == exit_meaning(128) == ""


def test_a_stale_sshd_pid_file_stops_only_our_own_sshd(tmp_path: Path) -> None:
    """After a reboot the pid in sshd.pid may belong to an unrelated process: it is left
    alone; a process whose command line names this node's sshd_config is stopped."""
    from cloudtrain.provisioner.local import LocalProvisioner

    node_dir = tmp_path / "local-0"
    node_dir.mkdir()
    pidfile = node_dir / "sshd.pid"
    stranger = subprocess.Popen(["sleep", "60"])
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(node_dir / "sshd_config")])
    try:
        deadline = time.monotonic() + 10  # until the child has exec'd: before, it shows our own command line
        while str(node_dir).encode() not in Path(f"/proc/{ours.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        pidfile.write_text(f"{stranger.pid}\n")
        LocalProvisioner._stop_pidfile(pidfile)
        assert stranger.poll() is None, "an unrelated process was stopped"
        pidfile.write_text(f"{ours.pid}\n")
        LocalProvisioner._stop_pidfile(pidfile)
        assert ours.wait(timeout=10) is not None
    finally:
        for p in (stranger, ours):
            p.kill()
            p.wait()


def test_a_job_session_id_is_trusted_only_where_it_cannot_be_someone_elses(tmp_path: Path) -> None:
    """Pids are reused (pid_max is 32768 on small machines), so a job's recorded pid only
    ties processes to the node when its session could not belong to anyone else."""
    import os

    from cloudtrain.provisioner.local_processes import JobSession, Proc, belongs, job_sessions

    root = tmp_path / "root"
    marker = f"CLOUDTRAIN_NODE_ROOT={root}".encode()
    ours = b"PATH=/bin\0" + marker + b"\0"
    job = JobSession(sid=4242, started=1000.0, ended=1100.0)
    orphan = Proc(pid=5000, sid=4242, started=1050.0, environ=b"")  # env={} child; its leader has exited
    assert belongs(orphan, marker, [job], [orphan])
    assert belongs(Proc(6000, 1, 1.0, ours), marker, [], [])  # the environment mark alone suffices
    later = Proc(pid=5001, sid=4242, started=1200.0, environ=b"")  # born after the job ended: a reused sid
    assert not belongs(later, marker, [job], [later])
    stranger_leader = Proc(pid=4242, sid=4242, started=1050.0, environ=b"PATH=/bin\0")
    assert not belongs(orphan, marker, [job], [orphan, stranger_leader])
    assert belongs(orphan, marker, [job], [orphan, Proc(4242, 4242, 1001.0, ours)])
    assert not belongs(Proc(os.getpid(), 4242, 1050.0, ours), marker, [job], [])  # never cloudtrain itself

    # Pid files: one written in this boot counts, one from before the last boot does not.
    for job_id, pid, age in (("fresh", "4242", 0.0), ("stale", "4343", 10 * 365 * 86400.0)):
        d = root / "jobs" / job_id
        d.mkdir(parents=True)
        (d / "pid").write_text(pid + "\n")
        os.utime(d / "pid", (time.time() - age, time.time() - age))
    (root / "jobs" / "fresh" / "exit_code").write_text("0\n")
    [found] = job_sessions(root)
    assert found.sid == 4242 and found.ended is not None


def test_reusing_a_framework_preinstalled_in_a_venv_makes_it_importable(tmp_path: Path) -> None:
    """Deep-learning images often install the framework in a venv that python3 resolves to.
    A job venv made --system-site-packages from it would see only the base interpreter's
    packages; the venv step names the parent venv's packages too. Real venvs, real bash."""
    import os

    from cloudtrain.bootstrap import gpu, plan

    parent = tmp_path / "opt-pytorch"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(parent)], check=True)
    purelib = subprocess.run([str(parent / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "preinstalled_fw.py").write_text("VERSION = '2.11.0+cu130'\n")

    def job_venv(reuse: bool) -> subprocess.CompletedProcess:
        venv = tmp_path / ("reusing" if reuse else "fresh")
        step = plan._venv(gpu.Install((), system_site_packages=reuse))
        env = {**os.environ, "PATH": f"{parent / 'bin'}:{os.environ['PATH']}", "CLOUDTRAIN_VENV": str(venv)}
        ran = subprocess.run(["bash", "-c", "set -euo pipefail\n" + step.script], env=env, capture_output=True, text=True)
        assert ran.returncode == 0, ran.stderr
        return subprocess.run([str(venv / "bin/python"), "-c", "import preinstalled_fw; print(preinstalled_fw.VERSION)"],
                              capture_output=True, text=True)

    assert job_venv(reuse=True).stdout.strip() == "2.11.0+cu130"
    assert job_venv(reuse=False).returncode != 0  # a fresh venv stays isolated
