"""AWS clusters stopped by their watchdog, seen and started again through EC2 (moto stands in
for it: real boto3 calls, EC2's own response shapes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from cloudtrain.errors import ProvisionError
from cloudtrain.machine import Cluster, Node
from cloudtrain.provisioner import power_aws
from cloudtrain.provisioner.contract import CLUSTER_TAG
from cloudtrain.spec import ClusterSpec
from cloudtrain.state import ClusterRecord

REGION = "us-east-1"


@pytest.fixture
def ec2(monkeypatch: pytest.MonkeyPatch):
    # No default AMIs: loading moto's list costs seconds per test, and any id launches.
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        yield boto3.client("ec2", region_name=REGION)


def _cluster(ec2, name: str = "ct-test", nodes: int = 2, spot: bool = False) -> tuple[ClusterRecord, list[str]]:
    vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.1.0/24")["Subnet"]["SubnetId"]
    ec2.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": True})  # as the program's subnet
    made = ec2.run_instances(
        ImageId="ami-0cloudtrain0000000", MinCount=nodes, MaxCount=nodes, InstanceType="g4dn.xlarge", SubnetId=subnet,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": CLUSTER_TAG, "Value": name}]}],
    )["Instances"]
    spec = ClusterSpec(name=name, provider="aws", gpu="t4", gpu_count=1, nodes=nodes, region=REGION, spot=spot)
    ids = [i["InstanceId"] for i in made]
    running = {i["InstanceId"]: i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]}
    members = tuple(
        Node(f"{name}-{n}", running[i]["PublicIpAddress"], 22, "ubuntu", "ssh-ed25519 AAAA", running[i]["PrivateIpAddress"]) for n, i in enumerate(ids)
    )
    record = ClusterRecord(spec=spec, cluster=Cluster(name, members, Path("/nonexistent")), status="ready")
    power_aws.remember(record)  # what AwsProvisioner.create does once the stack is up
    assert record.provider_state["instance_ids"] == ids
    return record, ids


def test_a_running_cluster_is_not_stopped_and_a_stopped_one_is(ec2) -> None:
    record, ids = _cluster(ec2)
    # A same-named cluster from another cloudtrain home: stopping it says nothing about ours.
    other, other_ids = _cluster(ec2)
    ec2.stop_instances(InstanceIds=other_ids)
    assert power_aws.observed_stop(record) is None
    ec2.stop_instances(InstanceIds=[ids[1]])
    stop = power_aws.observed_stop(record)
    assert stop is not None and "stopped" in stop["reason"] and stop["at"] > 0 and "terminated" not in stop


def test_start_runs_the_same_instances_again_at_their_new_addresses(ec2) -> None:
    record, ids = _cluster(ec2)
    ec2.stop_instances(InstanceIds=ids)
    lines = power_aws.start(record)
    assert len(lines) == 2 and all("started" in line for line in lines)
    states = {i["InstanceId"]: i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]}
    assert {i["State"]["Name"] for i in states.values()} == {"running"}
    assert [n.host for n in record.cluster.nodes] == [states[i]["PublicIpAddress"] for i in ids]
    assert power_aws.observed_stop(record) is None


def test_a_terminated_spot_node_is_reported_and_never_started(ec2) -> None:
    record, ids = _cluster(ec2, spot=True)
    ec2.terminate_instances(InstanceIds=[ids[0]])
    stop = power_aws.observed_stop(record)
    assert stop["terminated"] is True and "spot node cannot stop" in stop["reason"]
    with pytest.raises(ProvisionError, match="terminated"):
        power_aws.start(record)


def test_without_recorded_ids_two_clusters_at_the_same_private_addresses_are_not_guessed_between(ec2) -> None:
    record, ids = _cluster(ec2)
    _cluster(ec2)  # same name, same CIDRs: moto hands out the same private addresses
    record.provider_state.clear()  # a cluster made before ids were recorded
    ec2.stop_instances(InstanceIds=ids)
    assert power_aws.observed_stop(record) is None
    with pytest.raises(ProvisionError, match="more than one instance"):
        power_aws.start(record)


def test_no_credentials_means_unknown_not_a_crash(ec2, monkeypatch: pytest.MonkeyPatch) -> None:
    record, _ = _cluster(ec2)
    bad = dataclasses.replace(record, spec=dataclasses.replace(record.spec, region="nowhere-1"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "")
    assert power_aws.observed_stop(bad) is None
