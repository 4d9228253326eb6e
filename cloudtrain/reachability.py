"""Whether a node answers: a quick, bounded TCP connect and SSH banner read, all nodes at once.

`status` uses it so a node whose sshd (or whole machine) died shows up in plain sight; it
proves no more than that something speaks SSH at the node's address (no login, no key).
"""

from __future__ import annotations

import socket
from typing import Any


PROBE_TIMEOUT_S = 2.0  # per node, all at once: `status` waits this long at most


def why_silent(host: str, port: int, timeout: float) -> str | None:
    """None when an SSH server answers at host:port within `timeout`, else what went wrong."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            banner = s.recv(256)
    except socket.timeout:
        return f"no answer within {timeout:g}s"
    except OSError as e:
        return e.strerror or str(e)
    if not banner.startswith(b"SSH-"):
        return "something other than SSH answers there" if banner else "the connection was closed at once"
    return None


def mark_silent_nodes(clusters: list[dict[str, Any]]) -> None:
    """For each ready cluster's node dicts (host, port), set `answering` (and `not_answering`
    on the cluster: node name -> reason), probing every node in parallel."""
    nodes = [(c, n) for c in clusters if c.get("status") == "ready" for n in c.get("nodes", [])]
    if not nodes:
        return
    from concurrent.futures import ThreadPoolExecutor  # only with nodes to probe: it costs `status` ~25 ms to load

    timeout = PROBE_TIMEOUT_S
    with ThreadPoolExecutor(max_workers=min(32, len(nodes))) as pool:
        reasons = list(pool.map(lambda cn: why_silent(cn[1]["host"], int(cn[1]["port"]), timeout), nodes))
    for (cluster, node), reason in zip(nodes, reasons):
        node["answering"] = reason is None
        cluster.setdefault("not_answering", {})
        if reason is not None:
            cluster["not_answering"][node["name"]] = reason


def silent_line(cluster: dict[str, Any]) -> str | None:
    """The line `status` prints under a cluster with nodes that do not answer."""
    silent = cluster.get("not_answering") or {}
    if not silent:
        return None
    listed = "; ".join(f"{name} ({reason})" for name, reason in silent.items())
    return f"  not answering over SSH: {listed}. `cloudtrain up` with the same options restarts a local node; check a cloud node in its console"
