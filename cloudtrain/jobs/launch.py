"""What runs on each node for a job: its environment and the command that starts it.

One plain process per node, or torchrun on every node (`--nnodes N --node-rank i
--nproc-per-node K`, static rendezvous on rank 0's private address at a port unique to the job,
c10d there when restarts are asked for), so an unmodified env:// script uses every process slot
of every node. Each torchrun worker runs
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
from cloudtrain.jobs import task_shell
from cloudtrain.layout import JobPaths, NodePaths
from cloudtrain.machine import Cluster
from cloudtrain.spec import JobSpec

# 20000-28999: below Linux's ephemeral range (32768+), with room above the base for the JAX
# coordinator and one TF worker port per node.
PORT_BASE, PORT_SPAN = 20000, 9000
WORKER_FILE = "node_worker.py"
FAILURES_FILE = "failures"  # in the job's folder: "<local_rank> <rank> <code> <attempt>" per failed worker, first first
# run.sh's first_failure: the exit code of the first worker that failed in the last attempt.
LAST_ATTEMPT_AWK = 'NF>=3{a=(NF>3?$4:0); if(!(a in c)) c[a]=$3; if(a>=m) m=a} END{if(m in c) print c[m]}'


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
    launch = _plan(spec, framework, nodes, gpus_per_node, k)
    if spec.torchrun_restarts and not launch.torchrun:
        raise BadInput(f"--torchrun-restarts {spec.torchrun_restarts} needs torchrun, and this job runs one plain process per node",
                       "pass --launcher torchrun if the node has torch, or drop --torchrun-restarts")
    return launch


def _plan(spec: JobSpec, framework: str, nodes: int, gpus_per_node: int, k: int) -> Launch:
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


def jax_cluster_env(ips: list[str], rank: int, job_id: str, gpus_per_node: int) -> dict[str, str]:
    """What makes `jax.distributed.initialize()` work with no arguments, one process per node.

    jax (0.10.2 and main: jax/_src/distributed.py) reads only JAX_COORDINATOR_ADDRESS from
    the environment; the process count and id come from its cluster detection
    (jax/_src/clusters/), which knows Open MPI, Slurm, mpi4py (opt-in), TPU VMs and
    Kubernetes. Slurm's is the one that reads plain variables (slurm_cluster.py: all of
    SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID present);
    Open MPI's needs OMPI_MCA_orte_hnp_uri, which would send any MPI library on the node
    looking for an mpirun that does not exist. Slurm's local id would also give each
    process one GPU (local_device_ids=[SLURM_LOCALID]); JAX_LOCAL_DEVICE_IDS, read first
    (jax >= 0.4.32), keeps every GPU of the node with its one process. Set for jax clusters
    only: Lightning, for one, takes SLURM_NTASKS to mean a Slurm job."""
    env = {
        "SLURM_JOB_ID": str(zlib.crc32(job_id.encode())),  # only jax's port fallback reads it; the address is given
        "SLURM_STEP_NODELIST": ",".join(ips),  # jax takes the first entry as the coordinator's host, likewise a fallback
        "SLURM_NTASKS": str(len(ips)),
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": "0",
    }
    if gpus_per_node > 0:
        env["JAX_LOCAL_DEVICE_IDS"] = ",".join(str(i) for i in range(gpus_per_node))
    return env


def job_env(cluster: Cluster, rank: int, job_id: str, out_dir: str, gpus_per_node: int, launch: Launch | None = None,
            framework: str = "") -> dict[str, str]:
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
        # jax.distributed.initialize() reads the address itself; on a jax cluster the count
        # and id reach it through jax_cluster_env below.
        "JAX_COORDINATOR_ADDRESS": f"{ips[0]}:{port + 1}",
        "JAX_NUM_PROCESSES": str(n),
        "JAX_PROCESS_ID": str(rank),
    }
    if launch is None or not launch.torchrun:
        # One process per node: an env:// script finds its place without a launcher.
        env.update(RANK=str(rank), WORLD_SIZE=str(n), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    if framework == "jax" and (launch is None or not launch.torchrun):
        env.update(jax_cluster_env(ips, rank, job_id, gpus_per_node))
    if n > 1:
        # MultiWorkerMirroredStrategy: one worker per node, each on its own port (local nodes
        # share one machine, and TF's server listens on every interface).
        workers = [f"{ip}:{port + 2 + i}" for i, ip in enumerate(ips)]
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": rank}}, separators=(",", ":"))
    return env


# The interface whose IPv4 subnet holds the address: `ip -o -4 addr show` lines ("2: eth0
# inet 10.0.0.5/24 ..."), addresses as numbers, compared above the prefix (mawk and gawk alike).
IFNAME_AWK = (
    'function n(s, p) { split(s, p, "."); return ((p[1] * 256 + p[2]) * 256 + p[3]) * 256 + p[4] }'
    ' BEGIN { if (a !~ /^[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+$/) exit; x = n(a) }'
    ' { split($4, c, "/"); if (c[2] == "") next; m = 2 ^ (32 - c[2]);'
    ' if (int(n(c[1]) / m) == int(x / m)) { sub(/@.*/, "", $2); print $2; exit } }'
)


def _ifname_sh(address: str) -> str:
    """Shell lines exporting NCCL_/GLOO_SOCKET_IFNAME as the interface whose subnet holds this
    node's private address (a cloud node may have several; the wrong one hangs NCCL), unless
    the user set them. Found on the node at launch: interface names differ between images.
    In awk, not python: a python start is most of a short job's launch on a loaded node (issue 9)."""
    return (
        f"ifname=$(ip -o -4 addr show 2>/dev/null | awk -v a={shlex.quote(address)} {shlex.quote(IFNAME_AWK)} 2>/dev/null)\n"
        'if [ -n "$ifname" ]; then\n'
        '  [ -n "${NCCL_SOCKET_IFNAME:-}" ] || export NCCL_SOCKET_IFNAME="$ifname"\n'
        '  [ -n "${GLOO_SOCKET_IFNAME:-}" ] || export GLOO_SOCKET_IFNAME="$ifname"\n'
        "fi\n"
    )


def command(paths: NodePaths, job: JobPaths, spec: JobSpec, launch: Launch, env: dict[str, str]) -> list[str]:
    """The argv that starts the job on this node."""
    if spec.shell is not None:  # a task file's `run` snippet
        return task_shell.command(paths, spec.shell)
    program = [spec.script_rel, *spec.args]
    if not launch.torchrun:
        return [paths.python, "-u", *program]
    if spec.torchrun_restarts:
        # Restarts need torch's c10d rendezvous (torchrun's documented fault-tolerant form):
        # under the static one a node restarts alone, and its new workers meet the old
        # attempt's keys in the shared store (tried: gloo's connectFullMesh times out). c10d
        # restarts every node together in a new round; ranks follow the nodes' --local-addr
        # (sorted as text, then pid), and rank 0's address is its private one.
        node_ip = env["CLOUDTRAIN_NODE_IPS"].split(",")[int(env["CLOUDTRAIN_NODE_RANK"])]
        rdzv = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}",
                "--rdzv-id", env["CLOUDTRAIN_JOB_ID"], "--local-addr", node_ip]
    else:
        rdzv = ["--node-rank", env["CLOUDTRAIN_NODE_RANK"],
                "--rdzv-backend", "static", "--master-addr", env["MASTER_ADDR"], "--master-port", env["MASTER_PORT"]]
    return [
        paths.python, "-m", "torch.distributed.run",
        "--nnodes", env["CLOUDTRAIN_NUM_NODES"], "--nproc-per-node", str(launch.nproc_per_node), *rdzv,
        "--max-restarts", str(spec.torchrun_restarts), "--monitor-interval", "1",
        *(["--tee", "3", "--log-dir", f"{job.dir}/torchrun"] if launch.nproc_per_node > 1 else []),
        "--no-python", paths.python, "-I", "-S", f"{job.dir}/{WORKER_FILE}", f"{job.dir}/{FAILURES_FILE}", job.main_pid,
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
    if launch.torchrun and spec.torchrun_restarts:
        # A fresh store for each round's workers (rank 0 opens it on a free port): the one
        # c10d shares by default keeps the failed round's keys, and gloo reads them (tried).
        exports += "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1\n"
    argv = " ".join(q(a) for a in command(paths, job, spec, launch, env))
    failures = q(f"{job.dir}/{FAILURES_FILE}")
    # torchrun exits 1 whatever its worker did: the job's status is that of the first worker
    # that failed in the last attempt (first_failure, in awk: restarts add attempts).
    worker_code = (
        f'if [ "$code" -ne 0 ] && [ -s {failures} ]; then w=$(awk {q(LAST_ATTEMPT_AWK)} {failures}); code=${{w:-$code}}; fi\n'
        if launch.torchrun else ""
    )
    return (
        "#!/usr/bin/env bash\n"
        f"cd {q(job.work)} || exit 1\n"
        f"{exports}"
        "export PYTHONUNBUFFERED=1\n"
        f"{_ifname_sh(env['CLOUDTRAIN_NODE_IPS'].split(',')[int(env['CLOUDTRAIN_NODE_RANK'])])}"
        f"mkdir -p {q(job.out)}{' ' + q(env['CLOUDTRAIN_CHECKPOINT_DIR']) if 'CLOUDTRAIN_CHECKPOINT_DIR' in env else ''}\n"
        # The program's pid, for the session leader (track.py): it execs in place of this
        # inner shell, in the foreground, so it keeps the default signal handling.
        f"bash -c 'echo $$ > \"$0\" && exec \"$@\"' {q(job.main_pid)} {argv} >> {q(job.log)} 2>&1 < /dev/null\n"
        "code=$?\n"
        f"{worker_code}"
        # The program's status; track.py writes `exit_code` once the whole session has ended.
        f"echo \"$code\" > {q(job.main_exit)}.tmp && mv {q(job.main_exit)}.tmp {q(job.main_exit)}\n"
    )


def first_failure(text: str) -> tuple[int, int, int] | None:
    """(local rank, global rank, exit code) of the first worker that failed in the last attempt
    recorded in a `failures` file ("LOCAL_RANK RANK CODE [ATTEMPT]" lines; torchrun restarts
    a node's workers up to --torchrun-restarts times, and only the last attempt ended the job)."""
    first: dict[int, tuple[int, int, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) in (3, 4) and all(p.lstrip("-").isdigit() for p in parts):
            attempt = int(parts[3]) if len(parts) == 4 else 0
            first.setdefault(attempt, (int(parts[0]), int(parts[1]), int(parts[2])))
    return first[max(first)] if first else None
