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


def test_rotation_script_reads_the_config_file_when_sshd_cannot_dump_it(tmp_path: Path):
    """The node-side script on its own, as real processes: `sshd -T` refusing (an unprivileged
    user, an old sshd) leaves it the config file's own HostKey/PidFile lines; the key is
    replaced in place (a path with a space) and the pid file's process gets SIGHUP."""
    import os
    import signal
    import subprocess
    import sys

    from cloudtrain import keys
    from cloudtrain.provisioner import hostkey_rotation

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "sshd").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "sshd").chmod(0o755)
    key_dir = tmp_path / "node dir"
    key_dir.mkdir()
    key = key_dir / "ssh_host_ed25519_key"
    old = keys.write_pair(key, comment="first-boot")
    flag = tmp_path / "hup"
    listener = subprocess.Popen(
        [sys.executable, "-c", f"import signal, sys, time\nsignal.signal(signal.SIGHUP, lambda *a: (open({str(flag)!r}, 'w').write('hup'), sys.exit(0)))\nprint('ready', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout.readline().strip() == "ready"
        pidfile = key_dir / "sshd.pid"
        pidfile.write_text(f"{listener.pid}\n")
        config = key_dir / "sshd_config"
        config.write_text(f'ListenAddress 127.0.0.1:1\nHostKey "{key}"\nPidFile "{pidfile}"\n')
        env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
        proc = subprocess.run(["sh", "-c", hostkey_rotation._SCRIPT, "rotate", str(config), "c"], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        printed = proc.stdout.strip().splitlines()[-1]
        assert printed.split()[:2] == key.with_name(key.name + ".pub").read_text().split()[:2]
        assert printed.split()[1] != old.split()[1]
        assert hostkey_rotation._public_key(printed) == " ".join(printed.split()[:2])
        assert not key.with_name(key.name + ".new").exists()
        assert key.stat().st_mode & 0o077 == 0  # still private
        assert listener.wait(timeout=30) == 0 and flag.read_text() == "hup"
    finally:
        if listener.poll() is None:
            listener.send_signal(signal.SIGKILL)
            listener.wait()


def test_a_node_printing_no_key_is_not_pinned():
    from cloudtrain.provisioner import hostkey_rotation

    assert hostkey_rotation._public_key("ssh-ed25519 not-base64!") is None
    assert hostkey_rotation._public_key("ssh-rsa AAAAB3NzaC1yc2E") is None
    assert hostkey_rotation._public_key("") is None


def test_rotation_script_never_guesses_another_sshds_key(tmp_path: Path):
    import os
    import subprocess

    from cloudtrain.provisioner import hostkey_rotation

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "sshd").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "sshd").chmod(0o755)
    config = tmp_path / "sshd_config"
    config.write_text("ListenAddress 127.0.0.1:1\n")  # no HostKey line, and sshd -T refuses
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    proc = subprocess.run(["sh", "-c", hostkey_rotation._SCRIPT, "rotate", str(config), "c"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "no ed25519 HostKey in" in proc.stderr
    assert set(tmp_path.iterdir()) == {fake_bin, config}  # nothing written anywhere
