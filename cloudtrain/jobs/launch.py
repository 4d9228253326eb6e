"""What runs on each node for a job: its environment and the command that starts it.

One plain process per node, or torchrun on every node (`--nnodes N --node-rank i
--nproc-per-node K`, static rendezvous on rank 0's private address at a port unique to the job),
so an unmodified env:// script uses every process slot of every node. Each torchrun worker runs
under node_worker.py, which names the local rank that failed first (`failures` in the job's
folder) and keeps a worker from outliving its torchrun agent.
"""

from __future__ import annotations

import json
import shlex
import zlib
from dataclasses import dataclass
from pathlib import Path

from cloudtrain.errors import BadInput
from cloudtrain.layout import JobPaths, NodePaths
from cloudtrain.machine import Cluster
from cloudtrain.spec import JobSpec

# 20000-28999: below Linux's ephemeral range (32768+), with room above the base for the JAX
# coordinator and one TF worker port per node.
PORT_BASE, PORT_SPAN = 20000, 9000
WORKER_FILE = "node_worker.py"
FAILURES_FILE = "failures"  # in the job's folder: "<local_rank> <rank> <code>" per failed worker, first first


def job_port(job_id: str) -> int:
    """MASTER_PORT: derived alike on every node from the job id (crc32 is stable across
    processes, unlike hash()), so concurrent jobs, even two local clusters on one machine, differ."""
    return PORT_BASE + zlib.crc32(job_id.encode()) % PORT_SPAN


@dataclass(frozen=True)
class Launch:
    """How one job starts on every node."""

    torchrun: bool
    nproc_per_node: int  # processes per node (1 for a plain process)


def plan(spec: JobSpec, framework: str, nodes: int, gpus_per_node: int) -> Launch:
    """torchrun for torch when there is more than one node, more than one GPU on a node, or K
    was given; a plain process otherwise, or with --launcher none."""
    k = spec.nproc_per_node or max(1, gpus_per_node)
    if spec.launcher == "none":
        if spec.nproc_per_node not in (None, 1):
            raise BadInput("--nproc-per-node needs torchrun; --launcher none starts one process per node", "drop one of the two")
        return Launch(False, 1)
    if spec.launcher == "torchrun":
        return Launch(True, k)
    if framework == "torch" and (nodes > 1 or gpus_per_node > 1 or spec.nproc_per_node is not None):
        return Launch(True, k)
    if spec.nproc_per_node not in (None, 1):
        raise BadInput(f"--nproc-per-node {spec.nproc_per_node} needs torchrun, and this cluster's framework is {framework}",
                       "pass --launcher torchrun if the node has torch, or drop --nproc-per-node")
    return Launch(False, 1)


def job_env(cluster: Cluster, rank: int, job_id: str, out_dir: str, gpus_per_node: int, launch: Launch | None = None) -> dict[str, str]:
    """The job environment for one node (README: "The job's environment")."""
    ips = [n.private_ip for n in cluster.nodes]
    port = job_port(job_id)
    n = len(ips)
    env = {
        "CLOUDTRAIN_OUTPUT_DIR": out_dir,
        "CLOUDTRAIN_JOB_ID": job_id,
        "CLOUDTRAIN_NODE_RANK": str(rank),
        "CLOUDTRAIN_NUM_NODES": str(n),
        "CLOUDTRAIN_NODE_IPS": ",".join(ips),
        "CLOUDTRAIN_MASTER_ADDR": ips[0],
        "CLOUDTRAIN_GPUS_PER_NODE": str(gpus_per_node),
        "MASTER_ADDR": ips[0],
        "MASTER_PORT": str(port),
        # jax.distributed.initialize() reads the address itself (jax 0.10.2 reads no process
        # count or id from the environment outside Slurm/Open MPI/k8s/TPU): the script passes those.
        "JAX_COORDINATOR_ADDRESS": f"{ips[0]}:{port + 1}",
        "JAX_NUM_PROCESSES": str(n),
        "JAX_PROCESS_ID": str(rank),
    }
    if launch is None or not launch.torchrun:
        # One process per node: an env:// script finds its place without a launcher.
        env.update(RANK=str(rank), WORLD_SIZE=str(n), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    if n > 1:
        # MultiWorkerMirroredStrategy: one worker per node, each on its own port (local nodes
        # share one machine, and TF's server listens on every interface).
        workers = [f"{ip}:{port + 2 + i}" for i, ip in enumerate(ips)]
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": rank}}, separators=(",", ":"))
    return env


def _ifname_sh(q_python: str, address: str) -> str:
    """Shell lines exporting NCCL_/GLOO_SOCKET_IFNAME as the interface whose subnet holds this
    node's private address (a cloud node may have several; the wrong one hangs NCCL), unless
    the user set them. Found on the node at launch: interface names differ between images."""
    probe = (
        "import ipaddress,subprocess,sys\n"
        "a=ipaddress.ip_address(sys.argv[1])\n"
        "try: out=subprocess.run(['ip','-o','-4','addr','show'],capture_output=True,text=True).stdout\n"
        "except OSError: out=''\n"
        "for line in out.splitlines():\n"
        "  f=line.split()\n"
        "  if len(f)>3 and a in ipaddress.ip_interface(f[3]).network: print(f[1].split('@')[0]); break\n"
    )
    return (
        f"ifname=$({q_python} -I -c {shlex.quote(probe)} {shlex.quote(address)} 2>/dev/null)\n"
        'if [ -n "$ifname" ]; then\n'
        '  [ -n "${NCCL_SOCKET_IFNAME:-}" ] || export NCCL_SOCKET_IFNAME="$ifname"\n'
        '  [ -n "${GLOO_SOCKET_IFNAME:-}" ] || export GLOO_SOCKET_IFNAME="$ifname"\n'
        "fi\n"
    )


def command(paths: NodePaths, job: JobPaths, spec: JobSpec, launch: Launch, env: dict[str, str]) -> list[str]:
    """The argv that starts the job on this node."""
    program = [spec.script_rel, *spec.args]
    if not launch.torchrun:
        return [paths.python, "-u", *program]
    return [
        paths.python, "-m", "torch.distributed.run",
        "--nnodes", env["CLOUDTRAIN_NUM_NODES"], "--node-rank", env["CLOUDTRAIN_NODE_RANK"],
        "--nproc-per-node", str(launch.nproc_per_node),
        "--rdzv-backend", "static", "--master-addr", env["MASTER_ADDR"], "--master-port", env["MASTER_PORT"],
        "--max-restarts", "0", "--monitor-interval", "1",
        *(["--tee", "3", "--log-dir", f"{job.dir}/torchrun"] if launch.nproc_per_node > 1 else []),
        "--no-python", paths.python, "-I", "-S", f"{job.dir}/{WORKER_FILE}", f"{job.dir}/{FAILURES_FILE}",
        paths.python, "-u", *program,
    ]


def worker_source() -> str:
    return Path(__file__).with_name(WORKER_FILE).read_text()


def run_sh(paths: NodePaths, job: JobPaths, spec: JobSpec, env: dict[str, str], launch: Launch | None = None) -> str:
    """The node's run.sh: the job environment, then the program in the foreground."""
    launch = launch or Launch(False, 1)
    q = shlex.quote
    exports = "".join(f"export {k}={q(v)}\n" for k, v in {**env, **spec.env}.items())
    if launch.torchrun and launch.nproc_per_node > 1:
        # Several local ranks share this node's log: each line says whose it is.
        exports += "export TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE='[local rank ${local_rank}] '\n"
    argv = " ".join(q(a) for a in command(paths, job, spec, launch, env))
    failures = q(f"{job.dir}/{FAILURES_FILE}")
    # torchrun exits 1 whatever its worker did: the job's status is the first failed worker's.
    worker_code = (
        f'if [ "$code" -ne 0 ] && [ -s {failures} ]; then code=$(head -n 1 {failures} | cut -d" " -f3); fi\n'
        if launch.torchrun else ""
    )
    return (
        "#!/usr/bin/env bash\n"
        f"cd {q(job.work)} || exit 1\n"
        f"{exports}"
        "export PYTHONUNBUFFERED=1\n"
        f"{_ifname_sh(q(paths.python), env['CLOUDTRAIN_NODE_IPS'].split(',')[int(env['CLOUDTRAIN_NODE_RANK'])])}"
        f"mkdir -p {q(job.out)}\n"
        # The program's pid, for the session leader (track.py): it execs in place of this
        # inner shell, in the foreground, so it keeps the default signal handling.
        f"bash -c 'echo $$ > \"$0\" && exec \"$@\"' {q(job.main_pid)} {argv} >> {q(job.log)} 2>&1 < /dev/null\n"
        "code=$?\n"
        f"{worker_code}"
        # The program's status; track.py writes `exit_code` once the whole session has ended.
        f"echo \"$code\" > {q(job.main_exit)}.tmp && mv {q(job.main_exit)}.tmp {q(job.main_exit)}\n"
    )


def first_failure(text: str) -> tuple[int, int, int] | None:
    """(local rank, global rank, exit code) of the first failed worker in a `failures` file."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and all(p.lstrip("-").isdigit() for p in parts):
            return int(parts[0]), int(parts[1]), int(parts[2])
    return None
