"""AWS: find and remove what still carries `cloudtrain-cluster=<name>` after the stack's destroy.

A create that an interrupted update left pending (the cloud accepted it, state never got its
ID) is invisible to `pulumi destroy`; the tag every resource carries is how it is found. Only
resources whose tag value is exactly the cluster's name are touched: the filter asks EC2 for
them, and each answer is checked again before anything is deleted.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from cloudtrain.provisioner.contract import CLUSTER_TAG
from cloudtrain.provisioner.leftovers import aws_beyond
from cloudtrain.provisioner.leftovers.base import GLOBAL, Leftover, Tagged

SWEEPS = True

# Describe call, its result key, the id field (also the delete call's parameter), the delete call:
# in the order they must be deleted (an instance holds volumes and ENIs; a VPC goes last, after
# everything inside it). What must be undone before a delete is in _unbind.
_KINDS: tuple[tuple[str, str, str, str, str], ...] = (
    ("instance", "describe_instances", "Reservations", "InstanceId", "terminate_instances"),
    ("elastic-ip", "describe_addresses", "Addresses", "AllocationId", "release_address"),
    ("network-interface", "describe_network_interfaces", "NetworkInterfaces", "NetworkInterfaceId", "delete_network_interface"),
    ("volume", "describe_volumes", "Volumes", "VolumeId", "delete_volume"),
    ("route-table", "describe_route_tables", "RouteTables", "RouteTableId", "delete_route_table"),
    ("internet-gateway", "describe_internet_gateways", "InternetGateways", "InternetGatewayId", "delete_internet_gateway"),
    ("subnet", "describe_subnets", "Subnets", "SubnetId", "delete_subnet"),
    ("security-group", "describe_security_groups", "SecurityGroups", "GroupId", "delete_security_group"),
    ("vpc", "describe_vpcs", "Vpcs", "VpcId", "delete_vpc"),
    ("placement-group", "describe_placement_groups", "PlacementGroups", "GroupName", "delete_placement_group"),
    ("key-pair", "describe_key_pairs", "KeyPairs", "KeyName", "delete_key_pair"),
)
_GONE = {"terminated", "shutting-down"}
# What bills while it exists: failing to look for these fails the sweep; the rest are free
# (a VPC counts against a quota of 5 per region, no more), so not finding them is a warning.
BILLED = {"instance", "volume", "elastic-ip"}
_DELETE = {kind: (delete, id_key) for kind, _, _, id_key, delete in _KINDS}


def console_filter(cluster: str, region: str) -> str:
    """Where a person can look for themselves."""
    return f"`aws resourcegroupstaggingapi get-resources --region {region} --tag-filters Key={CLUSTER_TAG},Values={cluster}`"


def _client(region: str, session: Any | None) -> Any:
    return (session or boto3.Session(region_name=region)).client("ec2", region_name=region)


def _tagged(item: dict[str, Any], cluster: str) -> bool:
    # DescribeNetworkInterfaces names its tags TagSet; every other call here, Tags.
    tags = item.get("Tags") or item.get("TagSet") or []
    return any(t.get("Key") == CLUSTER_TAG and t.get("Value") == cluster for t in tags)


def find(cluster: str, region: str, session: Any | None = None) -> tuple[list[Leftover], list[str]]:
    """Every resource in `region` tagged `cloudtrain-cluster=<cluster>`, in deletion order (the
    checkpoint bucket and the IAM role and profile after the instances that use them), and
    the free kinds that could not be listed. Raises when a kind that bills cannot be listed.
    Region GLOBAL: the role and profile alone."""
    if region == GLOBAL:
        return aws_beyond.find(cluster, region, session)
    ec2 = _client(region, session)
    filters = [{"Name": f"tag:{CLUSTER_TAG}", "Values": [cluster]}]
    found: list[Leftover] = []
    unchecked: list[str] = []
    for kind, call, key, id_key, _ in _KINDS:
        try:
            items = getattr(ec2, call)(Filters=filters).get(key, [])
        except Exception as e:  # noqa: BLE001 - any SDK failure; re-raised where it bills
            if kind in BILLED:
                raise
            unchecked.append(f"{kind}s ({type(e).__name__})")
            continue
        if kind == "instance":
            items = [i for r in items for i in r.get("Instances", []) if i.get("State", {}).get("Name") not in _GONE]
        for item in items:
            if not _tagged(item, cluster):
                continue
            if kind == "security-group" and item.get("GroupName") == "default":
                continue  # goes with its VPC; EC2 refuses to delete it
            if kind == "route-table" and any(a.get("Main") for a in item.get("Associations", [])):
                continue  # the VPC's main table goes with the VPC
            found.append(Leftover(kind, item[id_key], region, item))
    beyond, not_listed = aws_beyond.find(cluster, region, session)
    return found + beyond, unchecked + not_listed


def remove(found: list[Leftover], session: Any | None = None) -> list[str]:
    """Delete what `find` returned, in its order; the lines of what could not be removed."""
    failed: list[str] = []
    by_region: dict[str, Any] = {}
    for left in found:
        try:
            if left.kind in aws_beyond.KINDS:
                aws_beyond.delete(left, session)
                continue
            ec2 = by_region.setdefault(left.region, _client(left.region, session))
            _delete(ec2, left, [x for x in found if x.kind == "instance" and x.region == left.region])
        except (ClientError, BotoCoreError, WaiterError) as e:
            code = e.response.get("Error", {}).get("Code", "") if isinstance(e, ClientError) else type(e).__name__
            if code.endswith(".NotFound") or (isinstance(e, ClientError) and aws_beyond.gone(e)):
                continue  # already gone: a root volume goes with its instance
            failed.append(f"{left.kind} {left.id} in {left.region} ({code})")
    return failed


def _unbind(ec2: Any, left: Leftover) -> None:
    """What holds a resource that EC2 will not delete while held: an address's association, a
    table's subnet associations, a gateway's VPC attachments."""
    item = left.raw
    if left.kind == "elastic-ip" and item.get("AssociationId"):
        ec2.disassociate_address(AssociationId=item["AssociationId"])
    for a in item.get("Associations", []) if left.kind == "route-table" else []:
        if a.get("RouteTableAssociationId"):
            ec2.disassociate_route_table(AssociationId=a["RouteTableAssociationId"])
    for a in item.get("Attachments", []) if left.kind == "internet-gateway" else []:
        ec2.detach_internet_gateway(InternetGatewayId=left.id, VpcId=a["VpcId"])


def regions(session: Any | None = None) -> list[str]:
    """The regions this account can use (DescribeRegions answers the enabled ones)."""
    session = session or boto3.Session()
    return sorted(r["RegionName"] for r in _client(session.region_name or "us-east-1", session).describe_regions()["Regions"])


def tagged(region: str, session: Any | None = None) -> list[Tagged]:
    """What bills in `region` and carries the cluster tag, whatever its value (instances not
    terminated, volumes, elastic IPs): the list mode of `status --cloud`."""
    ec2 = _client(region, session)
    tag_key = [{"Name": "tag-key", "Values": [CLUSTER_TAG]}]
    out: list[Tagged] = []
    for r in ec2.describe_instances(Filters=tag_key).get("Reservations", []):
        for i in r.get("Instances", []):
            state = i.get("State", {}).get("Name", "?")
            if state in _GONE:
                continue
            what = i.get("InstanceType", "?") + (" (running: billed by the second)" if state in ("running", "pending") else " (not running: its volumes bill)")
            out.append(Tagged("aws", "instance", i["InstanceId"], i.get("Placement", {}).get("AvailabilityZone", region), state, _value(i), what, region, i.get("InstanceType", "")))
    for v in ec2.describe_volumes(Filters=tag_key).get("Volumes", []):
        out.append(Tagged("aws", "volume", v["VolumeId"], v.get("AvailabilityZone", region), v.get("State", "?"), _value(v), f"{v.get('Size', '?')} GiB {v.get('VolumeType', '')}".strip(), region))
    for a in ec2.describe_addresses(Filters=tag_key).get("Addresses", []):
        state = "associated" if a.get("AssociationId") else "unattached"
        out.append(Tagged("aws", "elastic-ip", a["AllocationId"], region, state, _value(a), f"public IPv4 {a.get('PublicIp', '')}".strip(), region))
    return out


def tagged_global(session: Any | None = None) -> list[Tagged]:
    """What no one region's EC2 answers: checkpoint buckets, node roles and profiles."""
    return aws_beyond.tagged(session)


def _value(item: dict[str, Any]) -> str:
    return next((t.get("Value", "") for t in item.get("Tags") or [] if t.get("Key") == CLUSTER_TAG), "")


def _delete(ec2: Any, left: Leftover, instances: list[Leftover]) -> None:
    call, id_key = _DELETE[left.kind]
    _unbind(ec2, left)
    if left.kind == "instance":  # the one call that takes a list
        ec2.terminate_instances(InstanceIds=[left.id])
    else:
        getattr(ec2, call)(**{id_key: left.id})
    if left.kind == "instance" and left.id is instances[-1].id:  # wait once, for all of them: their ENIs and volumes free up then
        ec2.get_waiter("instance_terminated").wait(
            InstanceIds=[i.id for i in instances], WaiterConfig={"Delay": 3, "MaxAttempts": 200}
        )
