"""Talking to a node over SSH: control on paramiko (one `run()` returning one `Result`), bulk
streams on OpenSSH's `ssh` where it is installed (openssh.py), paramiko otherwise.

Host keys are pinned: the client knows the node's key before the first packet and rejects any
other (RejectPolicy); there is no trust-on-first-use. Connections open lazily, retry with backoff
while a node boots, and close as context managers. paramiko, ssh and socket errors become
`RemoteError`s here, at the boundary.
"""

from __future__ import annotations

import base64
import io
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

from cloudtrain.paramiko_lean import paramiko  # first: without invoke, nor importlib.metadata
from cloudtrain import channels, keys, openssh  # noqa: E402, I001
from cloudtrain.errors import CommandFailed, HostKeyMismatch, RemoteError
from cloudtrain.machine import Node

Sink = channels.Sink
# Tar streams move data continuously; this long without a byte means the peer is gone (a
# dropped NAT mapping leaves TCP open and keepalives unanswered), so fail and retry.
STALL_TIMEOUT = 300.0
# paramiko re-keys every 2^29 bytes and races itself doing so (paramiko#822: a channel opened
# while the re-key is pending times out). OpenSSH servers re-key on their own schedule
# (RekeyLimit), so paramiko never starts one.
_NEVER_REKEY = 1 << 62
HANDSHAKE_TIMEOUT_S = 10.0  # each of TCP connect, banner, key exchange, auth; then a retry
KEEPALIVE_S = 15


def _tcp_keepalive(sock: object) -> None:
    """No Nagle delay; probe an idle connection every KEEPALIVE_S, 4 unanswered probes end it (where the OS allows)."""
    if not isinstance(sock, socket.socket):
        return
    try:
        # Small messages go out at once: a command's stdin and its end were two packets, the
        # second held by Nagle until the node's delayed ACK, 40 ms later (issue 9's no-op run).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", KEEPALIVE_S), ("TCP_KEEPINTVL", KEEPALIVE_S), ("TCP_KEEPCNT", 4)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:
        pass  # keepalives are a refinement; the stall timeouts still bound every wait


@dataclass(frozen=True)
class Result:
    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def _host_id(node: Node) -> str:
    return node.host if node.port == 22 else f"[{node.host}]:{node.port}"


def _pkey_from_line(public: str) -> paramiko.PKey:
    key_type, body = keys.key_type_and_body(public)
    return paramiko.PKey.from_type_string(key_type, base64.b64decode(body))


def env_prefix(env: dict[str, str] | None) -> str:
    """`export K='v'; ...` — sshd accepts few variables through the protocol, so send them inline."""
    if not env:
        return ""
    return "".join(f"export {k}={shlex.quote(v)}; " for k, v in env.items())


class SshRemote:
    """One node, reached as `node.user@node.host:node.port` with the cluster's key."""

    def __init__(self, node: Node, identity_file: Path, connect_timeout: float = 120.0, handshake_timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
        self.node = node
        self.identity_file = identity_file
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._openssh: openssh.OpenSsh | None = None
        self.control_only = False  # streams ride the control connection unless a master already runs
        self._abandoned = False  # set by abandon(): stop retrying a connection nobody waits for

    # -- connection -------------------------------------------------------------------------

    def __enter__(self) -> "SshRemote":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def abandon(self) -> None:
        """Make a connection being retried in another thread give up at its next retry."""
        self._abandoned = True

    def close(self) -> None:
        if self._openssh is not None:
            self._openssh.close()
            self._openssh = None
        self._close_control()

    def _close_control(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _where(self) -> str:
        return f"node {self.node.name} ({self.node.user}@{self.node.host}:{self.node.port})"

    def client(self) -> paramiko.SSHClient:
        """The open connection, made on first use; retried with backoff until `connect_timeout`."""
        if self._client is not None and self._client.get_transport() and self._client.get_transport().is_active():
            return self._client
        self._close_control()  # a dead control connection says nothing about the bulk one's master
        try:
            # Any type: a cluster's own key is ed25519, a machine the user owns may take their RSA key.
            pkey = paramiko.PKey.from_path(self.identity_file)
        except (OSError, ValueError, TypeError, paramiko.SSHException) as e:
            raise RemoteError(f"cannot read the cluster key {self.identity_file}: {e}", "recreate the cluster with `cloudtrain down` then `cloudtrain up`") from e
        deadline = time.monotonic() + self.connect_timeout
        delay = 0.2
        last: Exception | None = None
        while True:
            client = paramiko.SSHClient()
            client.get_host_keys().add(_host_id(self.node), *self._pinned())
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                client.connect(
                    self.node.host,
                    port=self.node.port,
                    username=self.node.user,
                    pkey=pkey,
                    look_for_keys=False,
                    allow_agent=False,
                    timeout=self.handshake_timeout,
                    banner_timeout=self.handshake_timeout,
                    auth_timeout=self.handshake_timeout,
                )
                transport = client.get_transport()
                assert transport is not None
                # The session lives for the whole command (jobs/sessions.py): SSH keepalives keep
                # NAT mappings open, TCP's own probes notice a peer that vanished without a word.
                transport.set_keepalive(KEEPALIVE_S)
                _tcp_keepalive(transport.sock)
                packetizer = transport.packetizer
                packetizer.REKEY_BYTES = packetizer.REKEY_PACKETS = _NEVER_REKEY
                packetizer.REKEY_BYTES_OVERFLOW_MAX = packetizer.REKEY_PACKETS_OVERFLOW_MAX = _NEVER_REKEY
                self._client = client
                return client
            except paramiko.BadHostKeyException as e:
                client.close()
                raise HostKeyMismatch(
                    f"{self._where()} presented host key {e.key.get_base64()[:16]}..., not the pinned one",
                    "refusing to connect; the node may have been replaced or intercepted — recreate the cluster",
                ) from e
            except (OSError, paramiko.SSHException, EOFError) as e:
                # Refused, timed out, banner or key exchange not answered in time, key not yet
                # installed: a booting or busy node. Retried with backoff, up to connect_timeout.
                client.close()
                last = e
                if self._abandoned or time.monotonic() + delay > deadline:
                    break
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise RemoteError(
            f"cannot reach {self._where()} within {self.connect_timeout:.0f}s: {last}",
            "check that the node is running (`cloudtrain status`) and that SSH is allowed from here",
        ) from last

    def _pinned(self) -> tuple[str, paramiko.PKey]:
        key_type, _ = keys.key_type_and_body(self.node.host_key)
        return key_type, _pkey_from_line(self.node.host_key)

    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self.client().open_sftp()
            except (OSError, paramiko.SSHException) as e:
                raise RemoteError(f"cannot open SFTP on {self._where()}: {e}", "check that the node's sshd offers the sftp subsystem") from e
        return self._sftp

    # -- commands ---------------------------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        env: dict[str, str] | None = None,
        check: bool = True,
        stream: bool = False,
        stdin: bytes | None = None,
        timeout: float | None = None,
        on_stdout: Sink | None = None,
        on_stderr: Sink | None = None,
    ) -> Result:
        """Run `command` through the node user's shell.

        `stream=True` copies output to this process's stdout/stderr as it arrives; `on_stdout` /
        `on_stderr` receive raw chunks instead. Output is also captured into the `Result`.
        A non-zero exit raises `CommandFailed` carrying the Result unless `check=False`.
        """
        full = env_prefix(env) + command
        if stream:
            on_stdout = on_stdout or channels.writer(sys.stdout)
            on_stderr = on_stderr or channels.writer(sys.stderr)
        out, err = io.BytesIO(), io.BytesIO()
        try:
            channel = self.client().get_transport().open_session()  # type: ignore[union-attr]
            channel.exec_command(full)
            channels.feed(channel, io.BytesIO(stdin or b""))
            code = channels.pump(channel, out, err, on_stdout, on_stderr, timeout)
        except (OSError, paramiko.SSHException, EOFError) as e:
            self.close()
            raise RemoteError(f"lost the connection to {self._where()} while running a command: {e}", "run it again; check the node with `cloudtrain status`") from e
        result = Result(command, code, out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace"))
        if check and not result.ok:
            tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or [""]
            raise CommandFailed(f"command on {self.node.name} exited {code}: {tail[0][:300]}", result)
        return result

    def stream_stdout(self, command: str, *, env: dict[str, str] | None = None, stdin: IO[bytes] | None = None) -> Iterator[bytes]:
        """Yield the stdout of `command` in chunks (bulk streams); raises on a non-zero exit."""
        full = env_prefix(env) + command
        try:
            if (ssh := self.openssh()) is not None:
                try:
                    yield from openssh.stdout_of(ssh, full, stdin)
                except openssh.Exited as e:
                    raise self._exited(command, e.code, e.stderr, "a transfer") from e
                return
            channel = self.client().get_transport().open_session()  # type: ignore[union-attr]
            channel.settimeout(STALL_TIMEOUT)  # a transfer silent this long is a dead peer, not a slow one
            channel.exec_command(full)
            for item in channels.stdout_of(channel, stdin):
                if isinstance(item, tuple):
                    code, err = item
                    if code != 0:
                        raise self._exited(command, code, err.decode(errors="replace").strip(), "a transfer")
                else:
                    yield item
        except (OSError, paramiko.SSHException, EOFError) as e:
            self.close()
            raise RemoteError(f"lost the connection to {self._where()} during a transfer: {e}", "run it again") from e

    def send_stream(self, command: str, produce: Callable[[IO[bytes]], None], *, env: dict[str, str] | None = None, source: IO[bytes] | None = None) -> Result:
        """Run `command` with stdin written by `produce(stream)` as it goes (e.g. a tar being
        built), so nothing is staged in memory or on disk first. With `source` (a pipe that
        `produce` would copy), OpenSSH reads it directly."""
        full = env_prefix(env) + command
        try:
            if (ssh := self.openssh()) is not None:
                code, out, err = openssh.run_with_input(ssh, full, produce, source)
            else:
                channel = self.client().get_transport().open_session()  # type: ignore[union-attr]
                channel.settimeout(STALL_TIMEOUT)
                channel.exec_command(full)
                code, out, err = channels.send(channel, produce)
        except (OSError, paramiko.SSHException, EOFError) as e:
            self.close()
            raise RemoteError(f"lost the connection to {self._where()} during an upload: {e}", "run it again") from e
        if code != 0:
            raise self._exited(command, code, err.decode(errors="replace").strip(), "an upload")
        return Result(command, code, out.decode(errors="replace"), err.decode(errors="replace"))

    def _exited(self, command: str, code: int, stderr: str, during: str) -> RemoteError:
        # No status (paramiko's -1), ssh killed (-N) or ssh's own 255: the link failed, not the command.
        if code < 0 or (code == openssh.SSH_FAILED and self._openssh is not None):
            last = [line.strip() for line in stderr.splitlines() if line.strip()][-1:] or [f"ssh exited {code}"]
            return RemoteError(f"lost the connection to {self._where()} during {during}: {last[0][:300]}", "run it again")
        return CommandFailed(f"command on {self.node.name} exited {code}: {stderr[:300]}", Result(command, code, "", stderr))

    def warm_bulk(self) -> None:
        """Start connecting the bulk path (OpenSSH's master) in the background, for a command
        that will stream data soon: it authenticates while the control connection works."""
        if (ssh := self.openssh()) is not None:
            ssh.start_master()

    def openssh(self) -> openssh.OpenSsh | None:
        """OpenSSH's `ssh` for bulk data when this machine has it; None: paramiko carries it."""
        if self._openssh is None and self.control_only:
            return None  # small data, no master yet: not worth starting one (issue 9)
        if self._openssh is None and (ssh := openssh.client()) is not None:
            self._openssh = openssh.OpenSsh(self.node, self.identity_file, ssh, stall_timeout=STALL_TIMEOUT)
        return self._openssh

    # -- files ------------------------------------------------------------------------------

    def put(self, local: Path, remote: str, mode: int | None = None) -> None:
        try:
            self.sftp().put(str(local), remote)
            if mode is not None:
                self.sftp().chmod(remote, mode)
        except (OSError, paramiko.SSHException) as e:
            raise RemoteError(f"upload of {local} to {self.node.name}:{remote} failed: {e}", "check the node's disk space and the path") from e

    def write_text(self, remote: str, text: str, mode: int | None = None) -> None:
        try:
            with self.sftp().open(remote, "w") as f:
                f.write(text.encode())
            if mode is not None:
                self.sftp().chmod(remote, mode)
        except (OSError, paramiko.SSHException) as e:
            raise RemoteError(f"writing {self.node.name}:{remote} failed: {e}", "check the node's disk space and the path") from e

    def get(self, remote: str, local: Path) -> None:
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
            self.sftp().get(remote, str(local))
        except (OSError, paramiko.SSHException) as e:
            raise RemoteError(f"download of {self.node.name}:{remote} failed: {e}", "check that the file exists on the node") from e

    def read_from(self, remote: str, offset: int, limit: int = 1 << 20) -> bytes:
        """Bytes of `remote` from `offset` (b'' when absent or nothing new): for following logs."""
        try:
            with self.sftp().open(remote, "rb") as f:
                f.seek(offset)
                return f.read(limit)
        except FileNotFoundError:
            return b""
        except (OSError, paramiko.SSHException) as e:
            self.close()
            raise RemoteError(f"reading {self.node.name}:{remote} failed: {e}", "run it again") from e

    def exists(self, remote: str) -> bool:
        try:
            self.sftp().stat(remote)
            return True
        except FileNotFoundError:
            return False
        except (OSError, paramiko.SSHException) as e:
            self.close()
            raise RemoteError(f"checking {self.node.name}:{remote} failed: {e}", "run it again") from e

    def listdir(self, remote: str) -> list[str]:
        """The names in a folder on the node ([] when absent): over SFTP, no process starts there."""
        try:
            return self.sftp().listdir(remote)
        except FileNotFoundError:
            return []
        except (OSError, paramiko.SSHException) as e:
            self.close()
            raise RemoteError(f"listing {self.node.name}:{remote} failed: {e}", "run it again") from e


__all__ = ["Result", "SshRemote", "env_prefix"]
