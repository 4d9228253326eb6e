"""Where cloudtrain keeps things on a node: one folder, the node's own `root` where its provider
chose one, else `$CLOUDTRAIN_NODE_ROOT` or ~/.cloudtrain.

    venv/                     the jobs' Python environment (bootstrap makes it)
    bootstrap/state.json      fingerprints of applied steps
    bootstrap/steps/, logs/   each step's script and output
    workdir-cache/<key>/      per workdir: tree/ (its last tree shipped here), manifest.json, lock (jobs/sync.py)
    jobs/<job-id>/            work/ (shipped files), out/ ($CLOUDTRAIN_OUTPUT_DIR), log.txt,
                              run.sh, track.py (the job's session leader), pid (its pid = the
                              job's session id), main_pid and main_exit (the program's),
                              exit_code (written once every process of the job has ended)
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudtrain.remote import SshRemote

ROOT_EXPR = '"${CLOUDTRAIN_NODE_ROOT:-$HOME/.cloudtrain}"'


@dataclass(frozen=True)
class NodePaths:
    root: str

    @classmethod
    def of(cls, remote: SshRemote) -> "NodePaths":
        if remote.node.root:
            return cls(root=remote.node.root)
        return cls(root=remote.run(f"echo {ROOT_EXPR}").stdout.strip())

    @property
    def venv(self) -> str:
        return f"{self.root}/venv"

    @property
    def python(self) -> str:
        return f"{self.venv}/bin/python"

    @property
    def state(self) -> str:
        return f"{self.root}/bootstrap/state.json"

    @property
    def steps(self) -> str:
        return f"{self.root}/bootstrap/steps"

    @property
    def logs(self) -> str:
        return f"{self.root}/bootstrap/logs"

    @property
    def workdir_cache(self) -> str:
        return f"{self.root}/workdir-cache"

    def job(self, job_id: str) -> "JobPaths":
        return JobPaths(f"{self.root}/jobs/{job_id}")

    def env(self) -> dict[str, str]:
        return {"CLOUDTRAIN_NODE_ROOT": self.root, "CLOUDTRAIN_VENV": self.venv, "CLOUDTRAIN_LOG_DIR": self.logs}


@dataclass(frozen=True)
class JobPaths:
    dir: str

    @property
    def work(self) -> str:
        return f"{self.dir}/work"

    @property
    def out(self) -> str:
        return f"{self.dir}/out"

    @property
    def log(self) -> str:
        return f"{self.dir}/log.txt"

    @property
    def run_sh(self) -> str:
        return f"{self.dir}/run.sh"

    @property
    def pid(self) -> str:
        return f"{self.dir}/pid"

    @property
    def exit_code(self) -> str:
        return f"{self.dir}/exit_code"

    @property
    def tracker(self) -> str:
        return f"{self.dir}/track.py"

    @property
    def main_pid(self) -> str:
        return f"{self.dir}/main_pid"

    @property
    def main_exit(self) -> str:
        return f"{self.dir}/main_exit"
