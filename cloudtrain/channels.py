"""paramiko channel plumbing for remote.py: pumping a command's output, feeding its input, and
the bulk streams paramiko carries where OpenSSH's `ssh` is absent.

paramiko, socket and EOF errors propagate from here; SshRemote translates them at its boundary.
"""

from __future__ import annotations

import io
import select
import socket
import time
from typing import IO, Callable, Iterator

from cloudtrain.paramiko_lean import paramiko

Sink = Callable[[bytes], None]


def pump(channel: paramiko.Channel, out: io.BytesIO, err: io.BytesIO, on_out: Sink | None, on_err: Sink | None, timeout: float | None) -> int:
    """Collect a command's stdout/stderr until end-of-file; return its exit status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        while channel.recv_ready():
            chunk = channel.recv(65536)
            out.write(chunk)
            if on_out:
                on_out(chunk)
        while channel.recv_stderr_ready():
            chunk = channel.recv_stderr(65536)
            err.write(chunk)
            if on_err:
                on_err(chunk)
        # Done at end-of-file, not at exit status: sshd may send the status before the last
        # of the output, and stopping there truncated it. EOF follows all data in order, so
        # once it is in, everything left is already buffered (drained just above).
        if (channel.eof_received or channel.closed) and not channel.recv_ready() and not channel.recv_stderr_ready():
            break
        if deadline is not None and time.monotonic() > deadline:
            channel.close()
            raise socket.timeout(f"command still running after {timeout:.0f}s")
        select.select([channel], [], [], 0.5)
    code = channel.recv_exit_status()
    channel.close()
    return code


def feed(channel: paramiko.Channel, data: IO[bytes]) -> None:
    """Send `data` as the command's stdin, then end it.

    A command may finish without reading its input (`test -d X || echo {}`): the node then
    closes the channel under us, which is the command's business, not a lost connection."""
    try:
        while chunk := data.read(1 << 20):
            channel.sendall(chunk)
        channel.shutdown_write()
    except OSError:
        if not (channel.closed or channel.eof_received or channel.exit_status_ready()):
            raise


def stdout_of(channel: paramiko.Channel, stdin: IO[bytes] | None) -> Iterator[bytes | tuple[int, bytes]]:
    """Chunks of an exec'd channel's stdout, then one (exit status, stderr) pair."""
    if stdin is not None:
        feed(channel, stdin)
    else:
        channel.shutdown_write()
    while chunk := channel.recv(1 << 20):
        yield chunk
    code = channel.recv_exit_status()
    err = io.BytesIO()
    while channel.recv_stderr_ready():  # buffered by paramiko; small for the tools we stream
        err.write(channel.recv_stderr(65536))
    channel.close()
    yield code, err.getvalue()


def send(channel: paramiko.Channel, produce: Callable[[IO[bytes]], None]) -> tuple[int, bytes, bytes]:
    """Write an exec'd channel's stdin with `produce(stream)`; (exit status, stdout, stderr)."""
    writer = io.BufferedWriter(_ChannelWriter(channel), 1 << 20)
    produce(writer)
    writer.flush()
    channel.shutdown_write()
    out, err = io.BytesIO(), io.BytesIO()
    code = pump(channel, out, err, None, None, None)
    return code, out.getvalue(), err.getvalue()


class _ChannelWriter(io.RawIOBase):
    """A channel's stdin as a writable raw stream."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self._channel.sendall(bytes(b))
        return len(b)


def writer(stream: IO[str]) -> Sink:
    """A Sink copying raw chunks to a text stream's bytes (e.g. sys.stdout), flushed."""
    buffer = getattr(stream, "buffer", None)

    def write(chunk: bytes) -> None:
        if buffer is not None:
            buffer.write(chunk)
        else:
            stream.write(chunk.decode(errors="replace"))
        stream.flush()

    return write
