"""A task file's shell parts on the node: `run` as a bash snippet, and `setup`, once per node for
each distinct content (its hash marks the node's venv once it succeeded, as requirements.txt's does).

Both run in the job's workdir with the venv first on PATH (so `python`/`pip` are the job's), the
SkyPilot names of the job environment beside cloudtrain's (a SkyPilot `run` that reads
$SKYPILOT_NODE_RANK runs as it is), and, for setup, the job's env and secrets, taken from stdin.
"""

from __future__ import annotations

import hashlib
import shlex
import time
from typing import Callable

from cloudtrain.errors import CloudtrainError, CommandFailed
from cloudtrain.jobs import secrets as secrets_
from cloudtrain.layout import JobPaths, NodePaths
from cloudtrain.remote import SshRemote


def prelude(venv: str) -> str:
    q = shlex.quote
    return (
        f"export VIRTUAL_ENV={q(venv)} PATH={q(venv)}/bin:\"$PATH\"\n"
        'export SKYPILOT_NODE_RANK="$CLOUDTRAIN_NODE_RANK" SKYPILOT_NUM_NODES="$CLOUDTRAIN_NUM_NODES" '
        'SKYPILOT_NUM_GPUS_PER_NODE="$CLOUDTRAIN_GPUS_PER_NODE" SKYPILOT_TASK_ID="$CLOUDTRAIN_JOB_ID"\n'
        'SKYPILOT_NODE_IPS=$(printf %s "$CLOUDTRAIN_NODE_IPS" | tr , "\\n"); export SKYPILOT_NODE_IPS\n'
    )


def command(paths: NodePaths, shell: str) -> list[str]:
    """The argv of a `run` snippet: one bash, whose exit status is the job's."""
    return ["bash", "-c", prelude(paths.venv) + shell]


def setup_hash(setup: str) -> str:
    return hashlib.sha256(setup.encode()).hexdigest()[:16]


def setup(remote: SshRemote, paths: NodePaths, job: JobPaths, text: str, env: dict[str, str], say: Callable[[str], None]) -> None:
    """Run `setup` on this node unless this very content already succeeded here. Its output goes
    to the job's log (it comes home in log.txt); a failure names the node and its last line."""
    q = shlex.quote
    marker = f"{paths.venv}/.cloudtrain-setup-{setup_hash(text)}"
    if remote.run(f"test -e {q(marker)}", check=False).ok:
        say(f"{remote.node.name}: setup unchanged, not run again")
        return
    started = time.monotonic()
    script = prelude(paths.venv) + text
    try:
        remote.run(
            f"cd {q(job.work)} && " + secrets_.reader(paths.python, "bash", "-c", q(script)) + f" >> {q(job.log)} 2>&1 && touch {q(marker)}",
            stdin=secrets_.payload(env),
        )
    except CommandFailed as e:
        tail = remote.run(f"tail -n 1 {q(job.log)}", check=False).stdout.strip()
        raise CloudtrainError(
            f"the task's setup failed on {remote.node.name} (exit {e.result.exit_code}): {tail[:300] or 'no output'}",
            "fix `setup` in the task file and run again (a setup runs again until it succeeds)",
        ) from e
    say(f"{remote.node.name}: setup done in {time.monotonic() - started:.1f}s")
