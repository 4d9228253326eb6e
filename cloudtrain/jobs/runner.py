"""Submit, follow and collect a job on every node of a cluster.

A job runs detached from the SSH session (setsid + nohup); its pid, log and exit status are
files on the node, so a dropped connection or a closed laptop loses nothing: `follow` picks the
log up again by offset and `collect` brings the outputs home whenever it is called.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from cloudtrain.bootstrap.cluster import load_facts
from cloudtrain.errors import CloudtrainError, CommandFailed, RemoteError
from cloudtrain.jobs import metrics, transfer
from cloudtrain.jobs.record import JobRecord, exit_meaning, new_job_id
from cloudtrain.jobs.workdir import git_commit, select_files, sha256_file, total_size
from cloudtrain.layout import JobPaths, NodePaths
from cloudtrain.machine import Cluster, Node
from cloudtrain.remote import SshRemote
from cloudtrain.spec import JobSpec
from cloudtrain.state import ClusterDir, Store

FAILURE_TAIL_LINES = 20  # of a failing rank's log, when it is not the streamed rank 0

Say = Callable[[str], None]


def _say(text: str) -> None:
    print(f"cloudtrain: {text}", file=sys.stderr, flush=True)


def job_env(cluster: Cluster, rank: int, job_id: str, out_dir: str, gpus_per_node: int) -> dict[str, str]:
    """DESIGN.md's job environment for one node."""
    ips = [n.private_ip for n in cluster.nodes]
    return {
        "CLOUDTRAIN_OUTPUT_DIR": out_dir,
        "CLOUDTRAIN_JOB_ID": job_id,
        "CLOUDTRAIN_NODE_RANK": str(rank),
        "CLOUDTRAIN_NUM_NODES": str(len(cluster.nodes)),
        "CLOUDTRAIN_NODE_IPS": ",".join(ips),
        "CLOUDTRAIN_MASTER_ADDR": ips[0],
        "CLOUDTRAIN_GPUS_PER_NODE": str(gpus_per_node),
    }


def _run_sh(paths: NodePaths, job: JobPaths, spec: JobSpec, env: dict[str, str]) -> str:
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in {**env, **spec.env}.items())
    argv = " ".join(shlex.quote(a) for a in [paths.python, "-u", spec.script_rel, *spec.args])
    q = shlex.quote
    return (
        "#!/usr/bin/env bash\n"
        f"cd {q(job.work)} || exit 1\n"
        f"{exports}"
        "export PYTHONUNBUFFERED=1\n"
        f"mkdir -p {q(job.out)}\n"
        f"{argv} >> {q(job.log)} 2>&1 < /dev/null\n"
        "code=$?\n"
        # Written then renamed, so a reader never sees a half-written status.
        f"echo \"$code\" > {q(job.exit_code)}.tmp && mv {q(job.exit_code)}.tmp {q(job.exit_code)}\n"
    )


class JobRunner:
    def __init__(self, store: Store, cdir: ClusterDir, cluster: Cluster, say: Say = _say) -> None:
        self.store = store
        self.cdir = cdir
        self.cluster = cluster
        self.say = say

    def _each(self, fn: Callable[[int, Node], object]) -> list[object]:
        with ThreadPoolExecutor(max_workers=min(16, len(self.cluster.nodes))) as pool:
            return list(pool.map(lambda rn: fn(*rn), enumerate(self.cluster.nodes)))

    # -- submit -----------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> JobRecord:
        job_id = new_job_id(spec.script)
        output = spec.output or (Path.cwd() / "runs" / job_id)
        # Earlier runs' outputs never travel back up, wherever they landed.
        files = select_files(spec.workdir, exclude=[output, Path.cwd() / "runs"])
        record = JobRecord(
            job_id=job_id,
            cluster=self.cluster.name,
            output=str(output),
            script=spec.script_rel,
            args=list(spec.args),
            env_keys=sorted(spec.env),
            workdir=str(spec.workdir),
            nodes=[n.name for n in self.cluster.nodes],
            cluster_created_at=self.cdir.load().created_at,
            extra={"script_sha256": sha256_file(spec.script), "git": git_commit(spec.workdir), "files": len(files)},
        )
        record.status = "starting"
        record.save(self.store)  # before anything runs, so `down` always knows what is owed
        started = time.monotonic()
        size = total_size(spec.workdir, files)
        self.say(f"job {job_id}: shipping {len(files)} file(s), {size / 1024:.0f} KiB, to {len(self.cluster.nodes)} node(s)")

        def prepare(rank: int, node: Node) -> None:
            with SshRemote(node, self.cluster.identity_file) as remote:
                paths = NodePaths.of(remote)
                job = paths.job(job_id)
                transfer.upload_tree(remote, spec.workdir, files, job.work)
                if "requirements.txt" in files:
                    self._requirements(remote, paths, job)
                gpus = len(load_facts(self.cdir, node).get("gpus") or [])
                remote.write_text(job.run_sh, _run_sh(paths, job, spec, job_env(self.cluster, rank, job_id, job.out, gpus)), mode=0o700)

        def start(rank: int, node: Node) -> None:
            with SshRemote(node, self.cluster.identity_file) as remote:
                job = NodePaths.of(remote).job(job_id)
                q = shlex.quote
                remote.run(f"cd {q(job.dir)} && touch {q(job.log)} && (setsid nohup bash run.sh > /dev/null 2>&1 < /dev/null & echo $! > {q(job.pid)})")

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

    # -- follow -----------------------------------------------------------------------------

    def follow(self, record: JobRecord, stream: bool = True, offset: int = 0) -> int:
        """Stream rank 0's log until every node's job has ended; return the job's exit code.

        The first failing rank's code wins; when one rank fails, the others are stopped so a
        distributed job does not hang waiting for a dead peer."""
        remotes = [SshRemote(n, self.cluster.identity_file) for n in self.cluster.nodes]
        try:
            paths = [NodePaths.of(r).job(record.job_id) for r in remotes]
            codes: list[int | None] = [None] * len(remotes)
            first_failure: int | None = None  # before stopping the others turns them into 143s
            last_alive_check = time.monotonic()
            while True:
                chunk = self._retrying(lambda: remotes[0].read_from(paths[0].log, offset))
                if chunk:
                    offset += len(chunk)
                    if stream:
                        sys.stdout.buffer.write(chunk)
                        sys.stdout.flush()
                    continue  # drain before checking status
                for i, r in enumerate(remotes):
                    if codes[i] is None:
                        raw = self._retrying(lambda r=r, p=paths[i]: r.read_from(p.exit_code, 0))
                        if raw.strip():
                            codes[i] = int(raw.strip())
                failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
                if failed and first_failure is None:
                    first_failure = codes[failed[0]]
                    for i in failed if len(remotes) > 1 else []:  # ranks that failed on their own, before any stop
                        self._report_failure(remotes[i], paths[i], i, codes[i])  # type: ignore[arg-type]
                if all(c is not None for c in codes) or failed:
                    if failed and any(c is None for c in codes):
                        self.say("stopping the job on the other nodes")
                        self._stop(remotes, paths, codes)
                        continue
                    tail = self._retrying(lambda: remotes[0].read_from(paths[0].log, offset))
                    if stream and tail:
                        sys.stdout.buffer.write(tail)
                        sys.stdout.flush()
                    break
                if time.monotonic() - last_alive_check > 5:
                    last_alive_check = time.monotonic()
                    self._check_alive(remotes, paths, codes)
                time.sleep(0.25)
        finally:
            for r in remotes:
                r.close()
        code = first_failure if first_failure is not None else 0
        record.status = "ended"
        record.exit_code = code
        record.ended_at = time.time()
        record.save(self.store)
        return int(code)  # type: ignore[arg-type]

    def _retrying(self, fn: Callable[[], bytes], patience: float = 300.0) -> bytes:
        deadline = time.monotonic() + patience
        while True:
            try:
                return fn()
            except RemoteError:
                if time.monotonic() > deadline:
                    raise
                self.say("connection lost; reconnecting (the job keeps running on the node)")
                time.sleep(2)

    def _report_failure(self, remote: SshRemote, paths: JobPaths, rank: int, code: int) -> None:
        """Name the failing node; show its log's tail unless it is rank 0's, already streamed."""
        self.say(f"{remote.node.name} (rank {rank}) exited {code}{exit_meaning(code)}")
        if rank == 0:
            return
        q = shlex.quote
        try:
            tail = remote.run(f"tail -n {FAILURE_TAIL_LINES} {q(paths.log)}", check=False).stdout
        except RemoteError:
            return  # the log still comes home with the outputs
        for line in tail.splitlines():
            self.say(f"  [{remote.node.name}] {line}")

    def _check_alive(self, remotes: list[SshRemote], paths: list[JobPaths], codes: list[int | None]) -> None:
        q = shlex.quote
        for i, r in enumerate(remotes):
            if codes[i] is not None:
                continue
            probe = f"test -e {q(paths[i].exit_code)} || kill -0 \"$(cat {q(paths[i].pid)})\" 2>/dev/null"
            try:
                gone = not r.run(probe, check=False).ok
            except RemoteError:
                continue
            if gone:
                self.say(f"the job's process on {r.node.name} vanished without an exit status")
                r.run(f"echo 137 > {q(paths[i].exit_code)}", check=False)

    def _stop(self, remotes: list[SshRemote], paths: list[JobPaths], codes: list[int | None]) -> None:
        """TERM the job's process group, KILL it if it is still there after 10 s (a job that
        traps TERM to checkpoint gets that long), and record 143 where it left no status."""
        q = shlex.quote
        for i, r in enumerate(remotes):
            if codes[i] is None:
                pid, status = q(paths[i].pid), q(paths[i].exit_code)
                r.run(
                    f'p=$(cat {pid}); kill -TERM -- "-$p" 2>/dev/null; '
                    f'for _ in $(seq 20); do kill -0 -- "-$p" 2>/dev/null || break; sleep 0.5; done; '
                    f'kill -KILL -- "-$p" 2>/dev/null; test -e {status} || echo 143 > {status}',
                    check=False,
                )

    def exit_codes(self, record: JobRecord) -> list[int | None]:
        """Each node's exit status for the job, None where it is still running."""
        codes: list[int | None] = []
        for node in self.cluster.nodes:
            with SshRemote(node, self.cluster.identity_file) as remote:
                raw = remote.read_from(NodePaths.of(remote).job(record.job_id).exit_code, 0).strip()
                codes.append(int(raw) if raw else None)
        return codes

    def end(self, record: JobRecord) -> None:
        """Record the exit code of a job nobody followed to its end (`down` before collecting),
        stopping it first where it still runs: a failing rank's code, else 0, else 143."""
        codes = self.exit_codes(record)
        if any(c is None for c in codes):
            self.say(f"job {record.job_id} is still running; stopping it and bringing home what exists")
            self.stop(record)
        failed = [c for c in codes if c not in (None, 0)]
        record.exit_code = failed[0] if failed else (0 if all(c == 0 for c in codes) else 143)
        record.status = "ended"
        record.save(self.store)

    def stop(self, record: JobRecord) -> None:
        """Stop a still-running job on every node, keeping what it wrote."""
        remotes = [SshRemote(n, self.cluster.identity_file) for n in self.cluster.nodes]
        try:
            paths = [NodePaths.of(r).job(record.job_id) for r in remotes]
            self._stop(remotes, paths, [None] * len(remotes))
        finally:
            for r in remotes:
                r.close()

    # -- collect ----------------------------------------------------------------------------

    def _set_aside_reserved(self, dest: Path, files: dict[str, dict[str, object]], rank: int) -> dict[str, dict[str, object]]:
        """A job's own log.txt / run.json / manifest.json would be overwritten by cloudtrain's:
        keep it as e.g. log.from-job.txt instead, so nothing the job wrote is lost."""
        reserved = ("log.txt", "run.json", "manifest.json") if rank == 0 else ("log.txt",)
        for name in reserved:
            if name in files:
                kept = Path(name).stem + ".from-job" + Path(name).suffix
                os.replace(dest / name, dest / kept)
                files[kept] = files.pop(name)
                self.say(f"the job wrote its own {name}; kept as {kept} beside cloudtrain's")
        return files

    def collect(self, record: JobRecord) -> Path:
        """Bring every node's outputs and log home, verified; write manifest.json and run.json."""
        output = Path(record.output)
        started = time.monotonic()

        def fetch(rank: int, node: Node) -> dict[str, dict[str, object]]:
            dest = output if rank == 0 else output / f"rank-{rank}"
            with SshRemote(node, self.cluster.identity_file) as remote:
                job = NodePaths.of(remote).job(record.job_id)
                files = self._set_aside_reserved(dest, transfer.download_tree(remote, job.out, dest), rank)
                if remote.exists(job.log):
                    remote.get(job.log, dest / "log.txt")
                    files = {**files, "log.txt": {"sha256": sha256_file(dest / "log.txt"), "size": (dest / "log.txt").stat().st_size}}
            prefix = "" if rank == 0 else f"rank-{rank}/"
            return {prefix + k: v for k, v in files.items()}

        manifest: dict[str, dict[str, object]] = {}
        for part in self._each(fetch):
            manifest.update(part)  # type: ignore[arg-type]
        (output / "manifest.json").write_text(json.dumps({"files": manifest}, indent=2, sort_keys=True) + "\n")
        record.timings["fetch_s"] = round(time.monotonic() - started, 3)
        summary, series = metrics.read(output)
        run = {
            "job_id": record.job_id,
            "cluster": record.cluster,
            "script": record.script,
            "args": record.args,
            "env_keys": record.env_keys,
            "workdir": record.workdir,
            "script_sha256": record.extra.get("script_sha256"),
            "git": record.extra.get("git"),
            "nodes": [{"name": n.name, "facts": load_facts(self.cdir, n)} for n in self.cluster.nodes],
            "exit_code": record.exit_code,
            "submitted_at": record.submitted_at,
            "started_at": record.started_at,
            "ended_at": record.ended_at,
            "timings": {**record.timings, **({"run_s": round(record.ended_at - record.started_at, 3)} if record.ended_at and record.started_at else {})},
            "metrics": summary,
            "metrics_points": len(series),
        }
        (output / "run.json").write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")
        record.status = "fetched"
        record.save(self.store)
        return output
