"""The cloud provisioners: catalog -> (pre-flight -> Pulumi stack) per placement -> Cluster.

One base class holds the flow; each cloud adds only data: its name (which names its pre-flight
module, preflight/<name>.py) and its error codes (cloud_errors.py) for failover. The Pulumi
program, the stack wrapper and the catalog are shared, and which component runs is the stack's
`cloudtrain:provider` config, looked up by program.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, ClassVar

import pulumi.automation as auto

from cloudtrain import catalog, interrupts, keys
from cloudtrain.catalog import Choice
from cloudtrain.machine import Cluster, Node
from cloudtrain.provisioner import cloud_errors, failover, hostkeys, leftovers, program
from cloudtrain.provisioner import replace as replace_vms
from cloudtrain.provisioner.base import Provisioner
from cloudtrain.provisioner.contract import CHECKPOINTS, NODES, HostKey
from cloudtrain.provisioner.myip import public_cidr
from cloudtrain.provisioner.preflight import pulumi_cli
from cloudtrain.provisioner.stack import ClusterStack
from cloudtrain.spec import ClusterSpec
from cloudtrain.state import ClusterDir, ClusterRecord


def _to_stderr(line: str) -> None:
    sys.stderr.write(line if line.endswith("\n") else line + "\n")
    sys.stderr.flush()


def _say(text: str) -> None:
    interrupts.write(f"cloudtrain: {text}", sys.stderr)


# (cluster name, provider folder, inline program, Pulumi CLI, progress sink) -> the cluster's stack
StackFactory = Callable[[str, Path, Callable[[], None], Any, Callable[[str], None] | None], failover.Stack]


def _cluster_stack(name: str, provider_dir: Path, prog: Callable[[], None], command: Any, on_output: Callable[[str], None] | None) -> failover.Stack:
    return ClusterStack.of_cluster(name, provider_dir, program=prog, command=command, on_output=on_output)


class CloudProvisioner(Provisioner):
    needs_gpu: ClassVar[bool] = True
    bills: ClassVar[bool] = True
    supports_preview: ClassVar[bool] = True
    signals: ClassVar[failover.Signals]  # how this cloud says "no capacity here" / "over quota"
    rotates_host_keys: ClassVar[bool] = True  # the first-boot key is in user data / metadata
    replaces_nodes: ClassVar[bool] = True  # through the cluster's stack (replace.py)
    # The watchdog (autostop.py) runs as a systemd unit and stops the VM itself, by the method
    # `node_stop` names in bootstrap/node/selfstop.py; 60 min idle by default where it can stop.
    # `can_stop` only where `observed_stop`/`start` can see and start a stopped VM again: else
    # `down` could not bring a stopped cluster's outputs home. Each cloud below declares it.
    can_stop: ClassVar[bool] = False
    default_autostop_s: ClassVar[int | None] = None
    watchdog_systemd: ClassVar[bool] = True
    # The module that sees and starts this cloud's stopped VMs (provisioner/power_<cloud>.py),
    # imported only when used, so its SDK loads only for that cloud's clusters.
    power: ClassVar[str | None] = None
    node_stop: ClassVar[str] = "shutdown"

    def watchdog_stop_command(self, cdir: ClusterDir, record: ClusterRecord, index: int) -> list[str]:
        return ["/usr/bin/python3", "{watchdog}/selfstop.py", self.node_stop, "{watchdog}"]

    def __init__(
        self,
        on_output: Callable[[str], None] | None = _to_stderr,
        say: Callable[[str], None] = _say,
        stack_factory: StackFactory = _cluster_stack,
    ) -> None:
        self.on_output = on_output  # Pulumi's progress lines; `up` takes minutes
        self.say = say  # failover's lines: which placement failed, why, what comes next
        self.stack_factory = stack_factory  # tests inject a double shaped like ClusterStack

    # --- pure: catalog only -----------------------------------------------------------

    def check(self, spec: ClusterSpec) -> None:
        catalog.choose(spec)

    def describe(self, spec: ClusterSpec) -> str:
        c = catalog.choose(spec)
        o = c.offer
        machine = f"{o.instance_type} + {o.count} x {o.accelerator}" if o.accelerator else o.instance_type
        where = f"{c.region}" + (f" ({c.zone})" if c.zone else "")
        lines = [
            f"{self.name}: {spec.nodes} x {machine} ({o.count} x {o.gpu}, {o.vcpus} vCPU, {o.ram_gb:g} GB RAM) in {where}",
            f"  image {spec.image} ({c.image.ref}), {spec.disk_gb} GB disk per node, SSH open to {spec.ssh_cidr or 'your public address /32'} only",
        ]
        if c.hourly is None:
            lines.append("  price: unknown for this size; see the cloud's price list")
        else:
            total = c.hourly * spec.nodes
            figure = f"{spec.nodes} x ${c.hourly:.3f}/h = ${total:.2f}/h"
            caveat = "" if o.verified == "yes" else f" ({o.verified if o.verified == 'derived' else 'unverified'} figure, {o.date})"
            if spec.spot:
                lines.append(f"  price: spot, varies with the market; on demand it would be {figure}{caveat}")
            else:
                lines.append(f"  price: {figure} on demand{caveat}")
        return "\n".join(lines)

    def hourly_price(self, spec: ClusterSpec) -> float | None:
        per_node = catalog.choose(spec).hourly
        return None if per_node is None else per_node * spec.nodes

    # --- pre-flight: per cloud ----------------------------------------------------------

    def preflight(self, spec: ClusterSpec, choice: Choice) -> tuple[Choice, dict[str, str]]:
        """Cloud checks at one placement before any resource there: the (possibly refined)
        choice and extra stack config. Raises NotOffered (failover moves on), QuotaExceeded or
        PreflightError (stop). The module is imported here so one cloud never loads another's SDK."""
        module = importlib.import_module(f"cloudtrain.provisioner.preflight.{self.name}")
        return module.check(spec, choice)

    # --- the flow -----------------------------------------------------------------------

    def _prepare(self, spec: ClusterSpec) -> tuple[ClusterSpec, Choice, dict[str, str], auto.PulumiCommand]:
        """Catalog first (bad input, exit 2, no tool or network needed), then the Pulumi CLI,
        then the cloud's own checks, then the caller's address for --ssh-cidr."""
        choice = catalog.choose(spec)
        command = pulumi_cli.require()
        choice, extra = self.preflight(spec, choice)
        spec = replace(spec, ssh_cidr=spec.ssh_cidr or public_cidr(), region=choice.region, zone=choice.zone)
        return spec, choice, extra, command

    def preview(self, spec: ClusterSpec, cdir: ClusterDir) -> str:
        spec, choice, extra, command = self._prepare(spec)
        # Throwaway keys: preview writes nothing to the cluster's folder.
        client = keys.public_line(cdir.identity_file) if cdir.identity_file.exists() else keys.generate("preview")[1]
        host_keys = tuple(HostKey(*keys.generate()) for _ in range(spec.nodes))
        config = program.stack_config(spec, choice, client) | extra
        with tempfile.TemporaryDirectory(prefix="cloudtrain-preview-") as tmp:
            stack = ClusterStack(cdir.name, Path(tmp), program=lambda: program.run(host_keys), command=command)
            return stack.preview(config)

    def create(self, spec: ClusterSpec, cdir: ClusterDir, record: ClusterRecord) -> Cluster:
        """Walk the catalog's placements (failover.py): pre-flight, then `pulumi up`, at each
        until one has capacity; every failed attempt is destroyed before the next starts."""
        choices = catalog.candidates(spec)  # bad input first: exit 2, no tool or network needed
        command = pulumi_cli.require()
        host_keys = hostkeys.load_or_create(cdir.provider_dir / "host-keys", program.node_names(spec))
        stack = self.stack_factory(cdir.name, cdir.provider_dir, lambda: program.run(host_keys), command, self.on_output)
        cidr: list[str] = [spec.ssh_cidr] if spec.ssh_cidr else []

        def up(choice: Choice, extra: dict[str, str]) -> dict[str, Any]:
            if not cidr:  # asked once, and only once a placement passed its pre-flight
                cidr.append(public_cidr())
            record.spec = replace(spec, ssh_cidr=cidr[0], region=choice.region, zone=choice.zone)
            config = program.stack_config(record.spec, choice, cdir.client_public_key()) | extra
            # Remember the stack before creating anything, so a crash mid-up never forgets a VM.
            record.provider_state = stack.state()
            cdir.save(record)
            return stack.up(config)

        pinned = "--zone" if spec.zone else "--region" if spec.region else None
        choice, outputs = failover.walk(
            choices, lambda c: self.preflight(spec, c), up, stack.destroy, self.signals, self.say, pinned=pinned
        )
        record.provider_state["pinned"] = pinned  # how far `launch --recover` may move it (replace.py)
        nodes = tuple(Node.from_output(entry) for entry in outputs[NODES])
        record.provider_state[CHECKPOINTS] = outputs.get(CHECKPOINTS)  # the nodes' bucket (checkpoint_store)
        cluster = Cluster(name=cdir.name, nodes=nodes, identity_file=cdir.identity_file)
        remember = getattr(self._power(), "remember", None) if self.power else None
        if remember is not None:  # the VMs' ids / names, so a same-named cluster is never mistaken for this one
            made = dataclasses.replace(record, cluster=cluster)
            remember(made)
            record.provider_state = made.provider_state  # saved by the caller
        return cluster

    def checkpoint_store(self, record: ClusterRecord) -> dict | None:
        return record.provider_state.get(CHECKPOINTS)

    def _power(self) -> Any:
        return importlib.import_module(f"cloudtrain.provisioner.{self.power}")

    def observed_stop(self, cdir: ClusterDir, record: ClusterRecord) -> dict | None:
        return self._power().observed_stop(record) if self.power else super().observed_stop(cdir, record)

    def start(self, cdir: ClusterDir, record: ClusterRecord) -> list[str]:
        return self._power().start(record) if self.power else super().start(cdir, record)

    def lost_nodes(self, cdir: ClusterDir, record: ClusterRecord, marked: list[int] | None = None) -> list[int]:
        return replace_vms.lost(self, record, marked or [])

    def replace_nodes(self, cdir: ClusterDir, record: ClusterRecord, lost: list[int]) -> list[str]:
        return replace_vms.replace_nodes(self, cdir, record, lost)

    def destroy(self, cdir: ClusterDir, record: ClusterRecord) -> None:
        if not record.provider_state.get("stack"):
            return  # create never got as far as a stack: nothing to remove
        stack = ClusterStack.from_state(record.provider_state, command=pulumi_cli.require(), on_output=self.on_output)
        stack.destroy()
        self._sweep(stack, self.name, cdir.name, record.spec.region)

    def recognizes(self, cdir: ClusterDir) -> bool:
        return (cdir.provider_dir / "pulumi").is_dir() or (cdir.provider_dir / "host-keys").is_dir()

    def destroy_found(self, cdir: ClusterDir) -> None:
        # The record is gone, not the stack: it is named after the cluster. Every cloud's stack
        # is destroyed the same way; the stack's own settings say which cloud and region.
        stack = ClusterStack.of_cluster(cdir.name, cdir.provider_dir, command=pulumi_cli.require(), on_output=self.on_output)
        provider, region = stack.placement()
        stack.destroy()
        if provider is not None:
            self._sweep(stack, provider, cdir.name, region)

    def _sweep(self, stack: ClusterStack, provider: str, cluster: str, region: str | None) -> None:
        # What state lost (a create an interrupt left pending) is found by its tag. Only then:
        # the tag's value is the cluster's name, which a cluster of that name made from another
        # cloudtrain home in the same account shares, and its resources must not be touched.
        if not stack.sweep_owed():
            return
        leftovers.sweep(provider, cluster, region, self._say, state_lost=True)
        stack.sweep_done()

    def _say(self, line: str) -> None:
        (self.on_output or _to_stderr)(f"cloudtrain: {line}")


class AwsProvisioner(CloudProvisioner):
    name: ClassVar[str] = "aws"
    node_preempt: ClassVar[str | None] = "aws"  # bootstrap/node/preempt.py's notice reader
    signals: ClassVar[failover.Signals] = cloud_errors.AWS
    can_stop: ClassVar[bool] = True
    default_autostop_s: ClassVar[int | None] = 3600
    power: ClassVar[str | None] = "power_aws"


class GcpProvisioner(CloudProvisioner):
    name: ClassVar[str] = "gcp"
    node_preempt: ClassVar[str | None] = "gcp"  # bootstrap/node/preempt.py's notice reader
    signals: ClassVar[failover.Signals] = cloud_errors.GCP
    can_stop: ClassVar[bool] = True
    default_autostop_s: ClassVar[int | None] = 3600
    power: ClassVar[str | None] = "power_gcp"


class AzureProvisioner(CloudProvisioner):
    name: ClassVar[str] = "azure"
    node_preempt: ClassVar[str | None] = "azure"  # bootstrap/node/preempt.py's notice reader
    signals: ClassVar[failover.Signals] = cloud_errors.AZURE
    node_stop: ClassVar[str] = "azure-deallocate"  # an OS shutdown alone leaves the VM allocated, billing
    can_stop: ClassVar[bool] = True
    default_autostop_s: ClassVar[int | None] = 3600
    power: ClassVar[str | None] = "power_azure"
