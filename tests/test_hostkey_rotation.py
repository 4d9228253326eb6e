"""Host-key rotation after first contact (cloud review defect 14), over real sshd.

A cloud node's first-boot host key sits in user data / instance metadata, readable by anyone on
the VM. `up` replaces it over the pinned connection. The local provider's nodes are real sshd
servers, so a local provisioner that declares `rotates_host_keys` (as the clouds do) runs the
very code a cloud `up` runs: lifecycle -> hostkey_rotation -> SSH -> the node's sshd.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import pytest

from cloudtrain import lifecycle
from cloudtrain import provisioner as provisioners
from cloudtrain.errors import HostKeyMismatch
from cloudtrain.machine import Node
from cloudtrain.provisioner.cloud import CloudProvisioner
from cloudtrain.provisioner.local import LocalProvisioner
from cloudtrain.remote import SshRemote
from cloudtrain.spec import ClusterSpec, FrameworkSpec
from cloudtrain.state import ClusterRecord, Store


class RotatingLocal(LocalProvisioner):
    """Local nodes whose first-boot key is treated as exposed, like a cloud node's."""

    rotates_host_keys: ClassVar[bool] = True
    first_boot: ClassVar[dict[str, str]] = {}

    def create(self, spec, cdir, record):
        cluster = super().create(spec, cdir, record)
        RotatingLocal.first_boot.update({n.name: n.host_key for n in cluster.nodes})
        return cluster

    def sshd_config(self, record: ClusterRecord, node: Node) -> str:
        index = [n.name for n in record.cluster.nodes].index(node.name)
        return str(Path(record.provider_state["node_dirs"][index]) / "sshd_config")


def _node_key_on_disk(record: ClusterRecord, i: int) -> str:
    pub = (Path(record.provider_state["node_dirs"][i]) / "ssh_host_ed25519_key.pub").read_text().split()
    return f"{pub[0]} {pub[1]}"


def test_clouds_declare_rotation_and_the_local_provider_does_not():
    assert CloudProvisioner.rotates_host_keys is True
    assert LocalProvisioner.rotates_host_keys is False  # its key never left this machine


def test_up_replaces_the_first_boot_key_and_a_second_up_keeps_the_pin(home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(provisioners, "get", lambda name: RotatingLocal())
    store = Store()
    spec = ClusterSpec(name="rot", provider="local", nodes=2, framework=FrameworkSpec("none"))
    said: list[str] = []
    record = lifecycle.up(store, spec, said.append)
    try:
        cluster = record.cluster
        assert cluster is not None and len(cluster.nodes) == 2
        for i, node in enumerate(cluster.nodes):
            old = RotatingLocal.first_boot[node.name]
            assert node.host_key != old, "the first-boot key is still the pin"
            assert node.host_key == _node_key_on_disk(record, i)  # what sshd presents now
            # The record and known_hosts on disk hold the new pin.
            saved = store.cluster_dir("rot").load().cluster.node(node.name)
            assert saved.host_key == node.host_key
            assert node.host_key.split()[1] in store.cluster_dir("rot").known_hosts.read_text()
            # A client pinned to the key from user data is refused by the node...
            with pytest.raises(HostKeyMismatch):
                with SshRemote(dataclasses.replace(node, host_key=old), cluster.identity_file, connect_timeout=10) as r:
                    r.run("true")
            # ...and one pinned to the new key gets in.
            with SshRemote(node, cluster.identity_file) as r:
                assert r.run("echo in").stdout.strip() == "in"

        # A second `up` of the ready cluster neither rotates again nor loses the pin.
        pins = [n.host_key for n in cluster.nodes]
        again = lifecycle.up(store, spec, said.append)
        assert [n.host_key for n in again.cluster.nodes] == pins
        assert [n.host_key for n in store.cluster_dir("rot").load().cluster.nodes] == pins
        assert [_node_key_on_disk(again, i) for i in range(2)] == pins
        with SshRemote(again.cluster.head, again.cluster.identity_file) as r:
            assert r.run("true").ok
    finally:
        lifecycle.down(store, "rot", said.append)
