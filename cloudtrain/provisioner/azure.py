"""Azure: a resource group holding a vnet, an NSG (SSH from sshCidr, intra-cluster, deny the rest), N VMs.

Everything is in the cluster's own resource group, and every resource that takes tags has the
`cloudtrain-cluster` tag (subnets take none: they are part of the vnet). The OS disk, created
with the VM, gets the VM's tags at creation (terraform-provider-azurerm#8162: "the OS Disk tags
originate [in the VM tags] at creation"; Azure/azure-sdk-for-js#17787), and goes with the VM
(deleteOption Delete) or with the resource group.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import authorization, compute, network, resources

from cloudtrain.catalog import Choice, Image
from cloudtrain.provisioner import buckets
from cloudtrain.provisioner.cloudinit import user_data
from cloudtrain.provisioner.contract import CHECKPOINTS, NODES, ClusterPlan, node_entry

VNET_CIDR = "10.79.0.0/16"
SUBNET_CIDR = "10.79.1.0/24"
# What a node's watchdog may do to its own VM: deallocate it (an OS shutdown alone leaves an
# Azure VM allocated and billing). Action name: Azure resource provider operations,
# Microsoft.Compute, "Powers off the virtual machine and releases the compute resources".
DEALLOCATE = "Microsoft.Compute/virtualMachines/deallocate/action"


def security_profile() -> compute.SecurityProfileArgs:
    """Trusted Launch with Secure Boot off, so the NVIDIA driver modules built on the node load.

    Trusted Launch (Secure Boot on) is the default for new Gen2 VMs ("Trusted Launch as
    default", GA 2026-08; MicrosoftDocs azure-docs `trusted-launch.md`), and Secure Boot refuses
    unsigned DKMS modules (GPU review defect 8). `securityType: Standard` would be the other
    way out, but the compute API this provider speaks (2024-11-01) takes it only with the
    subscription feature `UseStandardSecurityType`; Standard is accepted plainly from
    2025-11-01 on (same doc). Every GPU family in the catalog (NC, ND incl. NDasrA100_v4 and
    NDm_A100_v4, NV) supports Trusted Launch (its size table), so this profile is valid on each;
    the vTPM stays on. An explicit profile is never overridden by the default (same doc)."""
    return compute.SecurityProfileArgs(
        security_type="TrustedLaunch",
        uefi_settings=compute.UefiSettingsArgs(secure_boot_enabled=False, v_tpm_enabled=True),
    )


def image_reference(image: Image) -> compute.ImageReferenceArgs:
    """images.csv holds a URN 'publisher:offer:sku:version' (Gen2 images: the A100/H100 sizes need them)."""
    publisher, offer, sku, version = image.ref.split(":")
    return compute.ImageReferenceArgs(publisher=publisher, offer=offer, sku=sku, version=version)


def placement_config(choice: Choice) -> dict[str, str]:
    return {"azure-native:location": choice.region}


def placement_from_config() -> tuple[str | None, str | None]:
    return pulumi.Config("azure-native").get("location"), None


@dataclass(frozen=True)
class AzureClusterArgs:
    vm_size: str
    image: compute.ImageReferenceArgs
    plan: ClusterPlan

    @classmethod
    def from_plan(cls, plan: ClusterPlan) -> "AzureClusterArgs":
        return cls(vm_size=plan.offer.instance_type, image=image_reference(plan.image), plan=plan)


def _rule(name: str, priority: int, access: str, protocol: str, source: str, destination: str, port: str) -> network.SecurityRuleArgs:
    return network.SecurityRuleArgs(
        name=name,
        priority=priority,
        direction="Inbound",
        access=access,
        protocol=protocol,
        source_address_prefix=source,
        source_port_range="*",
        destination_address_prefix=destination,
        destination_port_range=port,
    )


class AzureCluster(pulumi.ComponentResource):
    nodes: pulumi.Output[list[dict]]

    def __init__(self, name: str, args: AzureClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cloudtrain:azure:GpuCluster", name, None, opts)
        plan = args.plan
        child = pulumi.ResourceOptions(parent=self)
        tags = plan.tags()
        loc = plan.region

        group = resources.ResourceGroup(f"{name}-rg", location=loc, tags=tags, opts=child)
        rg = group.name
        checkpoints = buckets.azure(name, plan, self, rg)  # $CLOUDTRAIN_CHECKPOINT_DIR's copy off the nodes
        nsg = network.NetworkSecurityGroup(
            f"{name}-nsg",
            resource_group_name=rg,
            location=loc,
            security_rules=[
                _rule("ssh", 100, "Allow", "Tcp", plan.ssh_cidr, "*", "22"),
                _rule("intra-cluster", 110, "Allow", "*", SUBNET_CIDR, SUBNET_CIDR, "*"),
                # Azure's default rules admit the whole VirtualNetwork tag and the load balancer;
                # this makes "nobody else" explicit.
                _rule("deny-other-inbound", 4000, "Deny", "*", "*", "*", "*"),
            ],
            tags=tags,
            opts=child,
        )
        vnet = network.VirtualNetwork(
            f"{name}-vnet",
            resource_group_name=rg,
            location=loc,
            address_space=network.AddressSpaceArgs(address_prefixes=[VNET_CIDR]),
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["subnets"]),
        )
        subnet = network.Subnet(
            f"{name}-subnet",
            resource_group_name=rg,
            virtual_network_name=vnet.name,
            address_prefix=SUBNET_CIDR,
            network_security_group=network.NetworkSecurityGroupArgs(id=nsg.id),
            opts=child,
        )
        # Nodes of one cluster in one datacenter: low latency between them for collectives.
        ppg = (
            compute.ProximityPlacementGroup(
                f"{name}-ppg",
                resource_group_name=rg,
                location=loc,
                proximity_placement_group_type="Standard",
                tags=tags,
                opts=child,
            )
            if plan.nodes > 1
            else None
        )
        # A custom role that allows nothing but deallocation; custom roles are assignable at a
        # resource group at the narrowest (Azure RBAC "Azure custom roles": AssignableScopes),
        # each VM's assignment below is scoped to that VM alone.
        deallocate = authorization.RoleDefinition(
            f"{name}-deallocate",
            role_name=group.name.apply(lambda g: f"cloudtrain self-deallocate ({g})"),  # unique in the tenant
            description=f"{plan.marker()}: a node's watchdog deallocates its own VM",
            permissions=[authorization.PermissionArgs(actions=[DEALLOCATE])],
            assignable_scopes=[group.id],
            scope=group.id,
            opts=child,
        )
        entries = []
        for i in range(plan.nodes):
            node = plan.node_name(i)
            pip = network.PublicIPAddress(
                f"{node}-ip",
                resource_group_name=rg,
                location=loc,
                sku=network.PublicIPAddressSkuArgs(name="Standard"),
                public_ip_allocation_method="Static",
                tags=tags,
                opts=child,
            )
            nic = network.NetworkInterface(
                f"{node}-nic",
                resource_group_name=rg,
                location=loc,
                ip_configurations=[
                    network.NetworkInterfaceIPConfigurationArgs(
                        name="primary",
                        subnet=network.SubnetArgs(id=subnet.id),
                        public_ip_address=network.PublicIPAddressArgs(id=pip.id),
                        private_ip_allocation_method="Dynamic",
                    )
                ],
                tags=tags,
                opts=child,
            )
            user = plan.image.ssh_user
            spot = (
                dict(priority="Spot", eviction_policy="Delete", billing_profile=compute.BillingProfileArgs(max_price=-1))
                if plan.spot
                else dict(priority="Regular")
            )
            vm = compute.VirtualMachine(
                node,
                resource_group_name=rg,
                location=loc,
                hardware_profile=compute.HardwareProfileArgs(vm_size=args.vm_size),
                os_profile=compute.OSProfileArgs(
                    computer_name=node,
                    admin_username=user,
                    # Azure wants custom data base64; it carries the private host key, hence secret.
                    custom_data=pulumi.Output.secret(base64.b64encode(user_data(plan.host_keys[i]).encode()).decode()),
                    linux_configuration=compute.LinuxConfigurationArgs(
                        disable_password_authentication=True,
                        ssh=compute.SshConfigurationArgs(
                            public_keys=[
                                compute.SshPublicKeyArgs(path=f"/home/{user}/.ssh/authorized_keys", key_data=plan.ssh_public_key)
                            ]
                        ),
                    ),
                ),
                storage_profile=compute.StorageProfileArgs(
                    image_reference=args.image,
                    os_disk=compute.OSDiskArgs(
                        create_option="FromImage",
                        disk_size_gb=plan.disk_gb,
                        delete_option="Delete",
                        managed_disk=compute.ManagedDiskParametersArgs(storage_account_type="Premium_LRS"),
                    ),
                ),
                network_profile=compute.NetworkProfileArgs(
                    network_interfaces=[compute.NetworkInterfaceReferenceArgs(id=nic.id, primary=True, delete_option="Delete")]
                ),
                security_profile=security_profile(),
                proximity_placement_group=compute.SubResourceArgs(id=ppg.id) if ppg else None,
                # The identity the watchdog's IMDS token is issued to (autostop: deallocate itself).
                identity=compute.VirtualMachineIdentityArgs(type=compute.ResourceIdentityType.SYSTEM_ASSIGNED),
                tags=tags,
                opts=child,
                **spot,
            )
            authorization.RoleAssignment(
                f"{node}-deallocate",
                scope=vm.id,
                principal_id=vm.identity.apply(lambda ident: ident.principal_id),
                # A just-made identity may not have replicated yet: the type spares ARM the lookup
                # (Azure RBAC "Assign roles using Azure Resource Manager templates": principalType).
                principal_type="ServicePrincipal",
                role_definition_id=deallocate.id,
                opts=child,
            )
            # Tie the entry to the VM so `nodes` resolves only once the machine exists.
            public_ip = pulumi.Output.all(vm.id, pip.ip_address).apply(lambda v: v[1])
            private = nic.ip_configurations.apply(lambda cfgs: cfgs[0].private_ip_address)
            private_ip = pulumi.Output.all(vm.id, private).apply(lambda v: v[1])
            entries.append(node_entry(node, public_ip, private_ip, user, plan.host_keys[i].public))
            buckets.azure_writer(node, checkpoints, vm, self)  # its identity writes checkpoints
        self.nodes = pulumi.Output.all(*entries)
        self.checkpoints = checkpoints.store  # where the nodes put checkpoints (contract.CHECKPOINTS)
        self.register_outputs({NODES: self.nodes, CHECKPOINTS: self.checkpoints})


def deploy(name: str, plan: ClusterPlan) -> AzureCluster:
    return AzureCluster(name, AzureClusterArgs.from_plan(plan))
