"""Azure: whether a cluster's VMs were deallocated (by their watchdog, bootstrap/node/selfstop.py)
or only stopped (its fallback: still allocated, still billed), and starting them again, through
Azure Resource Manager REST.

The cluster is the resource group tagged `cloudtrain-cluster=<name>` that holds its nodes'
public addresses (Standard SKU, static: they survive deallocation), so a same-named cluster
from another cloudtrain home is never taken for this one. Shapes, from the ARM REST reference:
Virtual Machines - List (`statusOnly=true`: each VM's `properties.instanceView.statuses`, with
codes `PowerState/running|stopping|stopped|deallocating|deallocated`), Virtual Machines - Start
(202 Accepted), Public IP Addresses - List (`properties.ipAddress`).
"""

from __future__ import annotations

import time
from typing import Any

from cloudtrain.errors import ProvisionError
from cloudtrain.provisioner.leftovers import azure as groups
from cloudtrain.provisioner.rest import ApiError, Rest, Transport
from cloudtrain.state import ClusterRecord

COMPUTE_API, NETWORK_API = "2024-11-01", "2024-05-01"
START_WAIT_S, POLL_S = 600.0, 10.0


def _get(http: Transport, url: str) -> list[dict[str, Any]]:
    try:
        return (Rest(http, "Azure").get(url) or {}).get("value", [])
    except ApiError as e:
        raise RuntimeError(e.brief()) from e


def _group(record: ClusterRecord, http: Transport, sub: str, arm: str) -> str:
    assert record.cluster is not None
    hosts = {n.host for n in record.cluster.nodes}
    found, _ = groups.find(record.spec.name, record.spec.region or "", http, sub, arm)
    for g in found:
        ips = _get(http, f"{arm}/subscriptions/{sub}/resourceGroups/{g.id}/providers/Microsoft.Network/publicIPAddresses?api-version={NETWORK_API}")
        if hosts & {(ip.get("properties") or {}).get("ipAddress") for ip in ips}:
            return g.id
    raise ProvisionError(f"no resource group tagged for cluster {record.spec.name} holds its nodes' addresses", "look for it in the Azure portal")


def _power(vm: dict[str, Any]) -> str:
    for s in ((vm.get("properties") or {}).get("instanceView") or {}).get("statuses") or []:
        if str(s.get("code", "")).startswith("PowerState/"):
            return s["code"].split("/", 1)[1]
    return "unknown"


def _vms(http: Transport, sub: str, arm: str, group: str) -> list[dict[str, Any]]:
    return _get(http, f"{arm}/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines?api-version={COMPUTE_API}&statusOnly=true")


def observed_stop(record: ClusterRecord, http: Transport | None = None, subscription_id: str | None = None, arm: str = groups.ARM) -> dict | None:
    """{"reason", "at"[, "still_billing"]} when a VM is deallocated or stopped; None when all run,
    or when Azure cannot be asked (nothing is decided on a guess)."""
    if record.cluster is None:
        return None
    try:
        http, sub = groups._client(http, subscription_id)
        states = [_power(vm) for vm in _vms(http, sub, arm, _group(record, http, sub, arm))]
    except Exception:  # noqa: BLE001 - login, network and API errors alike: unknown
        return None
    if any(s in ("deallocating", "deallocated") for s in states):
        return {"reason": "deallocated (autostop or deadline)", "at": time.time()}
    if any(s in ("stopping", "stopped") for s in states):
        return {"reason": "stopped but still allocated: Azure bills it until it is deallocated", "at": time.time(), "still_billing": True}
    return None


def gone(record: ClusterRecord, http: Transport | None = None, subscription_id: str | None = None, arm: str = groups.ARM) -> list[int] | None:
    """`launch --recover`: the nodes whose VM the group no longer holds (an evicted spot VM:
    eviction policy Delete); None when Azure cannot be asked. A VM's name is its node's name
    and Pulumi's suffix: the longest node name it starts with is its node."""
    if record.cluster is None:
        return None
    try:
        http, sub = groups._client(http, subscription_id)
        names = [vm["name"] for vm in _vms(http, sub, arm, _group(record, http, sub, arm))]
    except Exception:  # noqa: BLE001 - login, network and API errors alike: unknown
        return None
    nodes = [n.name for n in record.cluster.nodes]
    held = {max((n for n in nodes if vm.startswith(n)), key=len, default=None) for vm in names}
    return [i for i, n in enumerate(nodes) if n not in held]


def start(record: ClusterRecord, http: Transport | None = None, subscription_id: str | None = None, arm: str = groups.ARM, poll_s: float = POLL_S) -> list[str]:
    """Start the VMs that are not running and wait until all run (same VMs, disks, static
    addresses and host keys). One line per VM started."""
    try:
        http, sub = groups._client(http, subscription_id)
        group = _group(record, http, sub, arm)
        lines = []
        for vm in _vms(http, sub, arm, group):
            if _power(vm) != "running":
                reply = http.request("POST", f"{arm}/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{vm['name']}/start?api-version={COMPUTE_API}")
                if reply.status >= 400:
                    raise RuntimeError(f"starting {vm['name']}: HTTP {reply.status} {reply.error_code()}")
                lines.append(f"started {vm['name']}")
        deadline = time.monotonic() + START_WAIT_S
        while not all(_power(vm) == "running" for vm in _vms(http, sub, arm, group)):
            if time.monotonic() > deadline:
                raise ProvisionError(f"cluster {record.spec.name}'s VMs did not run within {START_WAIT_S:.0f}s of being started", "look at them in the Azure portal, then run `cloudtrain up` again")
            time.sleep(poll_s)
        return lines
    except ProvisionError:
        raise
    except Exception as e:  # noqa: BLE001 - login, network, API errors: one line with what to do
        raise ProvisionError(f"could not start cluster {record.spec.name}'s VMs: {e}", "check `az login` and the VMs in the Azure portal, then run `cloudtrain up` again") from e
