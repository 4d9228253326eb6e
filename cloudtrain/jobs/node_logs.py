"""`run --logs all`: every node's log streamed, each line prefixed `[node i]`.

Lines are written whole (a node's partial last line waits for its end), so two nodes' output
never splices inside a line.
"""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

from cloudtrain.layout import JobPaths
from cloudtrain.remote import SshRemote

T = TypeVar("T")
Read = Callable[[SshRemote, str, int], bytes]
Retry = Callable[[SshRemote, Callable[[], T]], T]


class Prefixed:
    def __init__(self, nodes: int, offset0: int = 0) -> None:
        self.offsets = [offset0] + [0] * (nodes - 1)
        self.partial = [b""] * nodes

    def write(self, node: int, chunk: bytes) -> None:
        data = self.partial[node] + chunk
        whole, _, self.partial[node] = data.rpartition(b"\n")
        if whole or data.endswith(b"\n"):
            prefix = f"[node {node}] ".encode()
            sys.stdout.buffer.write(b"".join(prefix + line + b"\n" for line in whole.split(b"\n")))
            sys.stdout.flush()

    def pull(self, retry: Retry, read: Read, remotes: list[SshRemote], paths: list[JobPaths], start: int = 1) -> bool:
        """Read what nodes `start`.. wrote since last time; whether there was any."""
        got = False
        for i in range(start, len(remotes)):
            chunk = retry(remotes[i], lambda i=i: read(remotes[i], paths[i].log, self.offsets[i]))
            if chunk:
                got = True
                self.offsets[i] += len(chunk)
                self.write(i, chunk)
        return got

    def flush(self) -> None:
        for i, rest in enumerate(self.partial):
            if rest:
                self.partial[i] = b""
                self.write(i, rest + b"\n")
