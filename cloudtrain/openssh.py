"""Bulk data over OpenSSH's own `ssh` client, with cloudtrain's pinned host key and key.

paramiko stays the control channel; the big streams (workdir up, outputs home) go through
`ssh`, which re-keys correctly (paramiko#822 times out channels opened during a pending re-key,
every 512 MiB) and moves data in C at several times paramiko's speed. Host keys stay pinned and
strict: a known_hosts holding only the node's key, StrictHostKeyChecking=yes, IdentitiesOnly,
no user config, no agent, no password prompts.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import IO, Callable, Iterator

from cloudtrain import keys
from cloudtrain.machine import Node

# AES-GCM first: with AES-NI it costs a fraction of chacha20-poly1305 (OpenSSH's default) per byte.
_CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr"
SSH_FAILED = 255  # ssh's own exit status for "could not connect / connection lost"
_PIPE_BYTES = 1 << 20
# An idle master (its cloudtrain ended without closing it, e.g. SIGKILL) exits after this long.
CONTROL_PERSIST_S = 300
MASTER_START_TIMEOUT_S = 60


def client() -> str | None:
    """The `ssh` binary, or None (then paramiko carries the bulk data too)."""
    return shutil.which("ssh")


class OpenSsh:
    """`ssh` command lines for one node; owns a temporary known_hosts pinned to its key."""

    def __init__(self, node: Node, identity_file: Path, ssh: str, stall_timeout: float = 300.0) -> None:
        self.node = node
        self._dir = tempfile.TemporaryDirectory(prefix="cloudtrain-ssh-")
        known = Path(self._dir.name) / "known_hosts"
        key_type, body = keys.key_type_and_body(node.host_key)
        host = node.host if node.port == 22 else f"[{node.host}]:{node.port}"
        known.write_text(f"{host} {key_type} {body}\n")
        # A dead peer goes unnoticed by TCP (a dropped NAT mapping): unanswered probes for
        # `stall_timeout` (15 s apart, 20 of them, by default) mean it is gone.
        interval = int(min(15, max(1, stall_timeout // 4)))
        alive = ["-o", f"ServerAliveInterval={interval}", "-o", f"ServerAliveCountMax={max(1, int(stall_timeout // interval))}"]
        self._base = [
            ssh, "-F", "/dev/null", "-T", "-x", "-a",
            "-i", str(identity_file), "-p", str(node.port),
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
            "-o", f'UserKnownHostsFile="{known}"', "-o", "GlobalKnownHostsFile=/dev/null",  # quoted: a list of files
            "-o", "StrictHostKeyChecking=yes", "-o", "CheckHostIP=no", "-o", "UpdateHostKeys=no",
            "-o", "ConnectTimeout=20", "-o", "Compression=no", "-o", f"Ciphers={_CIPHERS}",
            "-o", "LogLevel=ERROR", *alive,
            f"{node.user}@{node.host}", "--",
        ]

        # One master connection per node, shared by every ssh of this OpenSsh (ControlMaster);
        # its socket sits in the private temp dir, so no other user or process can ride it.
        self._control = str(Path(self._dir.name) / "ctl")
        self._lock = threading.Lock()
        self._master: bool | None = None  # None: not tried yet; False: failed, ssh connects directly
        self._starting: subprocess.Popen | None = None

    def close(self) -> None:
        if self._starting is not None:
            self._ensure_master()  # a master still authenticating would outlive us otherwise
        if self._master:
            self._master = None
            # `-O exit` ends the master and every session riding it; bounded so a wedged
            # master cannot hang close (it also ends itself after CONTROL_PERSIST_S idle).
            try:
                subprocess.run([*self._base[:-2], "-o", f"ControlPath={self._control}", "-O", "exit", self._base[-2]],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._dir.cleanup()

    def start_master(self) -> None:
        """Begin connecting the master now, without waiting: it authenticates while the
        control connection does its work, and is ready when the first bulk stream needs it.
        Started on its own (`ssh -fN`, which returns once authenticated and backgrounded),
        never by a command's ssh: that master would hold the command's stderr pipe open."""
        with self._lock:
            if self._master is None and self._starting is None:
                argv = [*self._base[:-2], "-o", "ControlMaster=yes", "-o", f"ControlPath={self._control}",
                        "-o", f"ControlPersist={CONTROL_PERSIST_S}", "-f", "-N", self._base[-2]]
                try:
                    self._starting = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                except OSError:
                    self._master = False

    def _ensure_master(self) -> bool:
        self.start_master()
        with self._lock:
            if self._starting is not None:
                try:
                    code = self._starting.wait(timeout=MASTER_START_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self._starting.kill()
                    self._starting.wait()
                    code = SSH_FAILED
                self._starting = None
                # A failed master costs nothing more: each ssh then connects on its own, as before.
                self._master = code == 0
            return bool(self._master)

    def argv(self, command: str) -> list[str]:
        if self._ensure_master():
            # ControlMaster=no: a dead master's socket makes ssh connect directly, never hang.
            return [*self._base[:-2], "-o", "ControlMaster=no", "-o", f"ControlPath={self._control}", *self._base[-2:], command]
        return [*self._base, command]

    def popen(self, command: str, *, stdin: int | IO[bytes], stdout: int) -> subprocess.Popen:
        proc = subprocess.Popen(self.argv(command), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, bufsize=_PIPE_BYTES, start_new_session=True)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:  # bigger pipes: fewer wake-ups per MiB between ssh and us
                    fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
                except OSError:
                    pass
        return proc


class Exited(Exception):
    """`ssh` ended non-zero: `code` is the remote command's status, or SSH_FAILED."""

    def __init__(self, code: int, stderr: bytes) -> None:
        super().__init__(f"exit {code}")
        self.code = code
        self.stderr = stderr.decode(errors="replace").strip()


def _drain(pipe: IO[bytes], into: io.BytesIO) -> threading.Thread:
    # stderr (and an upload's stdout) are read on the side, so a chatty command can never fill
    # its pipe and stall the stream we care about.
    def run() -> None:
        while chunk := pipe.read(65536):
            into.write(chunk)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _finish(proc: subprocess.Popen, threads: list[threading.Thread]) -> int:
    code = proc.wait()
    for t in threads:
        t.join()
    return code


def stdout_of(ssh: OpenSsh, command: str, stdin: IO[bytes] | None = None) -> Iterator[bytes]:
    """Yield the stdout of `command` on the node as it arrives; raise Exited on a non-zero end.

    A consumer that stops early (an error here) kills ssh, so no process outlives the stream."""
    proc = ssh.popen(command, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL, stdout=subprocess.PIPE)
    err = io.BytesIO()
    threads = [_drain(proc.stderr, err)]  # type: ignore[arg-type]
    if stdin is not None:
        def feed() -> None:
            try:
                while chunk := stdin.read(1 << 20):
                    proc.stdin.write(chunk)  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]
            except OSError:  # the command ended without reading it all: its status says why
                pass

        threads.append(threading.Thread(target=feed, daemon=True))
        threads[-1].start()
    done = False
    try:
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        while chunk := os.read(fd, 1 << 20):
            yield chunk
        done = True
    finally:
        if not done:
            proc.kill()
        proc.stdout.close()  # type: ignore[union-attr]
        code = _finish(proc, threads)
    if code != 0:
        raise Exited(code, err.getvalue())


def run_with_input(ssh: OpenSsh, command: str, produce: Callable[[IO[bytes]], None], source: IO[bytes] | None = None) -> tuple[int, bytes, bytes]:
    """Run `command` with stdin written by `produce(stream)`, or read by ssh itself straight
    from `source` (a pipe from another process: no copy through Python); (status, stdout, stderr)."""
    proc = ssh.popen(command, stdin=source if source is not None else subprocess.PIPE, stdout=subprocess.PIPE)
    out, err = io.BytesIO(), io.BytesIO()
    threads = [_drain(proc.stdout, out), _drain(proc.stderr, err)]  # type: ignore[arg-type]
    if source is not None:
        return _finish(proc, threads), out.getvalue(), err.getvalue()
    try:
        try:
            produce(proc.stdin)  # type: ignore[arg-type]
            proc.stdin.flush()  # type: ignore[union-attr]
        except BrokenPipeError:  # the command ended early: its status and stderr say why
            pass
        finally:
            try:
                proc.stdin.close()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass
    except BaseException:
        proc.kill()
        _finish(proc, threads)
        raise
    return _finish(proc, threads), out.getvalue(), err.getvalue()


__all__ = ["Exited", "OpenSsh", "SSH_FAILED", "client", "run_with_input", "stdout_of"]
