"""Run a plan on a node, recording each applied step so a second run does nothing.

On the node, under its cloudtrain folder:
    bootstrap/state.json      {step name: fingerprint} of every step applied
    bootstrap/steps/NN-x.sh   the exact script each step ran; NN-x.pid and NN-x.exit: its run
                              (detached.py: a step survives a dropped connection)
    bootstrap/logs/NN-x.log   its output (these come home into the cluster's logs/)
"""

from __future__ import annotations

import json
import shlex
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cloudtrain.bootstrap import detached, dpkg
from cloudtrain.bootstrap.steps import Step
from cloudtrain.errors import BootstrapError, HostKeyMismatch, RemoteError
from cloudtrain.layout import NodePaths
from cloudtrain.remote import SshRemote

Say = Callable[[str], None]
# A GPU VM's reboot (shutdown, firmware, a new kernel module) takes one to a few minutes.
REBOOT_TIMEOUT = 900.0
REBOOT_POLL = 5.0


@dataclass(frozen=True)
class Outcome:
    step: Step
    status: str  # "ran" | "done before" | "not needed"
    seconds: float = 0.0


def _read_state(remote: SshRemote, paths: NodePaths) -> dict[str, str]:
    raw = remote.read_from(paths.state, 0)
    try:
        return json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}  # a damaged record only costs a rerun of idempotent steps


def apply(remote: SshRemote, steps: list[Step], facts: dict[str, Any], say: Say = print, stop: threading.Event | None = None) -> list[Outcome]:
    """Run the steps not yet applied, in order; with `stop` set (an interrupt), start no more."""
    paths = NodePaths.of(remote)
    remote.run(f"mkdir -p {shlex.quote(paths.steps)} {shlex.quote(paths.logs)}")
    state = _read_state(remote, paths)
    outcomes = []
    repaired = False
    for index, step in enumerate(steps):
        if not step.needed:
            outcomes.append(Outcome(step, "not needed"))
            continue
        if state.get(step.name) == step.fingerprint:
            outcomes.append(Outcome(step, "done before"))
            continue
        if stop is not None and stop.is_set():
            raise BootstrapError(f"bootstrap of {remote.node.name} stopped before '{step.name}'", "run `cloudtrain bootstrap` to finish it", layer=step.name)
        say(f"{step.name}: {step.summary} ...")
        started = time.monotonic()
        if step.sudo and not repaired:
            # Before the first apt step: a dpkg left half-done (a cut connection, a reboot
            # mid-install) refuses every install until it is finished.
            _run_step(remote, paths, index, dpkg.REPAIR, facts, say, stop)
            repaired = True
        _run_step(remote, paths, index, step, facts, say, stop)
        say(f"{step.name}: done in {time.monotonic() - started:.1f}s")
        if step.reboot_after and not _reboot_declined(remote, paths, index, step):
            # Recorded only once the node is back: a step whose reboot never happened is
            # not done, so the next bootstrap runs it (idempotently) and reboots again.
            _reboot(remote, facts, say)
        state[step.name] = step.fingerprint
        remote.write_text(paths.state, json.dumps(state, indent=2, sort_keys=True))
        # Recorded now, so its exit file is spent: one found later is a run no bootstrap recorded.
        detached.forget(remote, _script_path(paths, index, step))
        outcomes.append(Outcome(step, "ran", time.monotonic() - started))
    return outcomes


# A reboot_after step that found nothing needing one (the nvidia-driver step on a node whose
# driver is already loaded) prints this line; rebooting anyway would cost minutes for nothing.
REBOOT_NOT_NEEDED = "cloudtrain-reboot: not needed"


def _reboot_declined(remote: SshRemote, paths: NodePaths, index: int, step: Step) -> bool:
    log_path = f"{paths.logs}/{index:02d}-{step.name}.log"
    return remote.run(f"grep -qF {shlex.quote(REBOOT_NOT_NEEDED)} {shlex.quote(log_path)}", check=False).exit_code == 0


def forget(remote: SshRemote, step_name: str) -> None:
    """Mark one step as not applied, so the next bootstrap runs it again."""
    paths = NodePaths.of(remote)
    state = _read_state(remote, paths)
    if state.pop(step_name, None) is not None:
        remote.write_text(paths.state, json.dumps(state, indent=2, sort_keys=True))


def _script_path(paths: NodePaths, index: int, step: Step) -> str:
    return f"{paths.steps}/{index:02d}-{step.name}.sh"


def _run_step(remote: SshRemote, paths: NodePaths, index: int, step: Step, facts: dict[str, Any], say: Say, stop: threading.Event | None) -> None:
    """Run the step detached on the node and wait for it, reattaching to a run already there."""
    script_path, log_path = _script_path(paths, index, step), f"{paths.logs}/{index:02d}-{step.name}.log"
    seen = detached.look(remote, script_path)
    if seen.state == "running":
        # A bootstrap before this one started it and lost its connection: never start it twice.
        say(f"{step.name}: already running on the node; reattaching")
        seen = detached.wait(remote, script_path, say, stop)
        if seen.state == "exit" and seen.fingerprint == step.fingerprint:
            return _check(remote, step, seen, log_path, stop)
    elif seen.state == "exit" and seen.code == 0 and seen.fingerprint == step.fingerprint:
        say(f"{step.name}: had finished on the node while no bootstrap watched")
        return
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in {**paths.env(), **step.env}.items())
    remote.write_text(script_path, f"#!/usr/bin/env bash\nset -euo pipefail\n{exports}{step.script}", mode=0o700)
    runner = "bash" if not step.sudo or facts.get("is_root") else "sudo -n bash"
    # In a session of its own whose id is on the node while it runs, so that a dropped
    # connection never hangs it up and an interrupted bootstrap can end it and all it
    # started from a fresh connection (`end_steps`).
    detached.start(remote, script_path, log_path, runner, step.fingerprint)
    _check(remote, step, detached.wait(remote, script_path, say, stop), log_path, stop)


def _check(remote: SshRemote, step: Step, seen: detached.Seen, log_path: str, stop: threading.Event | None) -> None:
    if seen.state == "exit" and seen.code == 0:
        return
    log = remote.read_from(log_path, 0, limit=16 << 20).decode(errors="replace")
    if seen.state != "exit":
        if stop is not None and stop.is_set():
            raise BootstrapError(f"bootstrap of {remote.node.name} stopped during '{step.name}'", "run `cloudtrain bootstrap` to finish it", layer=step.name)
        raise BootstrapError(
            f"bootstrap step '{step.name}' on {remote.node.name} ended without an exit status (killed, or the node restarted)",
            f"run `cloudtrain bootstrap` to run it again; its log on the node is {log_path}",
            layer=step.name,
        )
    explained = step.explain(log, remote.node.name) if step.explain else None
    if explained is not None:
        raise explained
    tail = log.strip().splitlines()[-5:]
    detail = " | ".join(line.strip() for line in tail) or f"exit {seen.code}"
    raise BootstrapError(
        f"bootstrap step '{step.name}' failed on {remote.node.name}: {detail[-600:]}",
        f"full log on the node at {log_path} (copied into the cluster's logs/)",
        layer=step.name,
    )


# Ends every step still running on the node: each `NN-x.pid` names the session of a step whose
# leader still runs its `NN-x.sh` (checked, so a stale file never names someone else's
# processes). TERM, a few seconds' grace, then KILL; `sudo -n` where the step runs as root.
_END_STEPS = r"""
cd "$1" 2>/dev/null || exit 0
groups="" files=""
for f in *.pid; do
  [ -e "$f" ] || continue
  pg=$(cat "$f" 2>/dev/null)
  case "$pg" in ''|*[!0-9]*) continue ;; esac
  if tr '\0' ' ' < "/proc/$pg/cmdline" 2>/dev/null | grep -qF "$PWD/${f%.pid}.sh"; then
    groups="$groups $pg" files="$files $f"
  fi
done
[ -n "$groups" ] || exit 0
# A step killed here never reaches its wrapper's own `rm` of its pid file.
trap 'rm -f $files' EXIT
signal_all() { for pg in $groups; do kill -"$1" -- "-$pg" 2>/dev/null || sudo -n kill -"$1" -- "-$pg" 2>/dev/null || true; done; }
alive() { for pg in $groups; do pgrep -g "$pg" >/dev/null 2>&1 && return 0; done; return 1; }
signal_all TERM
for _ in $(seq 50); do alive || exit 0; sleep 0.1; done
signal_all KILL
"""


def end_steps(remote: SshRemote, timeout: float = 30.0) -> None:
    """End the bootstrap step running on this node, if any, with what it started."""
    paths = NodePaths.of(remote)
    remote.run(f"bash -c {shlex.quote(_END_STEPS)} end-steps {shlex.quote(paths.steps)}", timeout=timeout)


def _boot_id(remote: SshRemote) -> str:
    # CLOUDTRAIN_SYSROOT prefixes the files the bootstrap reads, as in common.sh.
    return remote.run('cat "${CLOUDTRAIN_SYSROOT:-}/proc/sys/kernel/random/boot_id"', timeout=30).stdout.strip()


def _reboot(remote: SshRemote, facts: dict[str, Any], say: Say) -> None:
    """Reboot the node and return once it answers from a new boot.

    Waiting a fixed time is not enough: shutdown can take longer (unattended-upgrades holds it
    while it finishes), and a reconnect to the old boot would start the next step just before
    the node goes down under it. So the boot id must change.
    """
    before = _boot_id(remote)
    say("rebooting; will reconnect and resume")
    runner = "" if facts.get("is_root") else "sudo -n "
    try:
        # Detached and delayed, so the command returns before the connection drops.
        remote.run(f"nohup sh -c 'sleep 2; {runner}reboot' >/dev/null 2>&1 &", check=False)
    except RemoteError:
        pass  # the node went down mid-command, as intended
    remote.close()
    deadline = time.monotonic() + REBOOT_TIMEOUT
    old_boot_answers = True
    while time.monotonic() < deadline:
        time.sleep(REBOOT_POLL)
        try:
            if _boot_id(remote) != before:
                return
            old_boot_answers = True
        except HostKeyMismatch:
            raise  # another machine answering is never "back"
        except RemoteError:
            old_boot_answers = False  # going down, down, or not yet answering
        remote.close()  # still the old boot, or a dead connection: ask afresh
    minutes = f"{REBOOT_TIMEOUT / 60:.0f} minutes"
    # The hints hold for `up` (which then removes the machine) and `bootstrap` (which leaves it) alike.
    if old_boot_answers:
        message = f"{remote.node.name} did not reboot: after {minutes} it still answers from the same boot"
        hint = f"`{runner}reboot` had no effect there: the SSH user must be able to run it (sudo without a password)"
    else:
        message = f"{remote.node.name} did not come back from its reboot within {minutes}"
        hint = "the machine's serial console in its cloud shows where its boot stopped"
    raise BootstrapError(message, hint, layer="reboot")


def fetch_logs(remote: SshRemote, dest: Path) -> None:
    """Bring the node's bootstrap logs home (best effort: a missing folder just means no steps ran)."""
    try:
        paths = NodePaths.of(remote)
        for name in remote.sftp().listdir(paths.logs):
            remote.get(f"{paths.logs}/{name}", dest / name)
    except (OSError, RemoteError):
        pass  # it runs after a failure too, which an unreachable node must not hide
