"""AWS: one VPC, a security group (SSH from sshCidr, all traffic within the cluster), N instances.

Every resource carries the `cloudtrain-cluster` tag, including what EC2 makes on the instance's
behalf: the root volume (`volume_tags`) and the primary network interface (an `ec2.Tag` on
`primary_network_interface_id`; the ENI goes with the instance, the tag makes a sweep's view
complete). All nodes share one subnet, so one zone; with more than one node they also share a
cluster placement group, which lives in that zone.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from cloudtrain.catalog import Choice, Image
from cloudtrain.provisioner import buckets
from cloudtrain.provisioner.cloudinit import user_data
from cloudtrain.errors import BadInput
from cloudtrain.provisioner.contract import CHECKPOINTS, CLUSTER_TAG, NODES, ClusterPlan, node_entry

VPC_CIDR = "10.77.0.0/16"
SUBNET_CIDR = "10.77.1.0/24"


def ami_query(image: Image) -> tuple[list[str], list[dict[str, list[str]]]]:
    """(owners, filters) that find the image; shared with pre-flight so both see the same AMI."""
    owner, name = image.ref.split("|", 1)
    filters = [
        {"name": "name", "values": [name]},
        {"name": "architecture", "values": ["x86_64"]},
        {"name": "state", "values": ["available"]},
    ]
    return [owner], filters


def placement_config(choice: Choice) -> dict[str, str]:
    """Stack config for where the cluster goes."""
    cfg = {"aws:region": choice.region}
    if choice.zone:
        cfg["cloudtrain:zone"] = choice.zone
    return cfg


def placement_from_config() -> tuple[str | None, str | None]:
    return pulumi.Config("aws").get("region"), pulumi.Config("cloudtrain").get("zone")


def offering_zone(instance_type: str, region: str, parent: pulumi.Resource | None = None) -> str:
    """A zone of the region that offers the type, for a stack run without one (plain `pulumi up`).

    Left to EC2, the subnet lands in any zone, and one us-east-1 zone in six has no g4dn
    (review defect 8). The first in name order, so a rerun asks for the same zone and never
    replaces the subnet."""
    found = aws.ec2.get_instance_type_offerings(
        location_type="availability-zone",
        filters=[aws.ec2.GetInstanceTypeOfferingsFilterArgs(name="instance-type", values=[instance_type])],
        region=region,
        opts=pulumi.InvokeOptions(parent=parent),
    )
    zones = sorted(set(found.locations or []))
    if not zones:
        raise BadInput(f"{instance_type} is offered in no zone of {region}", "choose another region with cloudtrain:zone / aws:region, see `cloudtrain gpus`")
    return zones[0]


@dataclass(frozen=True)
class AwsClusterArgs:
    instance_type: str
    ami_owners: list[str]
    ami_filters: list[dict[str, list[str]]]
    plan: ClusterPlan

    @classmethod
    def from_plan(cls, plan: ClusterPlan) -> "AwsClusterArgs":
        owners, filters = ami_query(plan.image)
        return cls(instance_type=plan.offer.instance_type, ami_owners=owners, ami_filters=filters, plan=plan)


class AwsCluster(pulumi.ComponentResource):
    nodes: pulumi.Output[list[dict]]

    def __init__(self, name: str, args: AwsClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cloudtrain:aws:GpuCluster", name, None, opts)
        plan = args.plan
        child = pulumi.ResourceOptions(parent=self)
        tags = plan.tags()
        zone = plan.zone or offering_zone(args.instance_type, plan.region, self)

        # Its own VPC, so the cluster works in accounts without a default VPC and leaves nothing behind.
        vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=VPC_CIDR, enable_dns_hostnames=True, tags=tags, opts=child)
        subnet = aws.ec2.Subnet(
            f"{name}-subnet",
            vpc_id=vpc.id,
            cidr_block=SUBNET_CIDR,
            availability_zone=zone,
            map_public_ip_on_launch=True,
            tags=tags,
            opts=child,
        )
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=tags, opts=child)
        routes = aws.ec2.RouteTable(
            f"{name}-routes",
            vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            tags=tags,
            opts=child,
        )
        assoc = aws.ec2.RouteTableAssociation(f"{name}-routes-assoc", subnet_id=subnet.id, route_table_id=routes.id, opts=child)
        sg = aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=vpc.id,
            description=f"cloudtrain {plan.cluster_name}: SSH from {plan.ssh_cidr}, all traffic between nodes",
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp", from_port=22, to_port=22, cidr_blocks=[plan.ssh_cidr], description="ssh"
                ),
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="-1", from_port=0, to_port=0, self=True, description="intra-cluster"
                ),
            ],
            # Outbound stays open: nodes download packages, datasets and wheels.
            egress=[aws.ec2.SecurityGroupEgressArgs(protocol="-1", from_port=0, to_port=0, cidr_blocks=["0.0.0.0/0"])],
            tags=tags,
            opts=child,
        )
        key = aws.ec2.KeyPair(f"{name}-key", public_key=plan.ssh_public_key, tags=tags, opts=child)
        group = (
            aws.ec2.PlacementGroup(f"{name}-pg", strategy="cluster", tags=tags, opts=child) if plan.nodes > 1 else None
        )
        ami = aws.ec2.get_ami_output(
            most_recent=True,
            owners=args.ami_owners,
            filters=[aws.ec2.GetAmiFilterArgs(name=f["name"], values=f["values"]) for f in args.ami_filters],
            opts=pulumi.InvokeOutputOptions(parent=self),
        )
        market = (
            aws.ec2.InstanceInstanceMarketOptionsArgs(
                market_type="spot",
                spot_options=aws.ec2.InstanceInstanceMarketOptionsSpotOptionsArgs(
                    spot_instance_type="one-time", instance_interruption_behavior="terminate"
                ),
            )
            if plan.spot
            else None
        )
        checkpoints = buckets.aws(name, plan, self)  # $CLOUDTRAIN_CHECKPOINT_DIR's copy off the nodes
        entries = []
        for i in range(plan.nodes):
            node = plan.node_name(i)
            inst = aws.ec2.Instance(
                node,
                ami=ami.id,
                instance_type=args.instance_type,
                subnet_id=subnet.id,
                vpc_security_group_ids=[sg.id],
                key_name=key.key_name,
                iam_instance_profile=checkpoints.for_nodes,
                placement_group=group.name if group else None,
                root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                    volume_size=plan.disk_gb, volume_type="gp3", delete_on_termination=True, encrypted=True
                ),
                # The private host key travels in user data: a secret in Pulumi state.
                user_data=pulumi.Output.secret(user_data(plan.host_keys[i])),
                user_data_replace_on_change=True,
                instance_market_options=market,
                # The watchdog's `shutdown -h now` (autostop.py) then stops the instance, keeping its
                # disk. A one-time spot instance cannot be stopped ("You can only stop Spot Instances
                # associated with persistent Spot Instance requests", AWS EC2 User Guide, "Stop a
                # Spot Instance"; SpotMarketOptions: persistent only with stop/hibernate): it terminates.
                instance_initiated_shutdown_behavior="terminate" if plan.spot else "stop",
                metadata_options=aws.ec2.InstanceMetadataOptionsArgs(http_tokens="required"),
                tags={**tags, "Name": node},
                volume_tags={**tags, "Name": node},
                opts=pulumi.ResourceOptions(parent=self, depends_on=[assoc]),
            )
            aws.ec2.Tag(
                f"{node}-eni-tag",
                resource_id=inst.primary_network_interface_id,
                key=CLUSTER_TAG,
                value=plan.cluster_name,
                opts=child,
            )
            entries.append(node_entry(node, inst.public_ip, inst.private_ip, plan.image.ssh_user, plan.host_keys[i].public))
        self.nodes = pulumi.Output.all(*entries)
        self.checkpoints = checkpoints.store  # where the nodes put checkpoints (contract.CHECKPOINTS)
        self.register_outputs({NODES: self.nodes, CHECKPOINTS: self.checkpoints})


def deploy(name: str, plan: ClusterPlan) -> AwsCluster:
    return AwsCluster(name, AwsClusterArgs.from_plan(plan))
