"""AWS: whether a cluster's instances were stopped (by their watchdog's `shutdown -h now`, the
instance's shutdown behaviour being `stop`), and starting them again.

A stopped node cannot say why it stopped (its stopped.json is on its own disk), so EC2's
account of the instance is the source: its state, StateReason and StateTransitionReason. A
cluster's instances are those tagged `cloudtrain-cluster=<name>` whose private address is a
node's: a same-named cluster from another cloudtrain home in the account is never touched.
Private addresses survive a stop; public ones do not, so `start` records the new ones.
"""

from __future__ import annotations

import calendar
import dataclasses
import re
import time
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from cloudtrain.errors import ProvisionError
from cloudtrain.provisioner.contract import CLUSTER_TAG
from cloudtrain.state import ClusterRecord

_WHEN = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) GMT\)")  # "User initiated (2026-12-01 14:03:12 GMT)"
_STOPPED = {"stopping", "stopped"}
_GONE = {"shutting-down", "terminated"}


def _ec2(record: ClusterRecord, session: Any | None) -> Any:
    region = record.spec.region
    return (session or boto3.Session(region_name=region)).client("ec2", region_name=region)


def _tagged(record: ClusterRecord, session: Any | None) -> list[dict[str, Any]]:
    pages = _ec2(record, session).get_paginator("describe_instances").paginate(
        Filters=[{"Name": f"tag:{CLUSTER_TAG}", "Values": [record.spec.name]}]
    )
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def remember(record: ClusterRecord, session: Any | None = None) -> None:
    """Record the instance ids of a just-made cluster (found by their public addresses, unique
    while they run) in `record.provider_state`: after a stop, only the ids tell this cluster's
    instances from those of a same-named cluster elsewhere in the account."""
    assert record.cluster is not None
    try:
        by_host = {i.get("PublicIpAddress"): i["InstanceId"] for i in _tagged(record, session) if i.get("PublicIpAddress")}
    except (BotoCoreError, ClientError):
        return  # instances() falls back on private addresses, refusing to guess between two
    ids = [by_host.get(n.host) for n in record.cluster.nodes]
    if all(ids):
        record.provider_state["instance_ids"] = ids


def instances(record: ClusterRecord, session: Any | None = None) -> list[dict[str, Any]]:
    """The cluster's instances in node order (a node EC2 no longer lists is left out)."""
    assert record.cluster is not None
    found = _tagged(record, session)
    ids = record.provider_state.get("instance_ids")
    if ids:
        by_id = {i["InstanceId"]: i for i in found}
        return [by_id[i] for i in ids if i in by_id]
    by_ip: dict[str, list[dict[str, Any]]] = {}
    for inst in found:
        by_ip.setdefault(inst.get("PrivateIpAddress"), []).append(inst)
    if any(len(v) > 1 for v in by_ip.values()):
        raise ProvisionError(
            f"more than one instance tagged {CLUSTER_TAG}={record.spec.name} has a node's private address (a same-named cluster elsewhere?)",
            "find this cluster's instances in the EC2 console",
        )
    return [by_ip[n.private_ip][0] for n in record.cluster.nodes if n.private_ip in by_ip]


def _at(inst: dict[str, Any]) -> float | None:
    m = _WHEN.search(inst.get("StateTransitionReason") or "")
    return float(calendar.timegm(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))) if m else None


def observed_stop(record: ClusterRecord, session: Any | None = None) -> dict | None:
    """{"reason", "at"[, "terminated"]} when a node is stopped or (spot) terminated; else None.
    None too when EC2 cannot be asked (no credentials, no network): the SSH probe in `status`
    still shows nodes that do not answer, and nothing is decided on a guess."""
    if record.cluster is None:
        return None
    try:
        found = instances(record, session)
    except (BotoCoreError, ClientError, ProvisionError):
        return None
    for inst in found:
        state = inst["State"]["Name"]
        if state in _STOPPED | _GONE:
            by_node = (inst.get("StateReason") or {}).get("Code") == "Client.InstanceInitiatedShutdown"
            reason = "stopped by the node (autostop or deadline)" if by_node else "stopped outside cloudtrain"
            if state in _GONE:
                reason = "terminated: a spot node cannot stop; its disk went with it"
            return {"reason": reason, "at": _at(inst) or time.time(), **({"terminated": True} if state in _GONE else {})}
    return None


def gone(record: ClusterRecord, session: Any | None = None) -> list[int] | None:
    """`launch --recover`: the nodes whose instance is terminated (or terminating, or no longer
    listed) other than by its own shutdown (a spot node's watchdog terminates it); None when EC2
    cannot be asked or the nodes cannot be told apart."""
    if record.cluster is None:
        return None
    try:
        found = _tagged(record, session)
    except (BotoCoreError, ClientError):
        return None
    ids = record.provider_state.get("instance_ids")
    if ids:
        by_id = {i["InstanceId"]: i for i in found}
        mine = [by_id.get(i) for i in ids]
    else:
        by_ip: dict[str, list[dict[str, Any]]] = {}
        for inst in found:
            by_ip.setdefault(inst.get("PrivateIpAddress"), []).append(inst)
        if any(len(v) > 1 for k, v in by_ip.items() if k):
            return None
        mine = [by_ip[n.private_ip][0] if n.private_ip in by_ip else None for n in record.cluster.nodes]
    return [
        n for n, inst in enumerate(mine)
        if inst is None
        or (inst["State"]["Name"] in _GONE and (inst.get("StateReason") or {}).get("Code") != "Client.InstanceInitiatedShutdown")
    ]


def start(record: ClusterRecord, session: Any | None = None) -> list[str]:
    """Start the stopped instances, wait until they run, and point the record at their new
    public addresses (same instances, disks and host keys). One line per node started."""
    assert record.cluster is not None
    ec2 = _ec2(record, session)
    try:
        found = instances(record, session)
        gone = [i["InstanceId"] for i in found if i["State"]["Name"] in _GONE]
        if gone or len(found) < len(record.cluster.nodes):
            raise ProvisionError(
                f"cluster {record.spec.name}: instance(s) {', '.join(gone) or '(missing)'} were terminated (a spot node cannot stop); "
                "their disks and any outputs not brought home are gone",
                f"`cloudtrain down --cluster {record.spec.name} --force` removes the rest",
            )
        ids = [i["InstanceId"] for i in found if i["State"]["Name"] != "running"]
        if ids:
            ec2.get_waiter("instance_stopped").wait(InstanceIds=[i for i in ids if i])  # a stop under way must end first
            ec2.start_instances(InstanceIds=ids)
            ec2.get_waiter("instance_running").wait(InstanceIds=ids)
        found = instances(record, session)
    except (BotoCoreError, ClientError, WaiterError) as e:
        raise ProvisionError(f"could not start cluster {record.spec.name}'s instances: {e}", "check your AWS credentials and the instances in the EC2 console, then run `cloudtrain up` again") from e
    nodes, lines = [], []
    for node, inst in zip(record.cluster.nodes, found):
        host = inst.get("PublicIpAddress") or node.host
        if inst["InstanceId"] in ids:
            lines.append(f"{node.name}: started {inst['InstanceId']}, now at {host}")
        nodes.append(dataclasses.replace(node, host=host))
    record.cluster = dataclasses.replace(record.cluster, nodes=tuple(nodes))
    return lines
