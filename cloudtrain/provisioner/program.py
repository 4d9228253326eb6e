"""The Pulumi program: stack config -> ClusterSpec -> one cloud component -> the `nodes` and
`checkpoints` outputs.

The same function runs inline from `cloudtrain up` (Automation API, host keys handed in) and
from `pulumi up -s gcp-t4` on this repository (through infra/__main__.py, host keys kept under
the cloudtrain home). `stack_config` writes exactly the keys `spec_from_config` reads, so the
two paths cannot drift apart.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pulumi

from cloudtrain import catalog, state
from cloudtrain.catalog import Choice
from cloudtrain.errors import BadInput
from cloudtrain.provisioner import hostkeys
from cloudtrain.provisioner.contract import CHECKPOINTS, NODES, ClusterPlan, HostKey
from cloudtrain.spec import ClusterSpec, check_cidr, parse_gpu

NAMESPACE = "cloudtrain"
# One module per cloud, imported only when used so an AWS run never loads the Azure SDK.
_CLOUDS = {
    "aws": "cloudtrain.provisioner.aws",
    "gcp": "cloudtrain.provisioner.gcp",
    "azure": "cloudtrain.provisioner.azure",
}


def cloud_module(provider: str) -> ModuleType:
    if provider not in _CLOUDS:
        raise BadInput(f"unknown cloud {provider!r} in cloudtrain:provider", f"choose one of {', '.join(_CLOUDS)}")
    return importlib.import_module(_CLOUDS[provider])


def stack_config(spec: ClusterSpec, choice: Choice, ssh_public_key: str) -> dict[str, str]:
    """Every config value of the stack, `namespace:key` -> string (DESIGN.md's keys)."""
    if spec.ssh_cidr is None:
        raise BadInput("the stack needs an SSH address range", "pass --ssh-cidr")
    cfg = {
        f"{NAMESPACE}:provider": spec.provider,
        f"{NAMESPACE}:gpu": choice.offer.gpu,
        f"{NAMESPACE}:gpuCount": str(choice.offer.count),
        f"{NAMESPACE}:nodes": str(spec.nodes),
        f"{NAMESPACE}:spot": "true" if spec.spot else "false",
        f"{NAMESPACE}:diskGb": str(spec.disk_gb),
        f"{NAMESPACE}:image": spec.image,
        f"{NAMESPACE}:sshCidr": spec.ssh_cidr,
        f"{NAMESPACE}:sshPublicKey": ssh_public_key,
        f"{NAMESPACE}:clusterName": spec.name,
    }
    cfg.update(cloud_module(spec.provider).placement_config(choice))
    return cfg


def spec_from_config() -> tuple[ClusterSpec, str]:
    """The spec and the SSH public key the current stack's config describes."""
    cfg = pulumi.Config(NAMESPACE)
    provider = cfg.require("provider")
    gpu, count = parse_gpu(cfg.require("gpu"))
    region, zone = cloud_module(provider).placement_from_config()
    spec = ClusterSpec(
        name=cfg.get("clusterName") or pulumi.get_stack(),
        provider=provider,
        gpu=gpu,
        gpu_count=cfg.get_int("gpuCount") or count,
        nodes=cfg.get_int("nodes") or 1,
        spot=cfg.get_bool("spot") or False,
        disk_gb=cfg.get_int("diskGb") or 100,
        image=cfg.get("image") or "dl",
        region=region,
        zone=zone,
        ssh_cidr=check_cidr(cfg.require("sshCidr")),
    )
    return spec, cfg.require("sshPublicKey").strip()


def build(spec: ClusterSpec, choice: Choice, ssh_public_key: str, host_keys: tuple[HostKey, ...]) -> pulumi.ComponentResource:
    """Create the cloud's component for an already validated spec."""
    if len(host_keys) != spec.nodes:
        raise BadInput(f"{len(host_keys)} host keys for {spec.nodes} nodes", "this is a bug in cloudtrain; please report it")
    if not ssh_public_key.startswith(("ssh-ed25519 ", "ssh-rsa ", "ecdsa-sha2-")):
        raise BadInput("cloudtrain:sshPublicKey is not an OpenSSH public key", "set it to the contents of a .pub file")
    plan = ClusterPlan(
        cluster_name=spec.name,
        nodes=spec.nodes,
        offer=choice.offer,
        image=choice.image,
        region=choice.region,
        zone=choice.zone,
        spot=spec.spot,
        disk_gb=spec.disk_gb,
        ssh_cidr=spec.ssh_cidr or "",
        ssh_public_key=ssh_public_key,
        host_keys=host_keys,
    )
    return cloud_module(spec.provider).deploy(spec.name, plan)


def node_names(spec: ClusterSpec) -> list[str]:
    return [f"{spec.name}-{i}" for i in range(spec.nodes)]


def run(host_keys: tuple[HostKey, ...] | None = None) -> pulumi.ComponentResource:
    """The program body. Without host keys (plain `pulumi up`) they are kept under the home."""
    spec, ssh_public_key = spec_from_config()
    choice = catalog.choose(spec)
    if host_keys is None:
        folder = state.home() / "pulumi" / "host-keys" / f"{pulumi.get_project()}-{pulumi.get_stack()}"
        host_keys = hostkeys.load_or_create(folder, node_names(spec))
    component = build(spec, choice, ssh_public_key, host_keys)
    pulumi.export(NODES, component.nodes)
    pulumi.export(CHECKPOINTS, component.checkpoints)  # type: ignore[attr-defined]
    return component
