"""A node-side command started ahead of its input, on a session's control connection.

Issue 9: a job's outputs sender is started while the job runs, so its channel's round trips and
its python start overlap the job; it waits on its stdin and is given its request once the job
has ended. paramiko errors become RemoteErrors here. The session is left to its owner (follow
reconnects it from another thread), so a failure here never closes it.
"""

from __future__ import annotations

import io
import select
import time
from typing import Iterator, Sequence

from cloudtrain import channels
from cloudtrain.errors import CommandFailed, RemoteError
from cloudtrain.paramiko_lean import paramiko
from cloudtrain.remote import STALL_TIMEOUT, Result, SshRemote

OPEN_TIMEOUT_S = 30.0  # a channel the node does not open by then is not worth waiting for


class EarlyStream:
    """`command` running on the node now; its stdin is given, and its stdout read, later."""

    def __init__(self, remote: SshRemote, command: str, notice: bytes = b"") -> None:
        """`notice`: what the command writes before it reads its stdin (wait_any wakes on it)."""
        self.remote, self.command = remote, command
        self._notice = notice  # the part of it not yet read
        try:
            transport = remote.client().get_transport()
            if transport is None:
                raise EOFError("no connection")
            self._channel = transport.open_session(timeout=OPEN_TIMEOUT_S)
            self._channel.exec_command(command)
        except (OSError, paramiko.SSHException, EOFError) as e:
            raise RemoteError(f"cannot start a command on {remote.node.name}: {e}", "run it again") from e

    def stdout(self, stdin: bytes) -> Iterator[bytes]:
        """Give the command `stdin` (then end it) and yield its stdout; raises on a non-zero exit."""
        channel = self._channel
        skip = len(self._notice)  # the notice, or what of it wait_any did not take
        try:
            channel.settimeout(STALL_TIMEOUT)  # a transfer silent this long is a dead peer
            for item in channels.stdout_of(channel, io.BytesIO(stdin)):
                if not isinstance(item, tuple):
                    if skip:
                        item, skip = item[skip:], max(0, skip - len(item))
                    if item:
                        yield item
                    continue
                code, err = item
                stderr = err.decode(errors="replace").strip()
                if code < 0:  # no status: the connection went, not the command
                    raise RemoteError(f"lost the connection to {self.remote.node.name} during a transfer", "run it again")
                if code != 0:
                    raise CommandFailed(f"command on {self.remote.node.name} exited {code}: {stderr[:300]}", Result(self.command, code, "", stderr))
        except (OSError, paramiko.SSHException, EOFError) as e:
            raise RemoteError(f"lost the connection to {self.remote.node.name} during a transfer: {e}", "run it again") from e
        finally:
            channel.close()

    def alive(self) -> bool:
        """Whether the command still runs, as far as its channel says (it ends when it does)."""
        channel = self._channel
        return not (channel.closed or channel.eof_received or channel.exit_status_ready())

    def _pending(self) -> bool:
        channel = self._channel
        return bool(self._notice) and not (channel.closed or channel.eof_received)

    def _take_notice(self) -> None:
        try:
            while self._notice and self._channel.recv_ready():
                self._notice = self._notice[len(self._channel.recv(len(self._notice))):]
        except (OSError, paramiko.SSHException, EOFError):
            self._notice = b""  # a broken stream wakes nobody; reading it later says what broke

    def close(self) -> None:
        """Not needed after all: the command sees its stdin end, and ends."""
        try:
            self._channel.close()
        except (OSError, paramiko.SSHException, EOFError):
            pass  # the connection is gone already, and the command with it


def wait_any(streams: Sequence[EarlyStream], timeout: float) -> None:
    """Sleep `timeout` seconds, or less: until one of `streams` says its notice."""
    pending = [s for s in streams if s._pending()]
    if not pending:
        time.sleep(timeout)
        return
    try:
        select.select([s._channel for s in pending], [], [], timeout)
    except (OSError, ValueError):
        time.sleep(timeout)  # a channel closed meanwhile: the next call leaves it out
    for s in pending:
        s._take_notice()


__all__ = ["EarlyStream", "wait_any"]
