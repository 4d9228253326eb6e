"""`launch --recover` on the clouds: which spot nodes are gone, and new ones in their place.

A node is lost when its cloud says its VM is gone (a terminated spot instance, a deleted GCP
spot VM, an evicted Azure VM: the power_<cloud>.py modules read those states), or when the
node's watchdog left a preemption notice (`preempted.json`, read by recovery.py). A VM the node's own watchdog shut down is not lost (autostop is not a
preemption).

A replacement goes through the cluster's Pulumi stack, the one `up` made: a refresh first, so
the VM the cloud deleted leaves the state, then an update with the same config at the same
placement, which creates that VM again (same network, bucket and surviving nodes). The lost
node gets a new first-boot host key: the old one was readable in its VM's user data. Where the
same zone has no capacity, the cloud issue's failover order (failover.py) moves the whole
cluster to the next placement (every node is then new: the nodes share a zone), unless the
user pinned the zone (--zone) or the region (--region) at `up`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any, Protocol

from cloudtrain import catalog
from cloudtrain.catalog import Choice
from cloudtrain.errors import ProvisionError
from cloudtrain.machine import Cluster, Node
from cloudtrain.provisioner import failover, hostkeys, program
from cloudtrain.provisioner.contract import NODES
from cloudtrain.provisioner.preflight import pulumi_cli
from cloudtrain.state import ClusterDir, ClusterRecord

if TYPE_CHECKING:
    from cloudtrain.provisioner.cloud import CloudProvisioner

# How long a VM the notice named may take to be gone in the cloud's account before the stack
# is refreshed (a refresh while it still runs would keep it in the state, and `up` would not
# replace it). AWS gives two minutes' notice, GCP and Azure thirty seconds.
GONE_WAIT_S, GONE_POLL_S = 300.0, 10.0


class ReplacingStack(Protocol):
    """What a replacement asks of the cluster's stack (ClusterStack's shape)."""

    def refresh(self) -> None: ...

    def up(self, config: dict[str, str]) -> dict[str, Any]: ...


def gone(prov: "CloudProvisioner", record: ClusterRecord) -> list[int] | None:
    """The nodes the cloud says are gone; None when it cannot be asked (no credentials, no network)."""
    if prov.power is None:
        return None
    return prov._power().gone(record)


def lost(prov: "CloudProvisioner", record: ClusterRecord, marked: list[int]) -> list[int]:
    """Gone in the cloud's account, or named by a preemption notice (about to be gone: the
    replacement waits for the cloud to say so, `_wait_gone`)."""
    return sorted(set(gone(prov, record) or []) | set(marked))


def _absent(prov: "CloudProvisioner", record: ClusterRecord) -> list[int] | None:
    """The nodes whose VM no longer exists (what a refresh drops): `gone` where a gone VM is
    deleted at once, the power module's `absent` where it lingers stopped first (GCP)."""
    if prov.power is None:
        return None
    power = prov._power()
    return getattr(power, "absent", power.gone)(record)


def _wait_gone(prov: "CloudProvisioner", record: ClusterRecord, indexes: list[int]) -> None:
    deadline = time.monotonic() + GONE_WAIT_S
    while True:
        said = _absent(prov, record)
        if said is None or set(indexes) <= set(said) or time.monotonic() > deadline:
            return  # unknown, or gone, or past the bound: the refresh and `up` say the rest
        time.sleep(GONE_POLL_S)


def _choices(record: ClusterRecord) -> list[Choice]:
    """The recorded placement first, then failover's order within what `up` was pinned to."""
    spec = record.spec
    pinned = record.provider_state.get("pinned", "--region")  # a cluster from before: stay in its region
    here = catalog.choose(spec)
    if pinned == "--zone":
        return [here]
    wider = dataclasses.replace(spec, zone=None, region=spec.region if pinned == "--region" else None)
    others = [c for c in catalog.candidates(wider) if (c.region, c.zone) != (here.region, here.zone)]
    return [here, *others]


def replace_nodes(prov: "CloudProvisioner", cdir: ClusterDir, record: ClusterRecord, lost_nodes: list[int]) -> list[str]:
    """New VMs for the lost nodes through the cluster's stack; `record.cluster` updated (saved).
    The new nodes are pinned to their first-boot host keys, as after `up` (rotated next)."""
    assert record.cluster is not None
    if not record.provider_state.get("stack"):
        raise ProvisionError(f"cluster {cdir.name} has no Pulumi stack to replace a node through", f"`cloudtrain down --cluster {cdir.name}` and launch again")
    spec, old = record.spec, record.cluster.nodes
    command = pulumi_cli.require()
    _wait_gone(prov, record, lost_nodes)
    folder = cdir.provider_dir / "host-keys"
    for i in lost_nodes:  # a fresh first-boot key for each new VM
        (folder / f"{old[i].name}.json").unlink(missing_ok=True)
    host_keys = hostkeys.load_or_create(folder, program.node_names(spec))
    stack: ReplacingStack = prov.stack_factory(cdir.name, cdir.provider_dir, lambda: program.run(host_keys), command, prov.on_output)  # type: ignore[assignment]
    prov.say(f"refreshing cluster {cdir.name}'s stack, so the lost VM(s) leave its state")
    stack.refresh()

    def up(choice: Choice, extra: dict[str, str]) -> dict[str, Any]:
        placed = dataclasses.replace(spec, region=choice.region, zone=choice.zone)
        prov.say(f"creating a new VM for {', '.join(old[i].name for i in lost_nodes)} in {failover.placement(choice)}")
        return stack.up(program.stack_config(placed, choice, cdir.client_public_key()) | extra)

    pinned = record.provider_state.get("pinned", "--region")
    choice, outputs = failover.walk(
        _choices(record), lambda c: prov.preflight(spec, c), up, lambda: None, prov.signals, prov.say, pinned=pinned
    )
    moved = (choice.region, choice.zone) != (spec.region, spec.zone)
    fresh = range(len(old)) if moved else lost_nodes
    made = [Node.from_output(entry) for entry in outputs[NODES]]
    nodes = tuple(made[i] if i in fresh else old[i] for i in range(len(old)))
    record.spec = dataclasses.replace(spec, region=choice.region, zone=choice.zone)
    record.cluster = Cluster(name=record.cluster.name, nodes=nodes, identity_file=record.cluster.identity_file)
    remember = getattr(prov._power(), "remember", None) if prov.power else None
    if remember is not None:  # the new VMs' ids / names, as `create` records them
        remember(record)
    cdir.save(record)
    lines = [f"{nodes[i].name}: replaced by a new VM at {nodes[i].host} in {failover.placement(choice)}" for i in fresh]
    if moved:
        lines.insert(0, f"{failover.placement(choice)} took the cluster ({spec.zone or spec.region} had no capacity): every node is new")
    return lines
