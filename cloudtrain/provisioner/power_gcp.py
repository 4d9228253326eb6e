"""GCP: whether a cluster's VMs were stopped (a guest shutdown stops a GCP VM: status
TERMINATED, boot disk kept) or deleted (a preempted spot VM, instanceTerminationAction DELETE),
and starting them again, through the Compute Engine REST API (instances.list / instances.start).

A cluster's VMs are those labelled `cloudtrain-cluster=<name>` in its zone; their names are
recorded at `up` (found by their external addresses, unique while they run), so a same-named
cluster from another cloudtrain home is never taken for this one. External addresses are
ephemeral: `start` records the new ones.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from typing import Any

from cloudtrain.errors import ProvisionError
from cloudtrain.provisioner.contract import CLUSTER_TAG
from cloudtrain.provisioner.leftovers.gcp import API, _client
from cloudtrain.provisioner.rest import Rest, Transport, with_query
from cloudtrain.state import ClusterRecord

_STOPPED = {"STOPPING", "TERMINATED", "SUSPENDING", "SUSPENDED"}
START_WAIT_S, POLL_S = 300.0, 5.0


def _nat(inst: dict[str, Any]) -> str | None:
    for nic in inst.get("networkInterfaces") or []:
        for ac in nic.get("accessConfigs") or []:
            if ac.get("natIP"):
                return ac["natIP"]
    return None


def _listed(record: ClusterRecord, rest: Rest, project: str, api: str) -> list[dict[str, Any]]:
    url = with_query(f"{api}/projects/{project}/zones/{record.spec.zone}/instances", filter=f"labels.{CLUSTER_TAG}={record.spec.name}")
    return [i for page in rest.pages(url) for i in page.get("items", [])]


def remember(record: ClusterRecord, http: Transport | None = None, project: str | None = None, api: str = API) -> None:
    """Record the VM names of a just-made cluster in `record.provider_state`."""
    assert record.cluster is not None
    try:
        rest, project = _client(http, project)
        by_host = {_nat(i): i["name"] for i in _listed(record, rest, project, api) if _nat(i)}
    except Exception:  # noqa: BLE001 - no credentials or network: looked up by private address later
        return
    names = [by_host.get(n.host) for n in record.cluster.nodes]
    if all(names):
        record.provider_state["instance_names"] = names


def instances(record: ClusterRecord, rest: Rest, project: str, api: str = API) -> list[dict[str, Any] | None]:
    """The cluster's VMs in node order; None for a node whose VM no longer exists."""
    assert record.cluster is not None
    found = _listed(record, rest, project, api)
    names = record.provider_state.get("instance_names")
    if names:
        by_name = {i["name"]: i for i in found}
        return [by_name.get(n) for n in names]
    by_ip: dict[str, list[dict[str, Any]]] = {}
    for inst in found:
        for nic in inst.get("networkInterfaces") or []:
            by_ip.setdefault(nic.get("networkIP"), []).append(inst)
    if any(len(v) > 1 for v in by_ip.values()):
        raise ProvisionError(
            f"more than one VM labelled {CLUSTER_TAG}={record.spec.name} has a node's private address (a same-named cluster elsewhere?)",
            "find this cluster's VMs in the Cloud console",
        )
    return [by_ip[n.private_ip][0] if n.private_ip in by_ip else None for n in record.cluster.nodes]


def _at(inst: dict[str, Any]) -> float:
    try:  # "2026-12-01T06:03:12.345-08:00"
        return datetime.fromisoformat(inst["lastStopTimestamp"]).timestamp()
    except (KeyError, ValueError):
        return time.time()


def _look(record: ClusterRecord, http: Transport | None, project: str | None, api: str) -> tuple[Rest, str, list[dict[str, Any] | None]] | None:
    """The client, project and each node's VM (None: deleted); None when GCP cannot be asked."""
    if record.cluster is None:
        return None
    try:
        rest, project = _client(http, project)
        return rest, project, instances(record, rest, project, api)
    except Exception:  # noqa: BLE001 - google.auth, transport and API errors alike: unknown
        return None


def observed_stop(record: ClusterRecord, http: Transport | None = None, project: str | None = None, api: str = API) -> dict | None:
    """{"reason", "at"[, "terminated"]} when a VM is stopped or gone; None when running, or
    when GCP cannot be asked (nothing is decided on a guess; `status`'s SSH probe still runs)."""
    looked = _look(record, http, project, api)
    if looked is None:
        return None
    rest, project, found = looked
    if any(i is None for i in found):
        return {"reason": "deleted: a preempted spot VM goes with its disk", "at": time.time(), "terminated": True}
    for inst in found:
        if inst["status"] in _STOPPED:  # type: ignore[index]
            return {"reason": "stopped (autostop, deadline, or outside cloudtrain)", "at": _at(inst)}  # type: ignore[arg-type]
    return None


def gone(record: ClusterRecord, http: Transport | None = None, project: str | None = None, api: str = API, deleted_only: bool = False) -> list[int] | None:
    """`launch --recover`: the nodes whose VM was deleted (a preempted spot VM: termination
    action DELETE) or is stopped by a preemption (the zone's `compute.instances.preempted`
    operation names it: a guest shutdown, the watchdog's, ends TERMINATED too); None when GCP
    cannot be asked. `deleted_only`: what a refresh drops from the state (`absent`)."""
    looked = _look(record, http, project, api)
    if looked is None:
        return None
    rest, project, found = looked
    out = [n for n, inst in enumerate(found) if inst is None]
    if deleted_only:
        return out
    if any(inst is not None and inst["status"] in _STOPPED for inst in found):
        url = with_query(f"{api}/projects/{project}/zones/{record.spec.zone}/operations", filter='operationType="compute.instances.preempted"')
        try:
            hit = {str(op.get("targetLink", "")).rsplit("/", 1)[-1] for page in rest.pages(url) for op in page.get("items", [])}
        except Exception:  # noqa: BLE001 - unknown for the stopped ones; the deleted ones stand
            hit = set()
        out += [n for n, inst in enumerate(found) if inst is not None and inst["status"] in _STOPPED and inst["name"] in hit]
    return sorted(out)


def absent(record: ClusterRecord, http: Transport | None = None, project: str | None = None, api: str = API) -> list[int] | None:
    """The nodes whose VM no longer exists: a preempted VM stays TERMINATED until its DELETE
    termination action has run, and a refresh before then would keep it in the state."""
    return gone(record, http, project, api, deleted_only=True)


def start(record: ClusterRecord, http: Transport | None = None, project: str | None = None, api: str = API) -> list[str]:
    """Start the stopped VMs, wait until they run, and point the record at their new external
    addresses (same VMs, disks and host keys). One line per VM started."""
    assert record.cluster is not None
    try:
        rest, project = _client(http, project)
        found = instances(record, rest, project, api)
        if any(i is None for i in found):
            raise ProvisionError(
                f"cluster {record.spec.name}: a VM was deleted (a preempted spot VM); its disk and any outputs not brought home are gone",
                f"`cloudtrain down --cluster {record.spec.name} --force` removes the rest",
            )
        base = f"{api}/projects/{project}/zones/{record.spec.zone}/instances"
        started = [i["name"] for i in found if i["status"] != "RUNNING"]  # type: ignore[index]
        for name in started:
            rest.post(f"{base}/{name}/start")  # an operation; the VM's status says when it is done
        deadline = time.monotonic() + START_WAIT_S
        while True:
            found = instances(record, rest, project, api)
            if all(i is not None and i["status"] == "RUNNING" and _nat(i) for i in found):
                break
            if time.monotonic() > deadline:
                raise ProvisionError(f"cluster {record.spec.name}'s VMs did not run within {START_WAIT_S:.0f}s of being started", "look at them in the Cloud console, then run `cloudtrain up` again")
            time.sleep(POLL_S)
    except ProvisionError:
        raise
    except Exception as e:  # noqa: BLE001 - credentials, network, API errors: one line with what to do
        raise ProvisionError(f"could not start cluster {record.spec.name}'s VMs: {e}", "check your GCP credentials and the VMs in the Cloud console, then run `cloudtrain up` again") from e
    nodes, lines = [], []
    for node, inst in zip(record.cluster.nodes, found):
        host = _nat(inst) or node.host  # type: ignore[arg-type]
        if inst["name"] in started:  # type: ignore[index]
            lines.append(f"{node.name}: started {inst['name']}, now at {host}")  # type: ignore[index]
        nodes.append(dataclasses.replace(node, host=host))
    record.cluster = dataclasses.replace(record.cluster, nodes=tuple(nodes))
    return lines
