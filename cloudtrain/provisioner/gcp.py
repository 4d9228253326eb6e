"""GCP: a VPC network and subnet, firewall rules (SSH from sshCidr, intra-cluster), N instances.

Instances and their boot disks carry the `cloudtrain-cluster` label. Networks, subnetworks,
firewalls and resource policies take no labels in the Compute API, so their description starts
with `cloudtrain-cluster=<name>` (contract.marker), followed by nothing or ": ...", and their
names with `<name>-`: the sweep (leftovers/gcp.py) keeps those whose description is exactly the
marker or starts with it and ":" (so cluster `a` never matches `a-b`'s). External addresses are
ephemeral (released with the instance), so there is no address resource to leak.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from cloudtrain.catalog import Choice, Image
from cloudtrain.provisioner import buckets
from cloudtrain.provisioner.cloudinit import user_data
from cloudtrain.provisioner.contract import CHECKPOINTS, NODES, ClusterPlan, node_entry

SUBNET_CIDR = "10.78.0.0/20"
# Machine series that take a compact placement policy (COLLOCATED): Google's table "Compact
# placement policy and workload policy overview" (docs.cloud.google.com/ai-hypercomputer/docs/
# placement-policy-and-workload-policy, supported machine types: A4X Max, A4X, A4, A3 Ultra,
# A3 Mega, A3 High, A3 Edge, A2, G4, G2). N1 (T4, V100 attached) is not among them: its nodes
# share one zone only.
COMPACT_SERIES = ("a2", "a3", "a4", "a4x", "g2", "g4")


def compact_placement(machine_type: str) -> bool:
    return machine_type.split("-", 1)[0] in COMPACT_SERIES


def image_path(image: Image) -> str:
    """images.csv holds 'project/family'; instances boot the family's newest image."""
    project, family = image.ref.split("/", 1)
    return f"projects/{project}/global/images/family/{family}"


def placement_config(choice: Choice) -> dict[str, str]:
    return {"gcp:zone": choice.zone or "", "gcp:region": choice.region}


def placement_from_config() -> tuple[str | None, str | None]:
    cfg = pulumi.Config("gcp")
    return cfg.get("region"), cfg.get("zone")


@dataclass(frozen=True)
class GcpClusterArgs:
    machine_type: str
    accelerator: str | None  # attached to n1 machines; None when the machine type carries its GPUs
    accelerator_count: int
    image: str
    plan: ClusterPlan

    @classmethod
    def from_plan(cls, plan: ClusterPlan) -> "GcpClusterArgs":
        return cls(
            machine_type=plan.offer.instance_type,
            accelerator=plan.offer.accelerator or None,
            accelerator_count=plan.offer.count,
            image=image_path(plan.image),
            plan=plan,
        )


class GcpCluster(pulumi.ComponentResource):
    nodes: pulumi.Output[list[dict]]

    def __init__(self, name: str, args: GcpClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cloudtrain:gcp:GpuCluster", name, None, opts)
        plan = args.plan
        child = pulumi.ResourceOptions(parent=self)
        labels = plan.tags()
        tag = f"cloudtrain-{plan.cluster_name}"  # network tag the firewall rules target

        marker = plan.marker()
        net = gcp.compute.Network(f"{name}-net", auto_create_subnetworks=False, description=marker, opts=child)
        subnet = gcp.compute.Subnetwork(
            f"{name}-subnet", network=net.id, region=plan.region, ip_cidr_range=SUBNET_CIDR, description=marker, opts=child
        )
        ssh = gcp.compute.Firewall(
            f"{name}-ssh",
            network=net.id,
            direction="INGRESS",
            allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=["22"])],
            source_ranges=[plan.ssh_cidr],
            target_tags=[tag],
            description=f"{marker}: ssh from {plan.ssh_cidr}",
            opts=child,
        )
        intra = gcp.compute.Firewall(
            f"{name}-intra",
            network=net.id,
            direction="INGRESS",
            allows=[gcp.compute.FirewallAllowArgs(protocol="all")],
            source_tags=[tag],
            target_tags=[tag],
            description=f"{marker}: all traffic between the nodes",
            opts=child,
        )
        # GPUs cannot live-migrate: host maintenance must stop the VM; spot VMs are deleted on preemption.
        scheduling = gcp.compute.InstanceSchedulingArgs(
            on_host_maintenance="TERMINATE",
            automatic_restart=not plan.spot,
            preemptible=plan.spot,
            provisioning_model="SPOT" if plan.spot else "STANDARD",
            instance_termination_action="DELETE" if plan.spot else None,
        )
        accelerators = (
            [gcp.compute.InstanceGuestAcceleratorArgs(type=args.accelerator, count=args.accelerator_count)]
            if args.accelerator
            else None
        )
        # All nodes are in plan.zone; where the series allows, also close together in it.
        policy = (
            gcp.compute.ResourcePolicy(
                f"{name}-placement",
                region=plan.region,
                description=marker,
                group_placement_policy=gcp.compute.ResourcePolicyGroupPlacementPolicyArgs(
                    collocation="COLLOCATED", vm_count=plan.nodes
                ),
                opts=child,
            )
            if plan.nodes > 1 and compact_placement(args.machine_type)
            else None
        )
        checkpoints = buckets.gcp(name, plan, self)  # $CLOUDTRAIN_CHECKPOINT_DIR's copy off the nodes
        entries = []
        for i in range(plan.nodes):
            node = plan.node_name(i)
            metadata = {
                "ssh-keys": f"{plan.image.ssh_user}:{plan.ssh_public_key}",
                "user-data": pulumi.Output.secret(user_data(plan.host_keys[i])),
                "block-project-ssh-keys": "true",
                # With OS Login on (a project or org policy), the guest ignores ssh-keys metadata
                # and SSH fails; the instance's own value overrides the project's.
                "enable-oslogin": "FALSE",
            }
            if plan.image.image == "dl":
                metadata["install-nvidia-driver"] = "True"
            inst = gcp.compute.Instance(
                node,
                machine_type=args.machine_type,
                zone=plan.zone,
                boot_disk=gcp.compute.InstanceBootDiskArgs(
                    auto_delete=True,
                    initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
                        image=args.image, size=plan.disk_gb, type="pd-balanced", labels=labels
                    ),
                ),
                network_interfaces=[
                    gcp.compute.InstanceNetworkInterfaceArgs(
                        subnetwork=subnet.id, access_configs=[gcp.compute.InstanceNetworkInterfaceAccessConfigArgs()]
                    )
                ],
                guest_accelerators=accelerators,
                scheduling=scheduling,
                metadata=metadata,
                labels=labels,
                tags=[tag],
                resource_policies=policy.self_link if policy else None,
                allow_stopping_for_update=True,
                service_account=checkpoints.for_nodes,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[ssh, intra]),
            )
            public_ip = inst.network_interfaces.apply(lambda nics: nics[0].access_configs[0].nat_ip)
            private_ip = inst.network_interfaces.apply(lambda nics: nics[0].network_ip)
            entries.append(node_entry(node, public_ip, private_ip, plan.image.ssh_user, plan.host_keys[i].public))
        self.nodes = pulumi.Output.all(*entries)
        self.checkpoints = checkpoints.store  # where the nodes put checkpoints (contract.CHECKPOINTS)
        self.register_outputs({NODES: self.nodes, CHECKPOINTS: self.checkpoints})


def deploy(name: str, plan: ClusterPlan) -> GcpCluster:
    return GcpCluster(name, GcpClusterArgs.from_plan(plan))
