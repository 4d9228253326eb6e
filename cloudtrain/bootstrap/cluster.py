"""Bootstrap every node of a cluster in parallel and keep what was learned (facts, logs)."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from cloudtrain import interrupts
from cloudtrain.bootstrap import apply as applier
from cloudtrain.bootstrap import gpu, installed
from cloudtrain.bootstrap.gpu import Request
from cloudtrain.bootstrap.plan import plan
from cloudtrain.bootstrap.probe import probe, summary
from cloudtrain.bootstrap.steps import Step
from cloudtrain.errors import BootstrapError, RemoteError
from cloudtrain.layout import NodePaths
from cloudtrain.machine import Cluster, Node
from cloudtrain.remote import SshRemote
from cloudtrain.state import ClusterDir

T = TypeVar("T")
MAX_PARALLEL = 16
# After an interrupt, how long the workers get to see their step ended and bring its log home.
STOP_GRACE = 5.0
STOP_ROUNDS = 2  # a step that started just as the first round looked gets a second

_print_lock = threading.Lock()


def _say(node: Node, stop: threading.Event):
    def say(text: str) -> None:
        if stop.is_set():
            return  # stopping: the main thread speaks now, and a worker may outlive the process
        with _print_lock:
            interrupts.write(f"[{node.name}] {text}", sys.stderr)

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

    return _each_node(cluster.nodes, one, threading.Event())


def bootstrap_cluster(cluster: Cluster, request: Request, cdir: ClusterDir) -> list[NodeReport]:
    """Probe, plan and apply on every node; facts and logs land in the cluster's folder."""

    stop, left = threading.Event(), threading.Event()

    def one(node: Node) -> NodeReport:
        say = _say(node, stop)
        with SshRemote(node, cluster.identity_file) as remote:
            facts = probe(remote)
            say(summary(facts))
            steps = plan(facts, request)
            try:
                outcomes = applier.apply(remote, steps, facts, say=say, stop=stop)
                found = _installed(remote, facts, request, say)
            finally:
                # Once the interrupt has moved on, `up` may be removing the cluster's folder:
                # writing into it then would leave a ghost of the cluster behind.
                if not left.is_set():
                    applier.fetch_logs(remote, cdir.logs_dir / node.name)
        if left.is_set():
            raise BootstrapError(f"bootstrap of {node.name} was stopped", "run `cloudtrain bootstrap` to finish it")
        if found is not None:
            facts["installed_framework"] = found  # into run.json with the node's facts
        (cdir.root / "facts").mkdir(exist_ok=True)
        (cdir.root / "facts" / f"{node.name}.json").write_text(json.dumps(facts, indent=2, sort_keys=True))
        report = NodeReport(node, facts, steps, outcomes)
        what = f": {installed.describe(found)}" if found else ""
        say(f"ready{what}" + (f" (ran: {', '.join(report.ran)})" if report.ran else " (nothing to do)"))
        return report

    def end_steps(nodes: list[Node]) -> None:
        _each_node(nodes, lambda node: _end_steps(cluster, node), threading.Event(), wait=3 * STOP_GRACE)

    return _each_node(cluster.nodes, one, stop, on_interrupt=end_steps, left=left)


def _installed(remote: SshRemote, facts: dict[str, Any], request: Request, say: Callable[[str], None]) -> dict[str, Any] | None:
    """The framework build the venv really holds, checked against the plan (installed.py)."""
    if request.framework.name == "none":
        return None
    found = installed.read(remote, NodePaths.of(remote).python, request.framework.name)
    res = gpu.resolution(facts, request)
    # A reused preinstalled build is whatever the image brought: only its CUDA is checked.
    reused = gpu.framework_install(facts, request).system_site_packages
    planned = None if reused else (res.framework_variant if res is not None else "cpu")
    try:
        warning = installed.check(found, planned, res is not None, remote.node.name)
    except BootstrapError:
        applier.forget(remote, "framework")  # so that the next bootstrap installs it again
        raise
    if warning:
        say(warning)
    return found


def _end_steps(cluster: Cluster, node: Node) -> None:
    try:
        with SshRemote(node, cluster.identity_file, connect_timeout=2 * STOP_GRACE) as remote:
            applier.end_steps(remote, timeout=STOP_GRACE * 2)
    except RemoteError:
        pass  # an unreachable node runs nothing we could end; `up` goes on to remove it


def _each_node(
    nodes: "tuple[Node, ...] | list[Node]",
    work: Callable[[Node], T],
    stop: threading.Event,
    on_interrupt: Callable[[list[Node]], None] | None = None,
    wait: float | None = None,
    left: threading.Event | None = None,
) -> list[T]:
    """`work(node)` for every node at once (at most MAX_PARALLEL), results in node order; the
    first failure in node order is raised once all are done.

    An interrupt (Ctrl-C, or SIGTERM/SIGHUP made into one) stops the waiting at once rather than
    when every worker is done, as ThreadPoolExecutor's exit would (a whole torch install):
    `stop` is set, `on_interrupt(nodes still busy)` ends what they run, and they get a few
    seconds to finish before the interrupt goes on, with `left` set. The workers are daemon
    threads, so one stuck on a dead node never holds the process. With `wait`, give up waiting
    after that long."""
    results: list[Any] = [None] * len(nodes)
    errors: list[BaseException | None] = [None] * len(nodes)
    slots = threading.Semaphore(MAX_PARALLEL)

    # Each worker's own "finished" event, not Thread.join: on Python 3.11 a join interrupted by
    # a signal can mark the thread as ended while it still runs (bpo-45274's change to
    # Thread._wait_for_tstate_lock), and then nobody would end its step.
    finished = [threading.Event() for _ in nodes]

    def target(i: int, node: Node) -> None:
        try:
            with slots:
                if not stop.is_set():  # a node still queued when the interrupt came is left alone
                    results[i] = work(node)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors[i] = e
        finally:
            finished[i].set()

    for i, node in enumerate(nodes):
        threading.Thread(target=target, args=(i, node), name=f"node-{node.name}", daemon=True).start()
    try:
        _wait(finished, None if wait is None else time.monotonic() + wait)
    except BaseException:
        stop.set()
        for _ in range(STOP_ROUNDS if on_interrupt else 0):
            busy = [n for n, done in zip(nodes, finished) if not done.is_set()]
            if not busy:
                break
            on_interrupt(busy)  # type: ignore[misc]
            _wait(finished, time.monotonic() + STOP_GRACE)
        if left is not None:
            left.set()  # whoever still runs now runs unwaited for
        raise
    for e in errors:
        if e is not None:
            raise e
    return results


def _wait(finished: list[threading.Event], deadline: float | None) -> None:
    # Short waits: a signal then reaches the main thread's handler within half a second.
    for done in finished:
        while not done.is_set() and (deadline is None or time.monotonic() < deadline):
            done.wait(0.5)


def load_facts(cdir: ClusterDir, node: Node) -> dict[str, Any]:
    path = cdir.root / "facts" / f"{node.name}.json"
    return json.loads(path.read_text()) if path.exists() else {}
