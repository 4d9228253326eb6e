"""Jobs on a real two-node local cluster (real sshd, real SSH): arguments and environment,
failures, detached jobs, bootstrap idempotence, plain OpenSSH access with pinned keys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import Cli, local_cluster, one_line_error, pids_where

from cloudtrain.jobs.workdir import sha256_file

ECHO_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    out = os.environ["CLOUDTRAIN_OUTPUT_DIR"]
    keys = [k for k in os.environ if k.startswith("CLOUDTRAIN_") or k.startswith("MY_")]
    with open(os.path.join(out, "seen.json"), "w") as f:
        json.dump({"argv": sys.argv[1:], "env": {k: os.environ[k] for k in keys}, "cwd": os.getcwd()}, f)
    print("hello from rank", os.environ["CLOUDTRAIN_NODE_RANK"], flush=True)
    """
)

FAIL_SCRIPT = textwrap.dedent(
    """
    import os, sys
    if os.environ["CLOUDTRAIN_NODE_RANK"] != "0":  # one rank fails: it stops the others at once, maybe before they wrote
        sys.exit(0)
    out = os.environ["CLOUDTRAIN_OUTPUT_DIR"]
    open(os.path.join(out, "partial.txt"), "w").write("half done")
    print("about to fail", flush=True)
    print("failing on purpose", file=sys.stderr, flush=True)
    sys.exit(7)
    """
)

SLOW_SCRIPT = textwrap.dedent(
    """
    import os, time
    out = os.environ["CLOUDTRAIN_OUTPUT_DIR"]
    for i in range(6):
        print("tick", i, flush=True)
        time.sleep(0.5)
    open(os.path.join(out, "done.txt"), "w").write("finished")
    """
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """One ready two-node cluster (framework none) shared by this module's tests."""
    with local_cluster(tmp_path_factory, "jobs", nodes=2) as (cli, _):
        yield cli


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def _head_remote(cluster: Cli):
    """An SshRemote to the first node of the module's cluster, for checks below the CLI."""
    from cloudtrain.remote import SshRemote
    from cloudtrain.state import Store

    record = Store(cluster.home).cluster_dir("local").load()
    assert record.cluster is not None
    return SshRemote(record.cluster.head, record.cluster.identity_file)


def _job_dirs(cwd: Path) -> list[Path]:
    return sorted((cwd / "runs").iterdir()) if (cwd / "runs").exists() else []


def test_arguments_and_env_reach_every_node_intact(cluster: Cli, tmp_path: Path) -> None:
    script = _write(tmp_path / "proj", "echo.py", ECHO_SCRIPT)
    tricky = ["--name", "two words", "quote's \"double\"", "$HOME", "ünïcode", "a=b", ""]
    out = tmp_path / "out"
    proc = cluster(
        "run", str(script), "--env", "MY_SECRET=s3cr=t with spaces", "--env", "MY_EMPTY=", "--output", str(out), "--", *tricky
    )
    assert proc.returncode == 0, proc.stderr
    assert "hello from rank 0" in proc.stdout
    for seen_file, rank in ((out / "seen.json", "0"), (out / "rank-1" / "seen.json", "1")):
        seen = json.loads(seen_file.read_text())
        assert seen["argv"] == tricky
        env = seen["env"]
        assert env["MY_SECRET"] == "s3cr=t with spaces"
        assert env["MY_EMPTY"] == ""
        assert env["CLOUDTRAIN_NODE_RANK"] == rank
        assert env["CLOUDTRAIN_NUM_NODES"] == "2"
        assert env["CLOUDTRAIN_NODE_IPS"] == "127.0.0.2,127.0.0.3"
        assert env["CLOUDTRAIN_MASTER_ADDR"] == "127.0.0.2"
        assert env["CLOUDTRAIN_GPUS_PER_NODE"] == "0"
        assert env["CLOUDTRAIN_JOB_ID"] == json.loads((out / "run.json").read_text())["job_id"]
    # Secrets passed to jobs never land in cloudtrain's own records.
    run_json = (out / "run.json").read_text()
    assert "s3cr=t" not in run_json and "MY_SECRET" in run_json
    assert "s3cr=t" not in proc.stderr


def test_a_local_node_shares_this_machines_uv_cache(cluster: Cli) -> None:
    """A node's HOME is its own, but uv's cache is this machine's (conftest's, for the tests): a
    second node's or a replacement's framework install links from it instead of unpacking again."""
    proc = cluster("ssh", "--", "printenv", "UV_CACHE_DIR")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == os.environ["UV_CACHE_DIR"]


def test_outputs_home_match_manifest(cluster: Cli, tmp_path: Path) -> None:
    script = _write(
        tmp_path / "proj",
        "write.py",
        "import os\nout = os.environ['CLOUDTRAIN_OUTPUT_DIR']\nos.makedirs(out + '/deep/er', exist_ok=True)\n"
        "open(out + '/deep/er/blob.bin', 'wb').write(os.urandom(3_000_000))\nopen(out + '/small.txt', 'w').write('x')\n",
    )
    out = tmp_path / "out"
    proc = cluster("run", str(script), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    assert {"deep/er/blob.bin", "small.txt", "log.txt", "rank-1/deep/er/blob.bin"} <= set(manifest)
    for rel, entry in manifest.items():
        assert sha256_file(out / rel) == entry["sha256"], rel
        assert (out / rel).stat().st_size == entry["size"]


def test_failing_script_exit_code_log_and_partial_outputs_come_home(cluster: Cli, tmp_path: Path) -> None:
    script = _write(tmp_path / "proj", "fail.py", FAIL_SCRIPT)
    proc = cluster("run", str(script))
    assert proc.returncode == 7, proc.stderr
    assert "exited 7" in proc.stderr
    [job] = [d for d in _job_dirs(cluster.cwd) if d.name.startswith("fail-")]
    assert (job / "partial.txt").read_text() == "half done"
    log = (job / "log.txt").read_text()
    assert "about to fail" in log and "failing on purpose" in log
    assert json.loads((job / "run.json").read_text())["exit_code"] == 7


def test_workdir_ignores_gitignore_and_cloudtrainignore(cluster: Cli, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    _write(proj, "list.py", "import os, json\njson.dump(sorted(os.path.relpath(os.path.join(d, f)) for d, _, fs in os.walk('.') for f in fs), open(os.environ['CLOUDTRAIN_OUTPUT_DIR'] + '/files.json', 'w'))\n")
    _write(proj, ".gitignore", "*.ckpt\nbig/\n")
    _write(proj, ".cloudtrainignore", "secret.txt\n")
    _write(proj, "keep.txt", "k")
    _write(proj, "model.ckpt", "c")
    _write(proj / "big", "data.bin", "b")
    _write(proj, "secret.txt", "s")
    _write(proj / "pkg", "mod.py", "m")
    out = tmp_path / "out"
    proc = cluster("run", str(proj / "list.py"), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    files = json.loads((out / "files.json").read_text())
    assert files == sorted(["list.py", ".gitignore", ".cloudtrainignore", "keep.txt", "pkg/mod.py"])


def _tiny_wheel(folder: Path) -> Path:
    """A real, minimal wheel built by hand, so the install needs no index and no network."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tinypkg-1.0-py3-none-any.whl"
    files = {
        "tinypkg/__init__.py": "VALUE = 42\n",
        "tinypkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
        "tinypkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr("tinypkg-1.0.dist-info/RECORD", "".join(f"{n},,\n" for n in files) + "tinypkg-1.0.dist-info/RECORD,,\n")
    return path


def test_requirements_txt_is_installed_once(cluster: Cli, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    _tiny_wheel(proj / "wheels")
    _write(proj, "requirements.txt", "--no-index\n./wheels/tinypkg-1.0-py3-none-any.whl\n")
    script = _write(proj, "use.py", "import tinypkg, os\nopen(os.environ['CLOUDTRAIN_OUTPUT_DIR'] + '/v.txt', 'w').write(str(tinypkg.VALUE))\n")
    out = tmp_path / "out"
    proc = cluster("run", str(script), "--output", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (out / "v.txt").read_text() == "42"
    assert proc.stderr.count("requirements.txt installed") == 2
    again = cluster("run", str(script), "--output", str(tmp_path / "out2"), timeout=600)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("requirements.txt unchanged") == 2
    assert "requirements.txt installed" not in again.stderr


def test_detached_job_survives_the_client_and_logs_follow_brings_it_home(cluster: Cli, tmp_path: Path) -> None:
    script = _write(tmp_path / "proj", "slow.py", SLOW_SCRIPT)
    started = time.monotonic()
    proc = cluster("run", str(script), "--detach")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 30
    status = json.loads(cluster("status", "--json").stdout)
    job_id = [j for j in status["jobs"] if j["job_id"].startswith("slow-")][0]["job_id"]
    # The client process is gone; the job goes on. Follow it from scratch.
    follow = cluster("logs", job_id, "-f")
    assert follow.returncode == 0, follow.stderr
    assert [line for line in follow.stdout.splitlines() if line.startswith("tick")] == [f"tick {i}" for i in range(6)]
    out = cluster.cwd / "runs" / job_id
    assert (out / "done.txt").read_text() == "finished"
    # And the plain log command reads it back after the fact.
    again = cluster("logs", job_id)
    assert again.returncode == 0 and "tick 5" in again.stdout


def test_logs_rank_prints_another_nodes_log_live_and_after_it_came_home(cluster: Cli, tmp_path: Path) -> None:
    script = _write(tmp_path / "proj", "ranks_echo.py", ECHO_SCRIPT)
    assert cluster("run", str(script), "--detach").returncode == 0
    status = json.loads(cluster("status", "--json").stdout)
    job_id = [j for j in status["jobs"] if j["job_id"].startswith("ranks-echo-")][0]["job_id"]
    deadline = time.monotonic() + 30
    while "hello from rank 1" not in (live := cluster("logs", job_id, "--rank", "1")).stdout and time.monotonic() < deadline:
        time.sleep(0.5)
    assert live.returncode == 0 and "hello from rank 1" in live.stdout and "rank 0" not in live.stdout  # read on node 1
    for bad, says in ((["--rank", "2"], "ran on 2 node(s); --rank 2"), (["-f", "--rank", "1"], "-f follows rank 0")):
        refused = cluster("logs", job_id, *bad)
        assert refused.returncode == 2 and says in one_line_error(refused)
    assert cluster("logs", job_id, "-f").returncode == 0  # brings it home; the nodes are no longer asked
    home = cluster("logs", job_id, "-r", "1")
    assert home.returncode == 0 and home.stdout == (cluster.cwd / "runs" / job_id / "rank-1" / "log.txt").read_text()
    assert "hello from rank 1" in home.stdout


def test_second_bootstrap_runs_no_step(cluster: Cli) -> None:
    proc = cluster("bootstrap")
    assert proc.returncode == 0, proc.stderr
    ready = [line for line in proc.stderr.splitlines() if "ready" in line]
    assert len(ready) == 2 and all("nothing to do" in line for line in ready), proc.stderr
    plan = cluster("bootstrap", "--plan")
    assert plan.returncode == 0, plan.stderr
    assert "nvidia-driver: not needed: no NVIDIA GPU" in plan.stdout
    assert "cuda-toolkit: not needed: no NVIDIA GPU" in plan.stdout


def test_plain_openssh_reaches_nodes_with_strict_host_keys(cluster: Cli, tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    proc = cluster("ssh-config")
    assert proc.returncode == 0, proc.stderr
    config.write_text(proc.stdout)
    assert "StrictHostKeyChecking yes" in proc.stdout
    for node in ("local-0", "local-1"):
        ssh = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", node, "echo", "ok-$CLOUDTRAIN_NODE_ROOT"], capture_output=True, text=True, timeout=60)
        assert ssh.returncode == 0, ssh.stderr
        assert ssh.stdout.startswith("ok-/")
    # scp through the same config.
    src = _write(tmp_path, "payload.txt", "payload")
    node_root = cluster.home / "clusters" / "local" / "provider" / "local-1" / "root"
    scp = subprocess.run(["scp", "-F", str(config), "-o", "BatchMode=yes", str(src), f"local-1:{node_root}/payload-copy.txt"], capture_output=True, text=True, timeout=60)
    assert scp.returncode == 0, scp.stderr
    assert (node_root / "payload-copy.txt").read_text() == "payload"
    # `cloudtrain ssh` runs a command the same way.
    via = cluster("ssh", "local", "--node", "local-1", "--", "echo", "via-$CLOUDTRAIN_NODE_ROOT")
    assert via.returncode == 0, via.stderr
    assert via.stdout.strip() == f"via-{node_root}"


def test_wrong_pinned_key_is_refused_by_openssh_and_by_cloudtrain(cluster: Cli, tmp_path: Path) -> None:
    from cloudtrain import keys

    home = cluster.home / "clusters" / "local"
    known_hosts = home / "known_hosts"
    record_path = home / "cluster.json"
    original_kh, original_record = known_hosts.read_text(), record_path.read_text()
    _, impostor = keys.generate()
    try:
        # OpenSSH with a wrong pinned key: refused, never added.
        lines = original_kh.splitlines()
        host = lines[0].split()[0]
        known_hosts.write_text("\n".join([f"{host} {impostor.split()[0]} {impostor.split()[1]}", *lines[1:]]) + "\n")
        config = tmp_path / "ssh_config"
        config.write_text(cluster("ssh-config").stdout)
        ssh = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "local-0", "true"], capture_output=True, text=True, timeout=60)
        assert ssh.returncode == 255
        assert "host key" in ssh.stderr.lower()
        assert known_hosts.read_text().count("\n") == len(lines)
        # cloudtrain (paramiko, RejectPolicy) with a wrong pinned key: one line, exit 1, no job.
        record = json.loads(original_record)
        record["cluster"]["nodes"][0]["host_key"] = impostor
        record_path.write_text(json.dumps(record))
        marker = tmp_path / "ran"
        script = _write(tmp_path / "proj", "never.py", f"open({str(marker)!r}, 'w')\n")
        proc = cluster("run", str(script))
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr
        assert "not the pinned one" in proc.stderr.strip().splitlines()[-1]
        assert not marker.exists()
    finally:
        known_hosts.write_text(original_kh)
        record_path.write_text(original_record)


def _children(pid: int) -> list[int]:
    return pids_where("stat", lambda stat: int(stat.rsplit(b")", 1)[1].split()[1]) == pid)


def test_follow_survives_a_dropped_connection(cluster: Cli, tmp_path: Path) -> None:
    """Kill the SSH connections under a following `run`: it reconnects, the job never notices,
    and every line and output still comes home."""
    script = _write(tmp_path / "proj", "ticks.py", SLOW_SCRIPT.replace("range(6)", "range(16)"))
    env = {**os.environ, "CLOUDTRAIN_HOME": str(cluster.home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudtrain.cli", "run", str(script), "--output", str(tmp_path / "out")],
        cwd=cluster.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line.rstrip("\n"))
        if line.startswith("tick 3"):
            break
    listener = int((cluster.home / "clusters" / "local" / "provider" / "local-0" / "sshd.pid").read_text())
    sessions = _children(listener)
    assert sessions, "the following client should hold a connection"
    for pid in sessions:  # the per-connection sshd processes: the connection drops
        os.kill(pid, signal.SIGKILL)
    rest, err = proc.communicate(timeout=300)
    seen += rest.splitlines()
    assert proc.returncode == 0, err
    assert "reconnecting" in err
    assert [line for line in seen if line.startswith("tick")] == [f"tick {i}" for i in range(16)]
    assert (tmp_path / "out" / "done.txt").read_text() == "finished"


def test_run_returns_all_output_even_when_exit_status_comes_first(cluster: Cli) -> None:
    """sshd may send a command's exit status before the last of its output; run() must wait
    for end-of-file. Reading up to the status truncated ~6% of 300 KB outputs before the fix."""
    with _head_remote(cluster) as remote:
        sizes = {len(remote.run("head -c 300000 /dev/zero | tr '\\0' x").stdout) for _ in range(60)}
        err = remote.run("head -c 200000 /dev/zero | tr '\\0' y >&2").stderr
    assert sizes == {300000}
    assert len(err) == 200000


def test_first_failing_rank_sets_the_exit_code_and_the_others_are_stopped(cluster: Cli, tmp_path: Path) -> None:
    script = _write(
        tmp_path / "proj", "rank_fail.py",
        "import os, sys, time\nif os.environ['CLOUDTRAIN_NODE_RANK'] == '1':\n"
        "    print('rank 1 gives up: no data shard', file=sys.stderr)\n    sys.exit(3)\ntime.sleep(120)\n",
    )
    started = time.monotonic()
    proc = cluster("run", str(script))
    assert proc.returncode == 3, proc.stderr
    # Only rank 0's log streams: the failing rank is named and its own last lines shown.
    assert "local-1 (rank 1) exited 3" in proc.stderr
    assert "[local-1] rank 1 gives up: no data shard" in proc.stderr
    assert "stopping the job on the other nodes" in proc.stderr
    assert "local-0 (rank 0) exited" not in proc.stderr  # stopped by cloudtrain, not a failure
    assert time.monotonic() - started < 60  # rank 0 was stopped, not waited for


def test_a_rank_that_ignores_term_gets_its_grace_then_is_killed(cluster: Cli, tmp_path: Path) -> None:
    """When rank 1 fails, rank 0 gets TERM; its handler checkpoints (and that comes home),
    but it then ignores TERM, so KILL follows: nothing of the job is left running."""
    script = _write(
        tmp_path / "proj", "stubborn.py",
        "import os, signal, sys, time\n"
        "out = os.environ['CLOUDTRAIN_OUTPUT_DIR']\n"
        "if os.environ['CLOUDTRAIN_NODE_RANK'] == '1':\n"
        "    time.sleep(1)\n    sys.exit(4)\n"
        "def on_term(signum, frame):\n"
        "    open(os.path.join(out, 'checkpoint.txt'), 'w').write('saved on TERM')\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "while True:\n    time.sleep(0.1)\n",
    )
    out = tmp_path / "out"
    proc = cluster("run", str(script), "--output", str(out), timeout=300)
    assert proc.returncode == 4, proc.stderr
    job_id = json.loads((out / "run.json").read_text())["job_id"]
    assert (out / "checkpoint.txt").read_text() == "saved on TERM"
    marker = f"CLOUDTRAIN_JOB_ID={job_id}".encode()
    left = pids_where("environ", lambda env: marker in env)
    assert not left, f"processes of the job still running: {left}"


def test_symlinks_in_outputs_stay_on_the_node_and_the_rest_comes_home(cluster: Cli, tmp_path: Path) -> None:
    script = _write(
        tmp_path / "proj", "links.py",
        "import os\nout = os.environ['CLOUDTRAIN_OUTPUT_DIR']\nopen(out + '/ckpt.bin', 'wb').write(b'w' * 1000)\n"
        "os.symlink(os.path.abspath(out + '/ckpt.bin'), out + '/latest.bin')\nos.symlink('/etc/passwd', out + '/outside')\n",
    )
    out = tmp_path / "out"
    proc = cluster("run", str(script), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "ckpt.bin").read_bytes() == b"w" * 1000
    assert not (out / "latest.bin").exists() and not (out / "outside").exists()


def test_earlier_runs_are_not_shipped_again(cluster: Cli) -> None:
    proj = cluster.cwd / "again"
    _write(proj, "write.py", "import os\nopen(os.environ['CLOUDTRAIN_OUTPUT_DIR'] + '/model.bin', 'wb').write(b'm' * 1000)\n")
    shipped = []
    for _ in range(2):
        proc = cluster("run", "write.py", cwd=proj)
        assert proc.returncode == 0, proc.stderr
        shipped += [line for line in proc.stderr.splitlines() if "shipping" in line]
    assert len(shipped) == 2 and all("shipping 1 file(s)" in line for line in shipped), shipped


def test_ssh_with_only_a_command_uses_the_one_cluster(cluster: Cli) -> None:
    proc = cluster("ssh", "--", "echo", "only-$CLOUDTRAIN_NODE_ROOT")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("only-/")


def test_a_job_writing_cloudtrains_own_file_names_loses_nothing(cluster: Cli, tmp_path: Path) -> None:
    script = _write(
        tmp_path / "proj", "names.py",
        "import os\nout = os.environ['CLOUDTRAIN_OUTPUT_DIR']\nprint('to stdout', flush=True)\n"
        "for name in ('log.txt', 'run.json', 'manifest.json'):\n    open(os.path.join(out, name), 'w').write('mine: ' + name)\n",
    )
    out = tmp_path / "out"
    proc = cluster("run", str(script), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "log.from-job.txt").read_text() == "mine: log.txt"
    assert (out / "run.from-job.json").read_text() == "mine: run.json"
    assert (out / "manifest.from-job.json").read_text() == "mine: manifest.json"
    assert (out / "rank-1" / "log.from-job.txt").read_text() == "mine: log.txt"
    assert "to stdout" in (out / "log.txt").read_text()
    assert json.loads((out / "run.json").read_text())["exit_code"] == 0
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    assert {"log.from-job.txt", "run.from-job.json", "log.txt", "rank-1/log.from-job.txt"} <= set(manifest)
    assert sha256_file(out / "log.from-job.txt") == manifest["log.from-job.txt"]["sha256"]


def test_a_silent_peer_fails_a_transfer_instead_of_hanging(cluster: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Freeze the node's side of the connection mid-stream (SIGSTOP: TCP stays open, nothing
    moves, as with a dropped NAT mapping): the stream fails after the stall timeout."""
    from cloudtrain import remote as remote_module
    from cloudtrain.errors import RemoteError

    monkeypatch.setattr(remote_module, "STALL_TIMEOUT", 2.0)
    listener = int((cluster.home / "clusters" / "local" / "provider" / "local-0" / "sshd.pid").read_text())
    with _head_remote(cluster) as r:
        before = set(_children(listener))
        stream = r.stream_stdout("head -c 200000000 /dev/zero")
        next(stream)
        frozen = [p for p in _children(listener) if p not in before] or _children(listener)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            with pytest.raises(RemoteError):
                for _ in stream:
                    pass
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        assert time.monotonic() - started < 30


def test_a_command_that_ignores_its_input_is_not_a_lost_connection(cluster: Cli) -> None:
    """`test -d out && python3 - || echo {}` ends without reading the script sent on stdin; the
    node closes the channel while we still send. That is the command's choice, not a failure
    (it made a teardown `down` fail now and then before the fix)."""
    payload = b"x" * 3_000_000  # more than the channel window: the send is still going on
    with _head_remote(cluster) as remote:
        assert {remote.run("true", stdin=payload).exit_code for _ in range(20)} == {0}
        outs = {remote.run("if test -d /nonexistent; then cat; else echo '{}'; fi", stdin=payload).stdout for _ in range(20)}
    assert outs == {"{}\n"}


def test_a_local_node_keeps_this_machines_pip_configuration(cli: Cli, tmp_path: Path) -> None:
    """A node has a HOME of its own, yet its pip must see where this machine's pip gets packages
    (a local wheel folder, a mirror): the user's pip config file and PIP_* variables."""
    user = tmp_path / "user"
    (user / ".config/pip").mkdir(parents=True)
    (user / ".config/pip/pip.conf").write_text("[global]\nfind-links = /srv/wheels-for-a-test\n")
    env = {"HOME": str(user), "XDG_CONFIG_HOME": "", "PIP_DEFAULT_TIMEOUT": "42"}
    up = cli("up", "--provider", "local", "--framework", "none", env=env, timeout=300)
    assert up.returncode == 0, up.stderr
    try:
        seen = cli("ssh", "--", 'echo "home=$HOME"; python3 -m pip config list', env=env)
        assert seen.returncode == 0, seen.stderr
        assert "global.find-links='/srv/wheels-for-a-test'" in seen.stdout
        assert ":env:.default-timeout='42'" in seen.stdout
        assert f"home={user}" not in seen.stdout and "home=" + str(cli.home) in seen.stdout  # still its own HOME
    finally:
        assert cli("down", env=env).returncode == 0
