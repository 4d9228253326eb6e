"""Records are never a single point of failure, and `up`/`down` decide under the cluster's lock.

Real damaged files (truncated JSON, garbage bytes, `{}`, `null`, a truncated job record) under a
real home, read by the real CLI against real local clusters (real sshd); the cloud case uses the
fake engine at the pulumi.automation boundary, as tests/test_stack.py does.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Cli, _sshd_pids_under, one_line_error

UP = ("up", "--provider", "local", "--framework", "none")
SCRIPT = "import os\nopen(os.path.join(os.environ['CLOUDTRAIN_OUTPUT_DIR'], 'out.txt'), 'w').write('ok')\n"
DAMAGE = {
    "truncated": b'{\n  "cluster": {\n    "identity_file": "/x",\n    "na',
    "garbage": b"\x00\xff\xfe garbage \x89PNG\r\n",
    "empty object": b"{}",
    "null": b"null",
}


def _alive(pids: list[int]) -> bool:
    return any(Path(f"/proc/{p}").exists() for p in pids)


def test_a_damaged_cluster_record_hides_nothing_else_and_down_force_removes_it(cli: Cli) -> None:
    assert cli(*UP, "--name", "good", timeout=300).returncode == 0
    assert cli(*UP, "--name", "bad", timeout=300).returncode == 0
    (cli.cwd / "train.py").write_text(SCRIPT)
    bad_dir = cli.home / "clusters" / "bad"
    bad_sshd = _sshd_pids_under(bad_dir)
    assert bad_sshd, "the cluster to damage should be running"
    # An unrelated job's record, truncated: skipped with a warning everywhere.
    (cli.home / "jobs").mkdir(exist_ok=True)
    (cli.home / "jobs" / "old-job-20260101-000000-abcd.json").write_bytes(b'{"job_id": "old-job-2026')

    logs = cli("logs", "old-job-20260101-000000-abcd")
    assert logs.returncode == 1 and "old-job-20260101-000000-abcd.json" in one_line_error(logs)

    for kind, data in DAMAGE.items():
        (bad_dir / "cluster.json").write_bytes(data)

        status = cli("status", "--json")
        assert status.returncode == 0, f"{kind}: {status.stderr}"
        assert "Traceback" not in status.stderr
        listed = json.loads(status.stdout)
        assert [c["name"] for c in listed["clusters"]] == ["good"], kind
        assert [d["name"] for d in listed["damaged"]] == ["bad"], kind
        assert str(bad_dir / "cluster.json") in status.stderr and "down --force --cluster bad" in status.stderr
        assert "skipping job old-job" in status.stderr
        text = cli("status")
        assert text.returncode == 0 and "good" in text.stdout and "damaged" in text.stdout, (kind, text.stderr)

        config = cli("ssh-config")
        assert config.returncode == 0 and "Host good-0" in config.stdout and "skipping cluster bad" in config.stderr, (kind, config.stderr)

        run = cli("run", "train.py", "--cluster", "good", "--output", str(cli.cwd / "out" / kind.replace(" ", "-")))
        assert run.returncode == 0, f"{kind}: {run.stderr}"
        assert (cli.cwd / "out" / kind.replace(" ", "-") / "out.txt").read_text() == "ok"

        on_bad = cli("run", "train.py", "--cluster", "bad")
        assert on_bad.returncode == 1, (kind, on_bad.stderr)
        assert str(bad_dir / "cluster.json") in one_line_error(on_bad)

        refused = cli("down", "--cluster", "bad", timeout=120)
        assert refused.returncode == 1, (kind, refused.stderr)
        line = one_line_error(refused)
        assert str(bad_dir / "cluster.json") in line and "--force" in line
        assert _alive(bad_sshd), "a refused down must destroy nothing"

    forced = cli("down", "--force", "--cluster", "bad", timeout=120)
    assert forced.returncode == 0, forced.stderr
    assert "Traceback" not in forced.stderr
    deadline = time.monotonic() + 10
    while _alive(bad_sshd) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(bad_sshd) and not _sshd_pids_under(bad_dir), "an sshd of the damaged cluster still runs"
    assert not bad_dir.exists()
    assert _sshd_pids_under(cli.home / "clusters" / "good"), "the other cluster must be untouched"
    again = cli("down", "--cluster", "bad")
    assert again.returncode == 0 and "already destroyed" in again.stderr

    down = cli("down", "--cluster", "good", timeout=120)
    assert down.returncode == 0, down.stderr
    assert "skipping job old-job" in down.stderr


def test_down_force_finds_a_local_cluster_whose_record_and_pid_files_are_gone(cli: Cli) -> None:
    """No readable marker, record or pid file: the node folders alone say it was the local provider."""
    assert cli(*UP, "--name", "lost", timeout=300).returncode == 0
    root = cli.home / "clusters" / "lost"
    pids = _sshd_pids_under(root)
    (root / "cluster.json").write_bytes(b"\x00" * 10)
    (root / "provider.txt").write_bytes(b"\xff\x00lo")  # the marker as damaged as the record
    for pidfile in (root / "provider").glob("*/sshd.pid"):
        pidfile.write_text("garbage")
    forced = cli("down", "--force", "--cluster", "lost", timeout=120)
    assert forced.returncode == 0, forced.stderr
    deadline = time.monotonic() + 10
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pids) and not root.exists()


def _lock_waiters(lock: Path) -> int:
    """How many processes wait for a flock on `lock` (the kernel's own list, /proc/locks)."""
    inode = os.stat(lock).st_ino
    waiting = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and any(f.count(":") == 2 and f.rsplit(":", 1)[1] == str(inode) for f in fields):
            waiting += 1
    return waiting


def test_two_concurrent_ups_of_one_name_with_different_specs_one_wins(cli: Cli) -> None:
    """Both `up`s are let through their early checks while the test holds the cluster's lock,
    so both reach the lock before either has made anything: the race, every time."""
    lock = cli.home / "clusters" / ".same.lock"
    lock.parent.mkdir(parents=True)
    env = {**os.environ, "CLOUDTRAIN_HOME": str(cli.home)}
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        procs = [
            subprocess.Popen([sys.executable, "-m", "cloudtrain.cli", *UP, "--name", "same", *extra], cwd=cli.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for extra in ((), ("--nodes", "2"))
        ]
        deadline = time.monotonic() + 120  # a bound on the wait, not a speed check
        while _lock_waiters(lock) < 2 and all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        fcntl.flock(held, fcntl.LOCK_UN)
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(code for code, _ in results)
    try:
        assert codes == [0, 2], results
        loser = next(err for code, err in results if code == 2)
        assert "different spec" in loser and "Traceback" not in loser
    finally:
        assert cli("down", "--cluster", "same", timeout=120).returncode == 0


NO_CLOUD_CREDENTIALS = {
    **{k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                       "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "GOOGLE_APPLICATION_CREDENTIALS", "ARM_CLIENT_ID", "ARM_USE_MSI")},
    **{k: "/nonexistent" for k in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "CLOUDSDK_CONFIG", "AZURE_CONFIG_DIR")},
}


def test_down_of_a_typo_exits_2_and_of_a_destroyed_cluster_exits_0(cli: Cli) -> None:
    assert cli(*UP, "--name", "real", timeout=300).returncode == 0
    # No cloud credentials for this call (an earlier test's may linger in the environment): a
    # name no record holds is then a typo; with a cloud that cannot be asked it is exit 1 instead.
    typo = cli("down", "--cluster", "rael", env=NO_CLOUD_CREDENTIALS)
    assert typo.returncode == 2, typo.stderr
    line = one_line_error(typo)
    assert "'rael'" in line and "real" in line.split("'rael'", 1)[1]
    assert _sshd_pids_under(cli.home / "clusters" / "real"), "a typo destroys nothing"
    assert cli("down", "--cluster", "real", timeout=120).returncode == 0
    again = cli("down", "--cluster", "real")
    assert again.returncode == 0, again.stderr
    assert "already destroyed" in again.stderr
    assert cli("down").returncode == 0  # nothing left at all: harmless
    never = cli("down", "--cluster", "never", env=NO_CLOUD_CREDENTIALS)
    assert never.returncode == 2 and "no cluster exists" in one_line_error(never).lower()


def _modes(root: Path) -> list[str]:
    wrong = []
    for folder, dirs, files in os.walk(root):
        if stat.S_IMODE(os.stat(folder).st_mode) != 0o700:
            wrong.append(f"{oct(stat.S_IMODE(os.stat(folder).st_mode))} {folder}")
        dirs[:] = [d for d in dirs if not (Path(folder).name == "provider")]  # node folders: the "machine's" disk
        for name in files:
            mode = stat.S_IMODE(os.stat(Path(folder) / name).st_mode)
            if mode & 0o077:
                wrong.append(f"{oct(mode)} {Path(folder) / name}")
    return wrong


def test_files_under_the_home_are_private_whatever_the_umask(cli: Cli) -> None:
    (cli.cwd / "train.py").write_text(SCRIPT)
    old = os.umask(0)  # inherited by the CLI processes
    try:
        assert cli(*UP, timeout=300).returncode == 0
        assert cli("run", "train.py").returncode == 0
        while_up = _modes(cli.home)
        assert cli("down", timeout=120).returncode == 0
        # A cluster removed without its record keeps its bootstrap logs in the home: those too.
        assert cli(*UP, "--name", "spare", timeout=300).returncode == 0
        (cli.home / "clusters" / "spare" / "cluster.json").write_bytes(b"{")
        forced = cli("down", "--force", "--cluster", "spare", timeout=120)
        assert forced.returncode == 0 and "logs kept in" in forced.stderr, forced.stderr
    finally:
        os.umask(old)
    assert not while_up, while_up
    after = _modes(cli.home)
    assert not after, after
    assert list((cli.home / "jobs").glob("*.json")) and list((cli.home / "clusters" / ".destroyed").glob("*.json"))
    assert list((cli.home / "logs").glob("spare-*/*/*.log")), "the kept logs were checked"


def test_down_output_brings_outputs_elsewhere_when_the_recorded_one_cannot_be_written(cli: Cli) -> None:
    assert cli(*UP, timeout=300).returncode == 0
    (cli.cwd / "train.py").write_text(SCRIPT + "import time\ntime.sleep(600)\n")
    recorded = cli.cwd / "outs" / "job"
    run = cli("run", "train.py", "--detach", "--output", str(recorded))
    assert run.returncode == 0, run.stderr
    job_id = json.loads(cli("status", "--json").stdout)["jobs"][0]["job_id"]
    # The recorded output becomes unwritable (even for root): its parent is now a file.
    if (cli.cwd / "outs").is_dir():
        shutil.rmtree(cli.cwd / "outs")
    (cli.cwd / "outs").write_text("not a folder")

    refused = cli("down", timeout=120)
    assert refused.returncode == 1, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert "Traceback" not in refused.stderr and str(recorded) in line and "--output" in line
    assert _sshd_pids_under(cli.home), "the cluster stays up while outputs are owed"

    elsewhere = cli.cwd / "elsewhere"
    down = cli("down", "--output", str(elsewhere), timeout=120)
    assert down.returncode == 0, down.stderr
    assert (elsewhere / job_id / "out.txt").read_text() == "ok"
    assert (elsewhere / job_id / "run.json").exists()
    record = json.loads((cli.home / "jobs" / f"{job_id}.json").read_text())
    assert record["output"] == str(elsewhere / job_id) and record["status"] == "fetched"
    assert not _sshd_pids_under(cli.home)


def test_a_failed_save_keeps_the_old_record_and_leaves_no_temp_file(tmp_path: Path) -> None:
    from cloudtrain.state import ClusterRecord, Store
    from cloudtrain.spec import ClusterSpec

    store = Store(tmp_path / "home")
    cdir = store.cluster_dir("c1")
    cdir.create()
    record = ClusterRecord(spec=ClusterSpec(name="c1", provider="local"))
    cdir.save(record)
    before = cdir.record_path.read_bytes()
    record.provider_state["x"] = object()  # cannot be written as JSON
    with pytest.raises(TypeError):
        cdir.save(record)
    assert cdir.record_path.read_bytes() == before
    assert sorted(p.name for p in cdir.root.iterdir() if p.name.endswith(".tmp")) == []


def test_a_cancel_recorded_by_another_process_survives_a_stale_save(tmp_path: Path) -> None:
    """`cancel` records the cancel, then TERMs the job; the `run` following it saves what it saw
    when the job ended. That save must not undo the cancel (seen once in a loaded full run)."""
    from cloudtrain.jobs.record import JobRecord
    from cloudtrain.state import Store

    store = Store(tmp_path / "home")
    store.jobs_dir.mkdir(parents=True, exist_ok=True)
    follower = JobRecord(job_id="j-1", cluster="c", output=str(tmp_path / "out"), script="t.py", args=[], env_keys=[], workdir=".", nodes=["n0"])
    follower.save(store)
    canceller = JobRecord.load(store, "j-1")
    canceller.extra["cancelled_at"] = 123.0
    canceller.save(store)
    follower.status, follower.exit_code = "ended", 143  # what the follower saw, without the cancel
    follower.save(store)
    again = JobRecord.load(store, "j-1")
    assert again.extra.get("cancelled_at") == 123.0 and again.outcome() == "cancelled" and again.exit_code == 143


# --- a cloud cluster whose record is damaged: its stack, found by name ---------------------


def test_down_force_destroys_a_damaged_cloud_clusters_stack_by_name(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pulumi.automation as auto

    from test_stack import FakeEngine

    from cloudtrain import lifecycle
    from cloudtrain.errors import DamagedRecord
    from cloudtrain.provisioner.preflight import pulumi_cli
    from cloudtrain.state import Store

    engine = FakeEngine()
    monkeypatch.setattr(auto, "create_or_select_stack", engine.create_or_select_stack)
    monkeypatch.setattr(auto, "select_stack", engine.select_stack)
    monkeypatch.setattr(pulumi_cli, "require", lambda: type("Cli", (), {"command": "pulumi", "version": None})())
    monkeypatch.delenv("PULUMI_BACKEND_URL", raising=False)
    engine.stacks.add("gpu1")
    store = Store()
    cdir = store.cluster_dir("gpu1")
    cdir.create()  # no provider marker (made before there was one): found from the folder
    (cdir.provider_dir / "pulumi").mkdir()
    cdir.record_path.write_bytes(b'{"spec": {"name": "gpu1", "prov')
    said: list[str] = []

    with pytest.raises(DamagedRecord) as refused:
        lifecycle.down(store, "gpu1", said.append)
    assert "--force" in refused.value.line() and str(cdir.record_path) in refused.value.line()
    assert engine.calls == []

    assert lifecycle.down(store, "gpu1", said.append, force=True) is True
    assert ("destroy", "gpu1") in engine.calls and ("remove_stack", "gpu1") in engine.calls
    opened = engine.opened[-1]
    assert opened["create"] is False, "destroying never creates a stack"
    assert opened["opts"].work_dir == str(cdir.provider_dir / "pulumi")
    assert not cdir.root.exists()
    assert lifecycle.down(store, "gpu1", said.append) is False and "already destroyed" in said[-1]
