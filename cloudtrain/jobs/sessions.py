"""One SSH session per node per command: the `SshRemote`s that prepare, start, follow and
collect share, opened on first use and closed together (fabric's connection pool, small).

Each `SshRemote` holds one paramiko connection for control and one OpenSSH master connection
that every bulk stream rides (openssh.py); a lost connection reopens lazily on the next use.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cloudtrain.machine import Node
from cloudtrain.remote import SshRemote


class Sessions:
    """The open `SshRemote` of each node of one cluster, for one command."""

    def __init__(self, identity_file: Path) -> None:
        self.identity_file = identity_file
        self._open: dict[str, SshRemote] = {}
        self._lock = threading.Lock()  # nodes are reached from a thread each

    def __enter__(self) -> "Sessions":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def of(self, node: Node) -> SshRemote:
        """This node's session, made (not yet connected: SshRemote connects on first use) once."""
        with self._lock:
            remote = self._open.get(node.name)
            if remote is None or remote.node != node:
                remote = self._open[node.name] = SshRemote(node, self.identity_file)
            return remote

    def close(self) -> None:
        with self._lock:
            remotes, self._open = list(self._open.values()), {}
        for remote in remotes:
            remote.close()


__all__ = ["Sessions"]
