"""Bootstrap every node of a cluster in parallel and keep what was learned (facts, logs)."""

from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cloudtrain.bootstrap import apply as applier
from cloudtrain.bootstrap.gpu import Request
from cloudtrain.bootstrap.plan import plan
from cloudtrain.bootstrap.probe import probe, summary
from cloudtrain.bootstrap.steps import Step
from cloudtrain.machine import Cluster, Node
from cloudtrain.remote import SshRemote
from cloudtrain.state import ClusterDir

_print_lock = threading.Lock()


def _say(node: Node):
    def say(text: str) -> None:
        with _print_lock:
            print(f"[{node.name}] {text}", file=sys.stderr, flush=True)

    return say


@dataclass(frozen=True)
class NodeReport:
    node: Node
    facts: dict[str, Any]
    steps: list[Step]
    outcomes: list[applier.Outcome]

    @property
    def ran(self) -> list[str]:
        return [o.step.name for o in self.outcomes if o.status == "ran"]


def plan_cluster(cluster: Cluster, request: Request) -> list[tuple[Node, dict[str, Any], list[Step]]]:
    def one(node: Node):
        with SshRemote(node, cluster.identity_file) as remote:
            facts = probe(remote)
        return node, facts, plan(facts, request)

    with ThreadPoolExecutor(max_workers=min(16, len(cluster.nodes))) as pool:
        return list(pool.map(one, cluster.nodes))


def bootstrap_cluster(cluster: Cluster, request: Request, cdir: ClusterDir) -> list[NodeReport]:
    """Probe, plan and apply on every node; facts and logs land in the cluster's folder."""

    def one(node: Node) -> NodeReport:
        say = _say(node)
        with SshRemote(node, cluster.identity_file) as remote:
            facts = probe(remote)
            say(summary(facts))
            steps = plan(facts, request)
            try:
                outcomes = applier.apply(remote, steps, facts, say=say)
            finally:
                applier.fetch_logs(remote, cdir.logs_dir / node.name)
        (cdir.root / "facts").mkdir(exist_ok=True)
        (cdir.root / "facts" / f"{node.name}.json").write_text(json.dumps(facts, indent=2, sort_keys=True))
        report = NodeReport(node, facts, steps, outcomes)
        say("ready" + (f" (ran: {', '.join(report.ran)})" if report.ran else " (nothing to do)"))
        return report

    with ThreadPoolExecutor(max_workers=min(16, len(cluster.nodes))) as pool:
        return list(pool.map(one, cluster.nodes))


def load_facts(cdir: ClusterDir, node: Node) -> dict[str, Any]:
    path = cdir.root / "facts" / f"{node.name}.json"
    return json.loads(path.read_text()) if path.exists() else {}
