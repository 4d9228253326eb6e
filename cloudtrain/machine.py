"""The contract between provisioners and everything after them.

A `Cluster` is a list of `Node`s, each saying how to reach it and nothing about which cloud
made it. Provisioners produce one; bootstrap and jobs consume it through a `Remote`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Node:
    name: str
    host: str  # public address cloudtrain connects to
    port: int
    user: str
    host_key: str  # OpenSSH public key line the node must present: "ssh-ed25519 AAAA..."
    private_ip: str  # address other nodes of the cluster use (rank order in CLOUDTRAIN_NODE_IPS)
    # cloudtrain's folder on the node when the provider chose one (a machine the user owns keeps
    # it apart from their own files); None: $CLOUDTRAIN_NODE_ROOT or ~/.cloudtrain (layout.py).
    root: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["root"] is None:
            del data["root"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Node":
        return cls(
            name=data["name"],
            host=data["host"],
            port=int(data["port"]),
            user=data["user"],
            host_key=data["host_key"],
            private_ip=data["private_ip"],
            root=data.get("root"),
        )

    @classmethod
    def from_output(cls, entry: dict[str, Any]) -> "Node":
        """From one entry of the Pulumi `nodes` output (DESIGN.md's schema)."""
        return cls(
            name=entry["name"],
            host=entry["publicIp"],
            port=int(entry["sshPort"]),
            user=entry["sshUser"],
            host_key=entry["hostKey"],
            private_ip=entry["privateIp"],
        )


@dataclass(frozen=True)
class Cluster:
    name: str
    nodes: tuple[Node, ...]
    identity_file: Path  # the cluster's own ed25519 private key (0600)

    @property
    def head(self) -> Node:
        return self.nodes[0]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "nodes": [n.to_dict() for n in self.nodes],
            "identity_file": str(self.identity_file),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Cluster":
        return cls(
            name=data["name"],
            nodes=tuple(Node.from_dict(n) for n in data["nodes"]),
            identity_file=Path(data["identity_file"]),
        )
