"""`down` finds by tag what Pulumi state lost (issue 10 item 5): AWS through boto3 against moto
(GCP and Azure: tests/test_leftovers_rest.py).

Every kind the AWS program makes is planted twice: tagged with the cluster's name, and tagged
with another cluster's name (or not at all). The sweep must remove exactly the first set.
"""

from __future__ import annotations

import pytest
import boto3
from moto import mock_aws

from cloudtrain.errors import ProvisionError
from cloudtrain.provisioner import leftovers
from cloudtrain.provisioner.contract import CLUSTER_TAG
from cloudtrain.provisioner.leftovers import aws

REGION = "us-east-1"


@pytest.fixture
def ec2(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        yield boto3.client("ec2", region_name=REGION)


def _tags(kind: str, value: str | None) -> list[dict]:
    tags = [{"Key": "managed-by", "Value": "cloudtrain"}]
    if value is not None:
        tags.append({"Key": CLUSTER_TAG, "Value": value})
    return [{"ResourceType": kind, "Tags": tags}]


def plant(ec2, value: str | None) -> dict[str, str]:
    """One of each resource the AWS program makes, the way it wires them."""
    vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16", TagSpecifications=_tags("vpc", value))["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.1.0/24", TagSpecifications=_tags("subnet", value))["Subnet"]["SubnetId"]
    igw = ec2.create_internet_gateway(TagSpecifications=_tags("internet-gateway", value))["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    rt = ec2.create_route_table(VpcId=vpc, TagSpecifications=_tags("route-table", value))["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=rt, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    ec2.associate_route_table(RouteTableId=rt, SubnetId=subnet)
    sg = ec2.create_security_group(GroupName=f"sg-{value}", Description="ssh", VpcId=vpc, TagSpecifications=_tags("security-group", value))["GroupId"]
    # moto may hold no default images (a test that set MOTO_EC2_LOAD_DEFAULT_AMIS=false built the
    # region's backend first); its run_instances does not check the image.
    ami = next((i["ImageId"] for i in ec2.describe_images(Owners=["amazon"])["Images"]), "ami-12c6146b")
    vm = ec2.run_instances(
        ImageId=ami, MinCount=1, MaxCount=1, InstanceType="g4dn.xlarge", SubnetId=subnet, SecurityGroupIds=[sg],
        TagSpecifications=_tags("instance", value) + [{"ResourceType": "volume", "Tags": _tags("volume", value)[0]["Tags"]}],
    )["Instances"][0]["InstanceId"]
    vol = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=10, TagSpecifications=_tags("volume", value))["VolumeId"]
    eni = ec2.create_network_interface(SubnetId=subnet, TagSpecifications=_tags("network-interface", value))["NetworkInterface"]["NetworkInterfaceId"]
    eip = ec2.allocate_address(Domain="vpc", TagSpecifications=_tags("elastic-ip", value))["AllocationId"]
    ec2.associate_address(AllocationId=eip, InstanceId=vm)
    return {"vpc": vpc, "subnet": subnet, "internet-gateway": igw, "route-table": rt, "security-group": sg, "instance": vm, "volume": vol, "network-interface": eni, "elastic-ip": eip}


def _live(ec2) -> set[str]:
    ids: set[str] = set()
    ids |= {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]}
    ids |= {s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]}
    ids |= {g["InternetGatewayId"] for g in ec2.describe_internet_gateways()["InternetGateways"]}
    ids |= {t["RouteTableId"] for t in ec2.describe_route_tables()["RouteTables"]}
    ids |= {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    ids |= {i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"] if i["State"]["Name"] != "terminated"}
    ids |= {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
    ids |= {n["NetworkInterfaceId"] for n in ec2.describe_network_interfaces()["NetworkInterfaces"]}
    ids |= {a["AllocationId"] for a in ec2.describe_addresses()["Addresses"]}
    return ids


def test_sweep_removes_everything_tagged_with_the_cluster_and_nothing_else(ec2):
    mine = plant(ec2, "c1")
    others = [plant(ec2, "c1-other"), plant(ec2, "C1"), plant(ec2, None)]
    found, unchecked = aws.find("c1", REGION)
    kinds = {x.kind: x.id for x in found}
    assert {k: kinds.get(k) for k in mine} == mine  # each planted kind, by its id
    assert [x.kind for x in found].index("instance") < [x.kind for x in found].index("vpc")
    said: list[str] = []
    leftovers.sweep("aws", "c1", REGION, said.append)
    live = _live(ec2)
    assert not set(mine.values()) & live, "a tagged resource survived the sweep"
    for other in others:
        assert set(other.values()) <= live, "the sweep touched a resource without this cluster's tag value"
    assert any("that Pulumi state did not know" in s and mine["instance"] in s for s in said)
    # moto serves no DescribePlacementGroups: the free kind is said to be unchecked, not failed.
    assert unchecked == ["placement-groups (NotImplementedError)"]
    # Idempotent: a second down finds nothing more.
    assert aws.find("c1", REGION)[0] == []


def test_a_leftover_that_cannot_be_removed_fails_down_with_what_remains(ec2, monkeypatch):
    mine = plant(ec2, "c2")
    real = aws._delete

    def refuse_vpc(client, left, instances):
        if left.kind == "vpc":
            raise aws.ClientError({"Error": {"Code": "DependencyViolation", "Message": "x"}}, "DeleteVpc")
        real(client, left, instances)

    monkeypatch.setattr(aws, "_delete", refuse_vpc)
    with pytest.raises(ProvisionError) as e:
        leftovers.sweep("aws", "c2", REGION, lambda s: None)
    line = e.value.line()
    assert f"vpc {mine['vpc']} in {REGION} (DependencyViolation)" in line
    assert f"--tag-filters Key={CLUSTER_TAG},Values=c2" in line and "cloudtrain down --cluster c2" in line
