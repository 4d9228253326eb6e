"""The three cloud components under Pulumi mocks: what they would ask each cloud to create.

`pulumi.runtime.set_mocks` replaces the engine: every resource registration lands in
`Recorder.new_resource` with its real inputs, every invoke (the AMI lookup) in `call`. Each
scenario runs once (cached) and is then checked from several angles: machine, image, disk,
firewall policy, keys, spot, tags and the `nodes` output. No cloud, no CLI, no network.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import ipaddress
import json
import runpy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from cloudtrain import catalog, keys
from cloudtrain.errors import BadInput
from cloudtrain.machine import Node
from cloudtrain.provisioner import program
from cloudtrain.provisioner import aws as aws_program
from cloudtrain.provisioner import gcp as gcp_program
from cloudtrain.provisioner.contract import CLUSTER_TAG, NODE_KEYS, NODES, HostKey, marker
from cloudtrain.spec import ClusterSpec
from pulumi_mocks import Recorder, run_mocked

REPO = Path(__file__).resolve().parent.parent
SSH_CIDR = "198.51.100.7/32"
CLIENT_KEY = keys.generate("client")[1]
SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's marker for a secret value on the wire

# GPU per cloud for "t4, a100 (or a100-80gb), h100": the smallest size each cloud sells.
GPUS = {
    "aws": ("t4:1", "a100:8", "h100:8"),
    "gcp": ("t4:1", "a100:1", "h100:8"),  # A3 High with fewer than 8 GPUs is spot only
    "azure": ("t4:1", "a100-80gb:1", "h100:1"),
}
SCENARIOS = [
    (cloud, gpu, nodes, spot) for cloud, gpus in GPUS.items() for gpu in gpus for nodes in (1, 3) for spot in (False, True)
]


def _ids(s):
    return f"{s[0]}-{s[1]}-n{s[2]}-{'spot' if s[3] else 'ondemand'}"


@dataclass
class Run:
    spec: ClusterSpec
    choice: catalog.Choice
    host_keys: tuple[HostKey, ...]
    rec: Recorder
    nodes: list[dict[str, Any]]


@functools.cache
def scenario(cloud: str, gpu: str, nodes: int, spot: bool) -> Run:
    name, count = gpu.split(":")
    spec = ClusterSpec(name="ct-test", provider=cloud, gpu=name, gpu_count=int(count), nodes=nodes, spot=spot, ssh_cidr=SSH_CIDR)
    choice = catalog.choose(spec)
    host_keys = tuple(HostKey(*keys.generate(f"host-{i}")) for i in range(nodes))
    rec, value = run_mocked(lambda: program.build(spec, choice, CLIENT_KEY, host_keys).nodes)
    return Run(spec, choice, host_keys, rec, value)


def unsecret(value: Any) -> Any:
    assert isinstance(value, dict) and SECRET_SIG in value, f"expected a Pulumi secret, got {type(value)}"
    return value["value"]


def is_public(source: str) -> bool:
    """Anything but the cluster's own private ranges counts as an outside address."""
    return source in ("*", "Internet", "Any") or not ipaddress.ip_network(source, strict=False).is_private


# --- per-cloud views: (instances, user data of node i, firewall rules) ----------------


def instances(run: Run) -> list[tuple[str, dict[str, Any]]]:
    typ = {
        "aws": "aws:ec2/instance:Instance",
        "gcp": "gcp:compute/instance:Instance",
        "azure": "azure-native:compute:VirtualMachine",
    }[run.spec.provider]
    return run.rec.of(typ)


def user_data(run: Run, inputs: dict[str, Any]) -> str:
    if run.spec.provider == "aws":
        return unsecret(inputs["userData"])
    if run.spec.provider == "gcp":
        # One secret member makes the whole metadata map secret.
        return unsecret(inputs["metadata"])["user-data"]
    # As on GCP, the secret custom data makes the whole osProfile secret.
    return base64.b64decode(unsecret(inputs["osProfile"])["customData"]).decode()


@dataclass(frozen=True)
class Rule:
    protocol: str  # tcp | all
    ports: str  # "22" | "all"
    source: str  # CIDR, or "cluster" for a rule whose source is the cluster itself


def inbound_rules(run: Run) -> list[Rule]:
    """Every inbound allowance, normalized across clouds."""
    rules: list[Rule] = []
    cloud = run.spec.provider
    if cloud == "aws":
        assert not run.rec.of("aws:ec2/securityGroupRule:SecurityGroupRule")
        assert not run.rec.of("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        for _, sg in run.rec.of("aws:ec2/securityGroup:SecurityGroup"):
            for r in sg["ingress"]:
                proto = "all" if r["protocol"] == "-1" else r["protocol"]
                low, high = int(r["fromPort"]), int(r["toPort"])  # numbers arrive as floats
                ports = "all" if proto == "all" else f"{low}" if low == high else f"{low}-{high}"
                for cidr in r.get("cidrBlocks") or []:
                    rules.append(Rule(proto, ports, cidr))
                assert not r.get("ipv6CidrBlocks") and not r.get("prefixListIds")
                if r.get("self"):
                    rules.append(Rule(proto, ports, "cluster"))
    elif cloud == "gcp":
        for _, fw in run.rec.of("gcp:compute/firewall:Firewall"):
            assert fw.get("direction", "INGRESS") == "INGRESS"
            assert not fw.get("denies")
            for allow in fw["allows"]:
                ports = ",".join(allow.get("ports") or []) or "all"
                for cidr in fw.get("sourceRanges") or []:
                    rules.append(Rule(allow["protocol"], ports, cidr))
                if fw.get("sourceTags"):
                    assert fw["sourceTags"] == fw["targetTags"]  # from this cluster's nodes to them
                    rules.append(Rule(allow["protocol"], ports, "cluster"))
    else:
        nsgs = run.rec.of("azure-native:network:NetworkSecurityGroup")
        assert len(nsgs) == 1
        for _, nic in run.rec.of("azure-native:network:NetworkInterface"):
            assert "networkSecurityGroup" not in nic  # the subnet's NSG is the only one
        subnet_cidrs = {s["addressPrefix"] for _, s in run.rec.of("azure-native:network:Subnet")}
        rules_in = [r for r in nsgs[0][1]["securityRules"] if r["direction"] == "Inbound"]
        deny_all = [r for r in rules_in if r["access"] == "Deny" and r["sourceAddressPrefix"] == "*" and r["destinationPortRange"] == "*"]
        assert deny_all, "an explicit deny-all inbound rule overrides Azure's permissive defaults"
        for r in rules_in:
            if r["access"] != "Allow":
                assert r["priority"] >= max(x["priority"] for x in rules_in if x["access"] == "Allow")
                continue
            proto = "all" if r["protocol"] == "*" else r["protocol"].lower()
            ports = "all" if r["destinationPortRange"] == "*" else r["destinationPortRange"]
            source = "cluster" if r["sourceAddressPrefix"] in subnet_cidrs else r["sourceAddressPrefix"]
            rules.append(Rule(proto, ports, source))
    return rules


def ami_call(run: Run) -> dict[str, Any]:
    (args,) = [a for token, a in run.rec.calls if token == "aws:ec2/getAmi:getAmi"]
    return args


# --- the checks ------------------------------------------------------------------------


@pytest.mark.parametrize("sc", SCENARIOS, ids=_ids)
def test_machine_type_and_accelerator(sc):
    run = scenario(*sc)
    offer = run.choice.offer
    vms = instances(run)
    assert len(vms) == run.spec.nodes
    for _, vm in vms:
        if run.spec.provider == "aws":
            assert vm["instanceType"] == offer.instance_type
        elif run.spec.provider == "gcp":
            assert vm["machineType"] == offer.instance_type
            acc = vm.get("guestAccelerators")
            if offer.accelerator:
                assert acc == [{"type": offer.accelerator, "count": offer.count}]
            else:
                assert not acc  # a2/a3/g2 machine types carry their GPUs
            assert vm["zone"] == run.choice.zone
        else:
            assert vm["hardwareProfile"]["vmSize"] == offer.instance_type
            assert vm["location"] == run.choice.region


@pytest.mark.parametrize("sc", SCENARIOS, ids=_ids)
def test_image_and_disk(sc):
    run = scenario(*sc)
    for _, vm in instances(run):
        if run.spec.provider == "aws":
            assert vm["ami"] == "ami-0cloudtrain"
            assert vm["rootBlockDevice"]["volumeSize"] == run.spec.disk_gb
            assert vm["rootBlockDevice"]["volumeType"] == "gp3"
            assert vm["metadataOptions"]["httpTokens"] == "required"
        elif run.spec.provider == "gcp":
            params = vm["bootDisk"]["initializeParams"]
            assert params["image"] == "projects/deeplearning-platform-release/global/images/family/common-cu129-ubuntu-2204-nvidia-580"
            assert params["size"] == run.spec.disk_gb
            assert unsecret(vm["metadata"])["install-nvidia-driver"] == "True"
        else:
            storage = vm["storageProfile"]
            ref = storage["imageReference"]
            assert (ref["publisher"], ref["offer"], ref["sku"]) == ("microsoft-dsvm", "ubuntu-hpc", "2204")
            assert storage["osDisk"]["diskSizeGB"] == run.spec.disk_gb
    if run.spec.provider == "aws":
        (token, args), = [c for c in run.rec.calls if c[0] == "aws:ec2/getAmi:getAmi"]
        assert args["owners"] == ["amazon"] and args["mostRecent"]
        assert {"name": "name", "values": ["Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"]} in args["filters"]
    else:
        assert not run.rec.calls


@pytest.mark.parametrize("sc", SCENARIOS, ids=_ids)
def test_only_ssh_from_ssh_cidr_and_all_within_the_cluster(sc):
    run = scenario(*sc)
    rules = inbound_rules(run)
    outside = [r for r in rules if r.source != "cluster"]
    assert outside == [Rule("tcp", "22", SSH_CIDR)]
    assert not any(is_public(r.source) for r in rules if r.source not in ("cluster", SSH_CIDR))
    assert Rule("all", "all", "cluster") in rules


@pytest.mark.parametrize("sc", SCENARIOS, ids=_ids)
def test_client_key_and_pinned_host_key_are_wired_in(sc):
    run = scenario(*sc)
    for name, vm in instances(run):
        i = int(name.rsplit("-", 1)[1])  # registration order is not rank order
        data = user_data(run, vm)
        assert data.startswith("#cloud-config\n")
        cfg = yaml.safe_load(data)
        assert cfg["ssh_keys"] == {"ed25519_private": run.host_keys[i].private, "ed25519_public": run.host_keys[i].public}
        assert cfg["ssh_deletekeys"] is True and cfg["ssh_genkeytypes"] == []
        assert run.nodes[i]["hostKey"] == run.host_keys[i].public
        assert run.nodes[i]["name"] == name
        if run.spec.provider == "aws":
            (key_name, key), = run.rec.of("aws:ec2/keyPair:KeyPair")
            assert key["publicKey"] == CLIENT_KEY and vm["keyName"] == key_name
        elif run.spec.provider == "gcp":
            metadata = unsecret(vm["metadata"])
            assert metadata["ssh-keys"] == f"cloudtrain:{CLIENT_KEY}"
            assert metadata["block-project-ssh-keys"] == "true"
        else:
            profile = unsecret(vm["osProfile"])
            linux = profile["linuxConfiguration"]
            assert linux["disablePasswordAuthentication"] is True
            assert linux["ssh"]["publicKeys"] == [{"path": "/home/azureuser/.ssh/authorized_keys", "keyData": CLIENT_KEY}]
            assert "adminPassword" not in profile and profile["adminUsername"] == "azureuser"
    # The private host keys never leave as outputs.
    assert "PRIVATE KEY" not in json.dumps(run.nodes)


@pytest.mark.parametrize("sc", SCENARIOS, ids=_ids)
def test_spot_settings(sc):
    run = scenario(*sc)
    for _, vm in instances(run):
        if run.spec.provider == "aws":
            market = vm.get("instanceMarketOptions")
            if run.spec.spot:
                assert market["marketType"] == "spot"
                assert market["spotOptions"] == {"spotInstanceType": "one-time", "instanceInterruptionBehavior": "terminate"}
            else:
                assert market is None
        elif run.spec.provider == "gcp":
            s = vm["scheduling"]
            assert s["onHostMaintenance"] == "TERMINATE"
            assert s["provisioningModel"] == ("SPOT" if run.spec.spot else "STANDARD")
            assert s["preemptible"] is run.spec.spot and s["automaticRestart"] is (not run.spec.spot)
        else:
            if run.spec.spot:
                assert (vm["priority"], vm["evictionPolicy"], vm["billingProfile"]["maxPrice"]) == ("Spot", "Delete", -1)
            else:
                assert vm["priority"] == "Regular" and "evictionPolicy" not in vm


# Resource types that take no tags or labels, and how a sweep finds them instead.
UNTAGGABLE = {
    # The checkpoint bucket's parts (provisioner/buckets.py): each goes with its tagged bucket or role.
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": "a setting of the tagged bucket",
    "aws:s3/bucketPolicy:BucketPolicy": "a setting of the tagged bucket",
    "aws:iam/rolePolicy:RolePolicy": "an inline policy of the tagged role",
    "gcp:storage/bucketIAMMember:BucketIAMMember": "a grant on the labelled bucket",
    "azure-native:storage:BlobContainer": "part of the tagged storage account, in the cluster's resource group",
    "azure-native:authorization:RoleAssignment": "takes no tags; scoped to the VM or the container it grants on",
    "aws:ec2/routeTableAssociation:RouteTableAssociation": "not an EC2 resource: goes with its route table",
    "aws:ec2/tag:Tag": "is itself the tag (on an instance's network interface)",
    "azure-native:network:Subnet": "part of the tagged vnet, in the cluster's resource group",
    "azure-native:authorization:RoleDefinition": "not a resource: its description starts with the marker",
}
# GCP types without labels in the Compute API: their description starts with the marker.
DESCRIBED = {
    "gcp:compute/network:Network",
    "gcp:compute/subnetwork:Subnetwork",
    "gcp:compute/firewall:Firewall",
    "gcp:compute/resourcePolicy:ResourcePolicy",
    "gcp:serviceaccount/account:Account",
}


@pytest.mark.parametrize("sc", SCENARIOS, ids=_ids)
def test_every_resource_carries_the_cluster_tag(sc):
    """Policy: a sweep by `cloudtrain-cluster=<name>` finds every resource the program makes
    (and what the cloud makes for it: AWS volumes and ENIs, GCP boot disks, Azure OS disks)."""
    run = scenario(*sc)
    untagged = []
    for typ, name, inputs in run.rec.resources:
        if typ.startswith("cloudtrain:") or typ in UNTAGGABLE:
            continue
        if typ in DESCRIBED:
            if not str(inputs.get("description", "")).startswith(marker("ct-test")):
                untagged.append((typ, name))
            continue
        bag = inputs.get("labels") if typ.startswith("gcp:") else inputs.get("tags")
        if not bag or bag.get(CLUSTER_TAG) != "ct-test":
            untagged.append((typ, name))
    assert not untagged, f"resources a tag sweep would miss: {untagged}"
    vms = instances(run)
    if run.spec.provider == "aws":
        eni_tags = {t["resourceId"]: t for _, t in run.rec.of("aws:ec2/tag:Tag")}
        for name, vm in vms:
            assert vm["volumeTags"][CLUSTER_TAG] == "ct-test", name
        outputs = [f"eni-{n:08x}" for n, (typ, _, _) in enumerate(run.rec.resources, 1) if typ == "aws:ec2/instance:Instance"]
        assert sorted(eni_tags) == sorted(outputs)
        assert all((t["key"], t["value"]) == (CLUSTER_TAG, "ct-test") for t in eni_tags.values())
    elif run.spec.provider == "gcp":
        for name, vm in vms:
            assert vm["bootDisk"]["initializeParams"]["labels"][CLUSTER_TAG] == "ct-test", name
            assert vm["bootDisk"]["autoDelete"] is True
    else:
        (_, group), = run.rec.of("azure-native:resources:ResourceGroup")
        assert group["tags"][CLUSTER_TAG] == "ct-test"
        for name, vm in vms:
            # The OS disk is created with the VM and takes its tags then; it goes with the VM.
            assert vm["tags"][CLUSTER_TAG] == "ct-test"
            assert vm["storageProfile"]["osDisk"]["deleteOption"] == "Delete"


@pytest.mark.parametrize("sc", SCENARIOS, ids=_ids)
def test_multi_node_clusters_are_placed_together(sc):
    run = scenario(*sc)
    vms = instances(run)
    cloud, many = run.spec.provider, run.spec.nodes > 1
    if cloud == "aws":
        (subnet_name, subnet), = run.rec.of("aws:ec2/subnet:Subnet")
        assert {vm["subnetId"] for _, vm in vms} == {f"{subnet_name}-id"}  # one subnet: one zone
        assert subnet["availabilityZone"] == (run.choice.zone or f"{run.choice.region}a")
        groups = run.rec.of("aws:ec2/placementGroup:PlacementGroup")
        assert len(groups) == (1 if many else 0)
    elif cloud == "gcp":
        assert {vm["zone"] for _, vm in vms} == {run.choice.zone}
        policies = run.rec.of("gcp:compute/resourcePolicy:ResourcePolicy")
        if many and gcp_program.compact_placement(run.choice.offer.instance_type):
            (pname, policy), = policies
            assert policy["groupPlacementPolicy"] == {"collocation": "COLLOCATED", "vmCount": run.spec.nodes}
            assert policy["region"] == run.choice.region
            assert {vm["resourcePolicies"] for _, vm in vms} == {f"https://www.googleapis.com/compute/v1/projects/p/regions/r/resourcePolicies/{pname}"}
        else:
            assert not policies and not any(vm.get("resourcePolicies") for _, vm in vms)
    else:
        groups = run.rec.of("azure-native:compute:ProximityPlacementGroup")
        if many:
            (gname, group), = groups
            assert group["proximityPlacementGroupType"] == "Standard" and group["location"] == run.choice.region
            assert {vm["proximityPlacementGroup"]["id"] for _, vm in vms} == {f"{gname}-id"}
        else:
            assert not groups and not any(vm.get("proximityPlacementGroup") for _, vm in vms)


# Pulumi auto-names a resource `<logical name>-<7 random hex>`.
AUTONAME_SUFFIX = 8


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_the_longest_cluster_name_fits_every_name_the_cloud_derives(cloud):
    name = "n" + "a" * 38 + "z"  # 40 characters: spec.NAME_MAX
    spec = ClusterSpec(name=name, provider=cloud, gpu="a100" if cloud == "gcp" else "t4", nodes=3, ssh_cidr=SSH_CIDR)
    choice = catalog.choose(spec)
    hk = tuple(HostKey(*keys.generate()) for _ in range(3))
    rec, _ = run_mocked(lambda: program.build(spec, choice, CLIENT_KEY, hk).nodes)
    for typ, logical, inputs in rec.resources:
        if typ.startswith("cloudtrain:"):
            continue
        if cloud == "gcp":  # RFC 1035 labels, 63 at most: resource names, label values, network tags
            assert len(logical) + AUTONAME_SUFFIX <= 63, (typ, logical)
            assert all(len(v) <= 63 for v in (inputs.get("labels") or {}).values())
            assert all(len(t) <= 63 for t in inputs.get("tags") or [] if isinstance(t, str))
        else:  # VM and computer names 64 (Linux), everything else here 80 or more
            limit = 64 if typ == "azure-native:compute:VirtualMachine" else 80
            assert len(logical) + AUTONAME_SUFFIX <= limit, (typ, logical)
            if typ == "azure-native:compute:VirtualMachine":
                assert len(unsecret(inputs["osProfile"])["computerName"]) <= 64


def test_compact_placement_follows_googles_machine_series_table():
    assert all(gcp_program.compact_placement(t) for t in ("a2-highgpu-1g", "a2-ultragpu-8g", "a3-highgpu-8g", "g2-standard-8"))
    assert not any(gcp_program.compact_placement(t) for t in ("n1-standard-8", "n1-highmem-16"))


@pytest.mark.parametrize("sc", [s for s in SCENARIOS if s[0] == "gcp"], ids=_ids)
def test_gcp_turns_os_login_off_so_metadata_keys_work(sc):
    for _, vm in instances(scenario(*sc)):
        assert unsecret(vm["metadata"])["enable-oslogin"] == "FALSE"


@pytest.mark.parametrize("sc", [s for s in SCENARIOS if s[0] == "azure"], ids=_ids)
def test_azure_secure_boot_is_off_so_driver_modules_load(sc):
    for _, vm in instances(scenario(*sc)):
        assert vm["securityProfile"] == {"securityType": "TrustedLaunch", "uefiSettings": {"secureBootEnabled": False, "vTpmEnabled": True}}


def _aws_build(offerings=None, zone=None):
    """Two t4 nodes on AWS, the zone given or left open (a stack without `cloudtrain:zone`, in a
    region the catalog's data does not place), whatever zone the catalog itself would pick."""
    spec = ClusterSpec(name="ct-zone", provider="aws", gpu="t4", nodes=2, ssh_cidr=SSH_CIDR)
    choice = dataclasses.replace(catalog.choose(spec), zone=zone)
    hk = tuple(HostKey(*keys.generate()) for _ in range(2))
    return run_mocked(lambda: program.build(spec, choice, CLIENT_KEY, hk).nodes, offerings=offerings)[0]


def test_aws_without_a_zone_picks_one_that_offers_the_type():
    rec = _aws_build({"g4dn.xlarge": ["us-east-1f", "us-east-1c"]})
    (subnet,) = [s for _, s in rec.of("aws:ec2/subnet:Subnet")]
    assert subnet["availabilityZone"] == "us-east-1c"  # offered, and the same on every rerun
    (args,) = [a for t, a in rec.calls if t == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings"]
    assert args["locationType"] == "availability-zone" and args["region"] == "us-east-1"
    assert args["filters"] == [{"name": "instance-type", "values": ["g4dn.xlarge"]}]


def test_aws_with_a_zone_asks_nothing_and_uses_it():
    rec = _aws_build(zone="us-east-1d")
    (subnet,) = [s for _, s in rec.of("aws:ec2/subnet:Subnet")]
    assert subnet["availabilityZone"] == "us-east-1d"
    assert not [t for t, _ in rec.calls if "Offerings" in t]


def test_aws_type_offered_nowhere_in_the_region_is_refused():
    with pytest.raises(BadInput) as e:
        _aws_build({"g4dn.xlarge": []})
    assert e.value.message == "g4dn.xlarge is offered in no zone of us-east-1"


@pytest.mark.parametrize("sc", SCENARIOS, ids=_ids)
def test_placement_group_only_for_multi_node_aws(sc):
    run = scenario(*sc)
    groups = run.rec.of("aws:ec2/placementGroup:PlacementGroup")
    if run.spec.provider == "aws" and run.spec.nodes > 1:
        (pg_name, pg), = groups
        assert pg["strategy"] == "cluster"
        assert all(vm["placementGroup"] == pg_name for _, vm in instances(run))
    else:
        assert not groups


@pytest.mark.parametrize("sc", SCENARIOS, ids=_ids)
def test_nodes_output_matches_design_schema(sc):
    run = scenario(*sc)
    assert len(run.nodes) == run.spec.nodes
    for i, entry in enumerate(run.nodes):
        assert tuple(sorted(entry)) == tuple(sorted(NODE_KEYS))
        assert entry["name"] == f"ct-test-{i}"
        assert entry["sshPort"] == 22
        ipaddress.ip_address(entry["publicIp"])
        assert ipaddress.ip_address(entry["privateIp"]).is_private
        node = Node.from_output(entry)
        assert node.host == entry["publicIp"] and node.host_key.startswith("ssh-ed25519 ")
    assert len({e["privateIp"] for e in run.nodes}) == run.spec.nodes


def test_nodes_schema_is_identical_across_clouds():
    def shape(run):
        return [{k: type(v).__name__ for k, v in e.items()} for e in run.nodes]

    shapes = {cloud: shape(scenario(cloud, GPUS[cloud][0], 3, False)) for cloud in GPUS}
    assert shapes["aws"] == shapes["gcp"] == shapes["azure"]


def test_ubuntu_image_choices():
    for cloud, check in {
        "aws": lambda run, vm: {"name": "name", "values": ["ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*"]} in ami_call(run)["filters"]
        and ami_call(run)["owners"] == ["099720109477"],
        "gcp": lambda run, vm: vm["bootDisk"]["initializeParams"]["image"] == "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"
        and "install-nvidia-driver" not in unsecret(vm["metadata"]),
        "azure": lambda run, vm: vm["storageProfile"]["imageReference"]["sku"] == "22_04-lts-gen2",
    }.items():
        spec = ClusterSpec(name="ct-ub", provider=cloud, gpu="t4", image="ubuntu", ssh_cidr=SSH_CIDR)
        choice = catalog.choose(spec)
        hk = (HostKey(*keys.generate()),)
        rec, _ = run_mocked(lambda: program.build(spec, choice, CLIENT_KEY, hk).nodes)
        run = Run(spec, choice, hk, rec, [])
        (_, vm), = instances(run)
        assert check(run, vm), cloud


# --- the Pulumi.yaml project: `pulumi up -s <stack>` on this repo ----------------------


def test_pulumi_yaml_points_at_the_program():
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    assert project["name"] == "cloudtrain"
    assert project["runtime"]["name"] == "python"
    assert project["runtime"]["options"]["virtualenv"] == ".venv"
    assert project["stackConfigDir"] == "stacks"
    assert (REPO / project["main"] / "__main__.py").is_file()


STACK_FILES = sorted((REPO / "stacks").glob("Pulumi.*.yaml"))


def test_example_stacks_exist():
    assert {p.name for p in STACK_FILES} >= {"Pulumi.aws-t4.yaml", "Pulumi.gcp-t4.yaml", "Pulumi.azure-t4.yaml"}


@pytest.mark.parametrize("path", STACK_FILES, ids=lambda p: p.name)
def test_stack_file_runs_the_program_under_mocks(path, tmp_path, monkeypatch):
    config = {k: str(v) for k, v in yaml.safe_load(path.read_text())["config"].items()}
    monkeypatch.setenv("CLOUDTRAIN_HOME", str(tmp_path))
    exported: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "export", lambda k, v: exported.__setitem__(k, v))

    def build():
        pulumi.runtime.set_all_config(config)
        runpy.run_path(str(REPO / "infra" / "__main__.py"), run_name="__main__")
        return exported[NODES]

    rec, nodes = run_mocked(build)
    spec = ClusterSpec(name=config["cloudtrain:clusterName"], provider=config["cloudtrain:provider"], gpu=config["cloudtrain:gpu"])
    run = Run(spec, catalog.choose(spec), (), rec, nodes)
    (_, vm), = instances(run)
    assert [e["name"] for e in nodes] == [f"{spec.name}-0"]
    assert Rule("tcp", "22", config["cloudtrain:sshCidr"]) in inbound_rules(run)
    # Without cloudtrain's own store the host keys are generated once and kept under the home (0600).
    kept = list((tmp_path / "pulumi" / "host-keys").glob("*/*.json"))
    assert len(kept) == 1 and kept[0].stat().st_mode & 0o777 == 0o600
    assert json.loads(kept[0].read_text())["public"] == nodes[0]["hostKey"]
    assert yaml.safe_load(user_data(run, vm))["ssh_keys"]["ed25519_private"] == json.loads(kept[0].read_text())["private"]


def test_bad_stack_config_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    path = REPO / "stacks" / "Pulumi.aws-t4.yaml"
    config = {k: str(v) for k, v in yaml.safe_load(path.read_text())["config"].items()}
    config["cloudtrain:gpu"] = "k80"
    monkeypatch.setenv("CLOUDTRAIN_HOME", str(tmp_path))

    def build():
        pulumi.runtime.set_all_config(config)
        runpy.run_path(str(REPO / "infra" / "__main__.py"), run_name="__main__")

    with pytest.raises(pulumi.RunError) as e:
        run_mocked(build)
    assert "unknown GPU 'k80'" in str(e.value) and "t4" in str(e.value)
    assert not (tmp_path / "pulumi").exists()  # refused before any host key was made
