"""Running the Pulumi CLI so that an interrupt lets the engine stop cleanly.

The SDK's own `PulumiCommand.run` starts the CLI in cloudtrain's process group and, when
KeyboardInterrupt arrives, leaves through `Popen.__exit__`: it closes the CLI's pipes and waits
0.25 s. The CLI then dies on its next write, mid-cancel, leaving the stack locked and its
in-flight creates pending (a VM the cloud accepted whose ID state never recorded).

Here the CLI runs in its own session, so a terminal's Ctrl-C reaches cloudtrain only (two
SIGINTs would make the engine terminate at once: pulumi/pulumi#1231). On any exception in
cloudtrain while the CLI runs (Ctrl-C, SIGTERM and SIGHUP arrive as KeyboardInterrupt), the CLI
gets one SIGINT, the engine's graceful cancel: it finishes in-flight operations, writes state
and releases the lock. cloudtrain keeps reading its output and waits, bounded; past the bound it
sends a second SIGINT (terminate), then SIGKILL. Then the exception goes on, to the teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import IO, Any, Callable, Optional

import pulumi.automation as auto
from pulumi.automation import errors as auto_errors

from cloudtrain import interrupts

OnOutput = Callable[[str], Any]

# How long the engine may take to finish in-flight operations after the first SIGINT: creating a
# VM takes a few minutes on Azure. Then a second SIGINT, then SIGKILL after GRACE_KILL_S.
STOP_TIMEOUT_S = float(os.environ.get("CLOUDTRAIN_PULUMI_STOP_TIMEOUT", "600"))
GRACE_KILL_S = 10.0
# Left in the CLI's work folder when it had to be killed: its lock is stale, and whoever destroys
# the stack next (this process, or a later `down`) releases it first.
KILLED_MARKER = ".cloudtrain-cli-killed"


class GracefulCommand(auto.PulumiCommand):
    """A PulumiCommand whose `run` forwards an interrupt to the CLI as one SIGINT and waits."""

    def __init__(self, base: auto.PulumiCommand) -> None:
        # Copies the checked CLI's path and version: no second `pulumi version`.
        self.command = base.command
        self.version = base.version
        self.interrupted = False  # the CLI was sent SIGINT by us
        self.killed = False  # it did not stop in time: its lock and pending operations remain

    def run(
        self,
        args: list[str],
        cwd: str,
        additional_env: Mapping[str, str],
        on_output: Optional[OnOutput] = None,
        on_error: Optional[OnOutput] = None,
    ) -> auto.CommandResult:
        sep = args.index("--") if "--" in args else len(args)
        if "--non-interactive" not in args[:sep]:
            args.insert(0, "--non-interactive")
        env = {**os.environ, **additional_env, "PULUMI_AUTOMATION_API": "true"}
        if os.path.isabs(self.command):
            env["PATH"] = os.pathsep.join([os.path.dirname(self.command), env.get("PATH", "")])
        out: list[str] = []
        err: list[str] = []
        proc = subprocess.Popen(
            [self.command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,  # the terminal's signals reach cloudtrain, which forwards one
        )
        readers = [
            threading.Thread(target=_consume, args=(proc.stdout, on_output, out), daemon=True),
            threading.Thread(target=_consume, args=(proc.stderr, on_error, err), daemon=True),
        ]
        for t in readers:
            t.start()
        try:
            code = proc.wait()
        except BaseException:
            self._stop(proc, cwd)
            raise
        finally:
            for t in readers:
                t.join(timeout=5)
        result = auto.CommandResult(stdout="\n".join(out), stderr="\n".join(err), code=code)
        if code != 0:
            raise auto_errors.create_command_error(result)
        return result

    def _stop(self, proc: subprocess.Popen, cwd: str) -> None:
        """One SIGINT, wait; past the bound a second SIGINT, then SIGKILL. Never raises."""
        if proc.poll() is not None:
            return
        self.interrupted = True
        interrupts.write(f"cloudtrain: letting Pulumi finish the operations in flight and save its state (up to {STOP_TIMEOUT_S:g}s)")
        _signal(proc, signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            _wait_quietly(proc, min(1.0, max(0.0, deadline - time.monotonic())))
        if proc.poll() is not None:
            return
        self.killed = True
        interrupts.write("cloudtrain: Pulumi did not stop in time; terminating it (its lock and pending operations are resolved next)")
        try:
            open(os.path.join(cwd, KILLED_MARKER), "w").close()
        except OSError:
            pass
        _signal(proc, signal.SIGINT)  # the engine's "terminate now"
        _wait_quietly(proc, GRACE_KILL_S)
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its plugins too: they share its session
            except OSError:
                pass
        while proc.poll() is None:
            _wait_quietly(proc, 1.0)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except OSError:
        pass


def _wait_quietly(proc: subprocess.Popen, timeout: float) -> None:
    """Wait up to `timeout`; a second interrupt while stopping is already reported by
    cloudtrain.interrupts and must not cut the wait short."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    except KeyboardInterrupt:
        pass


def _consume(stream: IO[str] | None, callback: Optional[OnOutput], chunks: list[str]) -> None:
    if stream is None:
        return
    try:
        for line in iter(stream.readline, ""):
            stripped = line.rstrip()
            if callback:
                try:
                    callback(stripped)
                except Exception:  # noqa: BLE001 - a dead terminal must not stop us draining the pipe
                    callback = None
            chunks.append(stripped)
    finally:
        stream.close()


def graceful(command: auto.PulumiCommand | None) -> GracefulCommand:
    """The given CLI (or the one on PATH) wrapped for clean interrupts."""
    if isinstance(command, GracefulCommand):
        return command
    return GracefulCommand(command if command is not None else auto.PulumiCommand())
