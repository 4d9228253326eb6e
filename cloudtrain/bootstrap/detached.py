"""A bootstrap step run detached on the node, as jobs are: a log, a pid and an exit file.

A step that ran in the foreground of the SSH session (apt, dpkg, DKMS, pip) died or hung with
the connection, leaving dpkg half-configured. Here the step is its own session (setsid, nohup),
started by one short command; the connection only watches its files, so it can drop and come
back: `wait` reconnects and goes on waiting for the same run, and `look` tells a later
bootstrap that a step is still running (reattach) or finished while nobody watched.

On the node, in bootstrap/steps/:
    NN-x.sh     the step's script          NN-x.pid   its session id while it runs
    NN-x.exit   "<status> <fingerprint>" once it has ended (written whole, by rename);
                removed once apply has recorded the outcome, so one found means an unrecorded run
"""

from __future__ import annotations

import shlex
import threading
import time
from dataclasses import dataclass
from typing import Callable

from cloudtrain.errors import BootstrapError, HostKeyMismatch, RemoteError
from cloudtrain.remote import SshRemote

# How long a lost connection may stay lost while a step runs there before bootstrap gives up
# waiting (the step goes on; the next bootstrap reattaches to it).
RECONNECT_TIMEOUT = 600.0
# One watching command waits on the node at most this long, so a dead link is seen within it.
WATCH_S = 10.0

# The wrapper is the session leader; its command line names the step's script, which is how
# `end_steps` and `look` know a pid file still means this step (never a recycled pid).
_WRAPPER = (
    'echo $$ > "${0%.sh}.pid"; '
    '$2 "$0" > "$1" 2>&1 < /dev/null; rc=$?; '
    'echo "$rc $3" > "${0%.sh}.exit.tmp" && mv "${0%.sh}.exit.tmp" "${0%.sh}.exit"; '
    'rm -f "${0%.sh}.pid"'
)

# Prints "exit <status> <fingerprint>", "running" or "gone" for the step whose script is $1;
# with $2 > 0, first waits up to $2 seconds for it to stop running.
_LOOK = r"""
base="${1%.sh}"
alive() {
  pid=$(cat "$base.pid" 2>/dev/null) || return 1
  case "$pid" in ''|*[!0-9]*) return 1 ;; esac
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$1"
}
end=$(( $(date +%s) + ${2:-0} ))
while [ ! -e "$base.exit" ] && alive && [ "$(date +%s)" -lt "$end" ]; do sleep 0.2; done
if [ -e "$base.exit" ]; then echo "exit $(cat "$base.exit")"
elif alive; then echo running
else echo gone; fi
"""


@dataclass(frozen=True)
class Seen:
    state: str  # "running" | "exit" | "gone"
    code: int | None = None
    fingerprint: str = ""


def _parse(text: str) -> Seen:
    words = (text.strip().splitlines() or [""])[-1].split()
    if words[:1] == ["exit"] and len(words) >= 2 and words[1].lstrip("-").isdigit():
        return Seen("exit", int(words[1]), words[2] if len(words) > 2 else "")
    return Seen(words[0] if words and words[0] in ("running", "gone") else "gone")


def look(remote: SshRemote, script_path: str, wait_s: float = 0.0) -> Seen:
    """What became of the step whose script is `script_path`; waits up to `wait_s` for it to end."""
    result = remote.run(f"bash -c {shlex.quote(_LOOK)} look {shlex.quote(script_path)} {int(wait_s)}", timeout=wait_s + 60)
    return _parse(result.stdout)


def start(remote: SshRemote, script_path: str, log_path: str, runner: str, fingerprint: str) -> None:
    """Start the step in a session of its own and return at once; a stale exit file goes first."""
    q = shlex.quote
    base = script_path[: -len(".sh")]
    remote.run(
        # `rm ...; setsid ... &`, not `rm && setsid ... &`: that would background a subshell
        # holding the SSH session's pipes (and so the connection) for as long as the step runs.
        f"rm -f {q(base + '.exit')}; setsid nohup bash -c {q(_WRAPPER)} {q(script_path)} {q(log_path)} {q(runner)} {q(fingerprint)}"
        # The pid is on file before this returns (setsid and nohup exec in place: $! is the
        # wrapper), so a look just after never mistakes a step not yet started for one gone.
        f" > /dev/null 2>&1 < /dev/null & echo $! > {q(base + '.pid')}"
    )


def forget(remote: SshRemote, script_path: str) -> None:
    """Drop the step's exit file once its outcome is recorded elsewhere (bootstrap/state.json)."""
    remote.run(f"rm -f {shlex.quote(script_path[: -len('.sh')] + '.exit')}")


def wait(
    remote: SshRemote,
    script_path: str,
    say: Callable[[str], None],
    stop: threading.Event | None = None,
    reconnect_timeout: float = RECONNECT_TIMEOUT,
) -> Seen:
    """Watch the step until it is no longer running, across dropped connections."""
    lost_since: float | None = None
    while True:
        try:
            seen = look(remote, script_path, wait_s=1 if stop is not None and stop.is_set() else WATCH_S)
        except HostKeyMismatch:
            raise  # another machine answering is never the node coming back
        except RemoteError as e:
            remote.close()
            now = time.monotonic()
            if lost_since is None:
                lost_since = now
                say("lost the connection; the step goes on on the node; reconnecting")
            if now - lost_since > reconnect_timeout:
                raise BootstrapError(
                    f"lost the connection to {remote.node.name} for {reconnect_timeout / 60:.0f} minutes while a bootstrap step ran there",
                    "the step goes on on the node; run `cloudtrain bootstrap` to reattach and finish",
                    layer="connection",
                ) from e
            time.sleep(1.0)
            continue
        if lost_since is not None:
            say("reconnected; still waiting for the same step")
            lost_since = None
        if seen.state != "running":
            return seen
