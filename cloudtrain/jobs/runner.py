"""A job on every node of a cluster: submit here; follow (follow.py) and collect (collect.py).

A job runs detached from the SSH session (setsid + nohup); its pid, log and exit status are
files on the node, so a dropped connection or a closed laptop loses nothing: `follow` picks the
log up again by offset and `collect` brings the outputs home whenever it is called.
"""

from __future__ import annotations

import json
import shlex
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from cloudtrain import safefile
from cloudtrain.early import EarlyStream
from cloudtrain.errors import CloudtrainError, CommandFailed
from cloudtrain.jobs import checkpoints
from cloudtrain.jobs import collect as collecting
from cloudtrain.jobs import follow as following
from cloudtrain.jobs import launch as launching
from cloudtrain.jobs import secrets as secrets_
from cloudtrain.jobs import sync, task_shell
from cloudtrain.jobs.record import JobRecord, new_job_id
from cloudtrain.jobs import destination
from cloudtrain.jobs import shipment as shipping
from cloudtrain.jobs.sessions import Sessions
from cloudtrain.jobs.shipment import Shipment
from cloudtrain.jobs.workdir import git_commit
from cloudtrain.layout import JobPaths, NodePaths
from cloudtrain.machine import Cluster, Node
from cloudtrain.remote import SshRemote
from cloudtrain.spec import JobSpec
from cloudtrain.state import ClusterDir, Store

Say = Callable[[str], None]


def _say(text: str) -> None:
    print(f"cloudtrain: {text}", file=sys.stderr, flush=True)


class JobRunner:
    def __init__(self, store: Store, cdir: ClusterDir, cluster: Cluster, say: Say = _say) -> None:
        self.store = store
        self.cdir = cdir
        self.cluster = cluster
        self.say = say
        # One session per node for this command: submit, follow, stop and collect share it.
        self.sessions = Sessions(cluster.identity_file)
        self._paths: dict[str, NodePaths] = {}
        self._warming: dict[str, Future] = {}
        self._paths_lock = threading.Lock()  # node-paths.json, from a thread per node
        self.senders: dict[str, EarlyStream] = {}  # each node's outputs sender, waiting for the job's end (collect.start_senders)

    def __enter__(self) -> "JobRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for name, future in list(self._warming.items()):
            self.sessions.of(self._node(name)).abandon()  # a node still being retried: stop
            future.exception()  # nothing may open a connection (or an ssh master) after this
        self._warming.clear()
        for sender in self.senders.values():
            sender.close()  # never given a request (an interrupted follow): it ends on the node
        self.senders.clear()
        self.sessions.close()

    def warm(self) -> None:
        """Start reaching every node now, in the background, while this machine plans and
        records the job (issue 9): the connection and where cloudtrain lives on the node. The first use of a node waits for its warm-up and meets its error."""
        if self._warming:
            return
        pool = ThreadPoolExecutor(max_workers=min(16, len(self.cluster.nodes)), thread_name_prefix="warm")
        self._warming = {n.name: pool.submit(self._warm, n) for n in self.cluster.nodes}
        pool.shutdown(wait=False)

    def _warm(self, node: Node) -> None:
        # The bulk path's master starts when bulk data first moves (a changed workdir, outputs
        # that are not small): a second handshake costs a no-op run more than it saves (issue 9).
        remote = self.sessions.of(node)
        remote.client()  # the handshake, even where the paths are remembered and ask nothing
        self.paths(remote)

    def _node(self, name: str) -> Node:
        return next(n for n in self.cluster.nodes if n.name == name)

    def remote(self, node: Node) -> SshRemote:
        """This node's shared session (opened on first use)."""
        future = self._warming.pop(node.name, None)
        if future is not None and (error := future.exception()) is not None:
            raise error
        return self.sessions.of(node)

    def facts(self, node: Node) -> dict:
        """What bootstrap recorded about the node: bootstrap.cluster.load_facts, without loading
        the whole bootstrap (and the resolver's tables) into every `run` (issue 9)."""
        path = self.cdir.root / "facts" / f"{node.name}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def paths(self, remote: SshRemote) -> NodePaths:
        """Where cloudtrain keeps things on that node: asked once per node, then remembered in
        the cluster's folder (each command asking again cost a node-side shell: issue 9)."""
        found = self._paths.get(remote.node.name)
        if found is None:
            found = self._paths[remote.node.name] = self._remembered(remote)
        return found

    def _remembered(self, remote: SshRemote) -> NodePaths:
        node = remote.node
        # Keyed by where and what the node is: a node replaced under the same name is asked again.
        key = f"{node.user}@{node.host}:{node.port} {node.host_key}"
        file = self.cdir.root / "node-paths.json"
        with self._paths_lock:
            try:
                known = json.loads(file.read_text())
                entry = known.get(node.name)
                if isinstance(entry, dict) and entry.get("node") == key and isinstance(entry.get("root"), str) and entry["root"]:
                    return NodePaths(root=entry["root"])
            except (OSError, ValueError, AttributeError):  # absent or damaged: ask the node
                known = {}
        found = NodePaths.of(remote)
        with self._paths_lock:
            try:
                known = json.loads(file.read_text())
                known = known if isinstance(known, dict) else {}
            except (OSError, ValueError):
                known = {}
            known[node.name] = {"node": key, "root": found.root}
            try:
                safefile.write_json(file, known)
            except OSError:
                pass  # only a cache: the next command asks again
        return found

    def _each(self, fn: Callable[[int, Node], object]) -> list[object]:
        with ThreadPoolExecutor(max_workers=min(16, len(self.cluster.nodes))) as pool:
            return list(pool.map(lambda rn: fn(*rn), enumerate(self.cluster.nodes)))

    # -- submit -----------------------------------------------------------------------------

    def submit(self, job: Shipment | JobSpec, restart_of: JobRecord | None = None, restart_count: int = 0) -> JobRecord:
        """Claim the outputs folder, record the job, ship and start it on every node.

        `job` is best planned with `shipment.prepare` before anything else happens (so a refusal
        costs nothing); a bare JobSpec is planned here. `restart_of`: the same job again, on
        this (recovered) cluster, with its checkpoints restored (recovery.py)."""
        linger = following.linger_s()
        following.patience_s()  # a bad setting is refused before anything is claimed or shipped
        shipment = job if isinstance(job, Shipment) else shipping.prepare(job, self.say)
        spec, files = shipment.spec, shipment.files
        gpus = [len(self.facts(n).get("gpus") or []) for n in self.cluster.nodes]
        framework = self.cdir.load().spec.framework.name
        launch = launching.plan(spec, framework, len(self.cluster.nodes), min(gpus))  # refused before anything is claimed
        secrets = secrets_.values(spec.secrets)  # read once; refused before anything is claimed
        if restart_of is not None:
            record = restart_of
            job_id, record.nodes = record.job_id, [n.name for n in self.cluster.nodes]
        else:
            job_id = new_job_id(spec.stem)
            output = spec.output or (Path.cwd() / "runs" / job_id)
            # Before the record: a folder that cannot take this job's outputs must not end up owed them.
            destination.claim(output, spec.output_mode, job_id, spec.workdir, explicit=spec.output is not None)
            record = JobRecord(
                job_id=job_id,
                cluster=self.cluster.name,
                output=str(output),
                script=spec.script_rel or "(task run)",
                args=list(spec.args),
                env_keys=sorted(spec.env),
                workdir=str(spec.workdir),
                nodes=[n.name for n in self.cluster.nodes],
                cluster_created_at=self.cdir.load().created_at,
                extra={"script_sha256": spec.script_sha256(), "secrets": sorted(spec.secrets), "git": git_commit(spec.workdir), "files": len(files),
                       "launcher": "torchrun" if launch.torchrun else "none", "nproc_per_node": launch.nproc_per_node, "logs": spec.logs},
            )
        record.status = "starting"
        record.save(self.store)  # before anything runs, so `down` always knows what is owed
        started = time.monotonic()
        self.say(f"job {job_id}: shipping {len(files)} file(s), {shipment.size / 1024:.0f} KiB, to {len(self.cluster.nodes)} node(s)")

        # With one node and nothing to do between shipping and starting, the start rides the
        # workdir's own node-side command (a round trip less, issue 9); with several, every node
        # is prepared before any starts.
        start_with_ship = (len(self.cluster.nodes) == 1 and not secrets and "requirements.txt" not in files and spec.setup is None
                           and restart_of is None)
        started_nodes: set[str] = set()

        def prepare(rank: int, node: Node) -> None:
            remote = self.remote(node)
            paths = self.paths(remote)
            job = paths.job(job_id)
            if not spec.detach:  # its python starts while the workdir ships, not after a short job's end (issue 9)
                collecting.start_senders(self, [remote], [job.exit_code])
            env = launching.job_env(self.cluster, rank, job_id, job.out, gpus[rank], launch, framework)
            env = {**env, **checkpoints.job_env(job, restart_count)}  # $CLOUDTRAIN_CHECKPOINT_DIR, made by run.sh
            job_files = [(job.run_sh, launching.run_sh(paths, job, spec, env, launch), 0o700),
                         (job.tracker, Path(__file__).with_name("node_track.py").read_text(), 0o600)]
            if launch.torchrun:
                job_files.append((f"{job.dir}/{launching.WORKER_FILE}", launching.worker_source(), 0o600))
            track = {"dir": job.dir, "log": job.log, "pid": job.pid, "linger": linger} if start_with_ship else None
            synced = sync.ship(remote, paths, spec.workdir, files, job.work, job_files, track)
            if track is not None:
                started_nodes.add(node.name)
            self.say(f"job {job_id}: {node.name} sent {synced.sent} of {synced.total} file(s), {shipping.human(synced.bytes)} changed")
            if "requirements.txt" in files:
                self._requirements(remote, paths, job)
            if spec.setup is not None:  # a task file's (jobs/task_shell.py)
                task_shell.setup(remote, paths, job, spec.setup, {**env, **spec.env, **secrets}, self.say)
            if restart_of is not None:  # recovery.py: what came home is restored before the job starts
                restored = checkpoints.restore(remote, job, checkpoints.local_dir(record.output))
                self.say(f"job {job_id}: {node.name} restored {len(restored)} checkpoint file(s)")

        def start(rank: int, node: Node) -> None:
            if node.name in started_nodes:
                return
            remote = self.remote(node)
            paths = self.paths(remote)
            job = paths.job(job_id)
            if secrets:  # over the channel's stdin, never on the node's disk (jobs/secrets.py)
                secrets_.start(remote, paths, job, linger, secrets)
                return
            remote.run(self._start_command(paths, job, linger))

        try:
            # Every node is reached and prepared before any starts: a node that fails its host
            # key check or its install leaves the others untouched, not running a partial job.
            self._each(prepare)
            self._each(start)
        except CloudtrainError:
            record.status = "ended"
            record.exit_code = 1
            record.save(self.store)
            raise
        record.status = "running"
        record.started_at = time.time()
        record.timings["ship_s"] = round(time.monotonic() - started, 3)
        record.save(self.store)
        return record

    @staticmethod
    def _start_command(paths: NodePaths, job: JobPaths, linger: float) -> str:
        # The session leader's pid is the job's session id: every process of the job
        # carries it, whatever becomes of the wrapper (track.py).
        q = shlex.quote
        return (
            f"cd {q(job.dir)} && touch {q(job.log)} && (setsid nohup {q(paths.python)} -I -S track.py . {linger} "
            f"> /dev/null 2>&1 < /dev/null & echo $! > {q(job.pid)})"
        )

    def _requirements(self, remote: SshRemote, paths: NodePaths, job: JobPaths) -> None:
        # Installed once per distinct requirements.txt: a marker in the venv remembers its hash.
        # pip runs in the workdir so relative paths in the file mean what they meant here.
        q = shlex.quote
        script = (
            f"cd {q(job.work)} && h=$(sha256sum requirements.txt | cut -c1-16) && m={q(paths.venv)}/.cloudtrain-req-$h && "
            f"if [ -e \"$m\" ]; then echo unchanged; else "
            f"{q(paths.python)} -m pip install --disable-pip-version-check -q -r requirements.txt && touch \"$m\" && echo installed; fi"
        )
        try:
            result = remote.run(script)
        except CommandFailed as e:
            lines = (e.result.stderr.strip() or e.result.stdout.strip()).splitlines()
            raise CloudtrainError(
                f"installing requirements.txt on {remote.node.name} failed: {lines[-1] if lines else 'pip exited ' + str(e.result.exit_code)}",
                "fix requirements.txt (or pin versions the node can install) and run again",
            ) from e
        self.say(f"{remote.node.name}: requirements.txt {result.stdout.strip().splitlines()[-1]}")

    # -- follow, stop, collect: their own modules; the runner is what they share ------------

    def follow(self, record: JobRecord, stream: bool = True, offset: int = 0, patience: float | None = None) -> int:
        return following.follow(self, record, stream=stream, offset=offset, patience=patience)

    def exit_codes(self, record: JobRecord) -> list[int | None]:
        return following.exit_codes(self, record)

    def end(self, record: JobRecord) -> None:
        following.end(self, record)

    def stop(self, record: JobRecord) -> None:
        following.stop(self, record)

    def collect(self, record: JobRecord) -> Path:
        return collecting.collect(self, record)
