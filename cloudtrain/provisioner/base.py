"""The one narrow interface every provider implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from cloudtrain.errors import ProvisionError
from cloudtrain.machine import Cluster, Node
from cloudtrain.spec import ClusterSpec
from cloudtrain.state import ClusterDir, ClusterRecord


STANDARD_SSHD_CONFIG = "/etc/ssh/sshd_config"


class Provisioner(ABC):
    name: ClassVar[str]
    # Capabilities, declared by type so shared code never asks which provider this is.
    needs_gpu: ClassVar[bool] = False  # a --gpu is required (clouds) or refused (local)
    bills: ClassVar[bool] = False  # machines cost money: print the price before creating
    supports_preview: ClassVar[bool] = False
    # `launch --recover` (recovery.py): whether a lost node can be replaced by a new one.
    replaces_nodes: ClassVar[bool] = False
    # The first-boot host key reached the node through a channel others can read (user data,
    # instance metadata): `up` replaces it after first contact (hostkey_rotation.py).
    rotates_host_keys: ClassVar[bool] = False
    # The node-side watchdog (autostop.py): whether a node can stop itself, the autostop used
    # when `up` is given none (None: off), and whether it runs as a systemd unit (VMs).
    can_stop: ClassVar[bool] = False
    default_autostop_s: ClassVar[int | None] = None
    watchdog_systemd: ClassVar[bool] = False
    # Which cloud's preemption notice the watchdog polls (bootstrap/node/preempt.py: "aws",
    # "gcp", "azure"); None: this provider's machines are never preempted.
    node_preempt: ClassVar[str | None] = None
    # The machines are the user's own, named by --host: `down` removes cloudtrain's files from
    # them and never the machines.
    takes_hosts: ClassVar[bool] = False

    def default_name(self, spec_gpu: str | None) -> str:
        return f"{self.name}-{spec_gpu}" if spec_gpu else self.name

    @abstractmethod
    def check(self, spec: ClusterSpec) -> None:
        """Refuse a spec this provider cannot satisfy (BadInput), with no side effects."""

    def describe(self, spec: ClusterSpec) -> str:
        """One or more lines: what `create` will make, and its hourly price where it bills."""
        return f"{spec.nodes} node(s) on {self.name}"

    def hourly_price(self, spec: ClusterSpec) -> float | None:
        """On-demand $/h for the whole cluster; 0 when nothing bills, None when unknown."""
        return 0.0

    def preview(self, spec: ClusterSpec, cdir: ClusterDir) -> str:
        raise NotImplementedError

    @abstractmethod
    def create(self, spec: ClusterSpec, cdir: ClusterDir, record: ClusterRecord) -> Cluster:
        """Make the machines and return how to reach them. May fill `record.provider_state`
        (saved by the caller) so `destroy` can find everything even after a crash."""

    def sshd_config(self, record: ClusterRecord, node: Node) -> str:
        """Where the node's sshd reads its configuration (host key rotation finds the key there)."""
        return STANDARD_SSHD_CONFIG

    def repair(self, cdir: ClusterDir, record: ClusterRecord) -> list[str]:
        """Bring back what a ready cluster lost where this provider can (a local node whose
        sshd died), before `up` re-checks its bootstrap; one line per repair. Default: none."""
        return []

    def watchdog_stop_command(self, cdir: ClusterDir, record: ClusterRecord, index: int) -> list[str]:
        """The argv node `index`'s watchdog runs to stop that node (where `can_stop`)."""
        raise NotImplementedError

    def watchdog_session_marker(self, root: str) -> str:
        """An environment entry only the node's own interactive sessions carry; "" = any PTY."""
        return ""

    def checkpoint_store(self, record: ClusterRecord) -> dict | None:
        """Where the nodes themselves put checkpoints (contract.CHECKPOINTS' entry), or None."""
        return None

    def observed_stop(self, cdir: ClusterDir, record: ClusterRecord) -> dict | None:
        """{"reason", "at"} when a node of the cluster was stopped by its watchdog; else None."""
        return None

    def start(self, cdir: ClusterDir, record: ClusterRecord) -> list[str]:
        """Start a stopped cluster's nodes again (same nodes, keys and host keys); one line each."""
        raise ProvisionError(f"the {self.name} provider cannot start a stopped cluster yet", "start its machines in the cloud's console")

    def lost_nodes(self, cdir: ClusterDir, record: ClusterRecord, marked: list[int] | None = None) -> list[int]:
        """Indexes of the nodes that are gone (preempted, deleted): those no SSH server answers for.
        `marked`: the nodes whose watchdog left a preemption notice (recovery.py)."""
        from cloudtrain.reachability import why_silent

        nodes = record.cluster.nodes if record.cluster else ()
        return [i for i, n in enumerate(nodes) if why_silent(n.host, n.port, 5.0) is not None]

    def replace_nodes(self, cdir: ClusterDir, record: ClusterRecord, lost: list[int]) -> list[str]:
        """Put a new machine in place of each lost node (where `replaces_nodes`), updating
        `record.cluster` and saving the record; one line per node. Bootstrap comes after."""
        raise ProvisionError(f"the {self.name} provider cannot replace a lost node yet", "run the job again with `cloudtrain launch`")

    @abstractmethod
    def destroy(self, cdir: ClusterDir, record: ClusterRecord) -> None:
        """Remove everything `create` made. Idempotent: a second call is harmless."""

    def recognizes(self, cdir: ClusterDir) -> bool:
        """Whether the files in `cdir.provider_dir` look like this provider's (a cluster made
        before the provider marker existed, whose record is damaged)."""
        return False

    def destroy_found(self, cdir: ClusterDir) -> None:
        """Remove what this provider can find of a cluster whose record is damaged or missing,
        from the cluster's name and its provider folder alone. Idempotent."""
        raise ProvisionError(
            f"the {self.name} provider cannot find cluster {cdir.name}'s machines without its record",
            f"remove them by hand, then delete {cdir.root}",
        )
