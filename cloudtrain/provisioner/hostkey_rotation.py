"""Replace a cloud node's first-boot host key once cloudtrain has connected to it.

The first-boot key reaches the node in user data / instance metadata (cloudinit.py), which any
process on the VM can read from IMDS or the metadata server, and on GCP any project viewer too
(cloud review defect 14). It is trusted for one thing only: the first connection. Over that
pinned connection the node makes a new ed25519 host key (its private half never leaves the
node), sshd is reloaded to present it, and the new public key becomes the pin in the cluster's
record and known_hosts. From then on the key in user data authenticates nothing.

Called once from `up`, right after the provisioner created the machines and before bootstrap,
for providers that declare `rotates_host_keys`. A later `up` of a ready cluster never gets
here, so the pin is never rotated twice or lost; an `up` killed between the node's switch and
the record's save leaves the cluster not ready, and the next `up` rebuilds it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from cloudtrain.errors import ProvisionError, RemoteError
from cloudtrain.machine import Cluster, Node
from cloudtrain.provisioner.base import STANDARD_SSHD_CONFIG, Provisioner
from cloudtrain.remote import SshRemote
from cloudtrain.state import ClusterDir, ClusterRecord

COMMENT = "cloudtrain-host-rotated"

# On the node: find sshd's ed25519 host key and pid file from its effective configuration,
# write a new key beside the old one, move it into place, make the listener re-read its keys
# (SIGHUP re-executes sshd; sessions already open, ours included, carry on), print the new
# public key. Root (sudo) unless the config is the login user's own (the local provider).
_SCRIPT = r"""
set -eu
config=$1
comment=$2
sudo=""
[ "$(id -u)" = 0 ] || [ -O "$config" ] || sudo="sudo -n"
sshd=$(command -v sshd || echo /usr/sbin/sshd)
effective=$($sudo "$sshd" -T -f "$config" 2>/dev/null) || effective=""
key=$(printf '%s\n' "$effective" | sed -n 's/^hostkey \(.*ed25519.*\)$/\1/p' | head -n 1)
pidfile=$(printf '%s\n' "$effective" | sed -n 's/^pidfile \(.*\)$/\1/p' | head -n 1)
# sshd -T may refuse to run (an unprivileged user, an old sshd): then the file's own lines.
[ -n "$key" ] || key=$(sed -n 's/^HostKey "\{0,1\}\([^"]*ed25519[^"]*\)"\{0,1\}$/\1/p' "$config" | head -n 1)
[ -n "$pidfile" ] || pidfile=$(sed -n 's/^PidFile "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$config" | head -n 1)
# OpenSSH's defaults, but only for the standard config: another sshd's key is never guessed.
if [ "$config" = /etc/ssh/sshd_config ]; then
  [ -n "$key" ] || key=/etc/ssh/ssh_host_ed25519_key
  [ -n "$pidfile" ] || pidfile=/run/sshd.pid
fi
[ -n "$key" ] || { echo "no ed25519 HostKey in $config" >&2; exit 3; }
$sudo rm -f "$key.new" "$key.new.pub"
$sudo ssh-keygen -q -t ed25519 -N '' -C "$comment" -f "$key.new"
$sudo cp -p "$key" "$key.old"
$sudo cp -p "$key.pub" "$key.pub.old" 2>/dev/null || true
$sudo mv -f "$key.new.pub" "$key.pub"
$sudo mv -f "$key.new" "$key"
# As ssh.service's own ExecReload: check the configuration before the listener re-executes;
# a listener that cannot start again would leave the node unreachable. Skipped where sshd -T
# already refused (it would refuse this too).
if [ -n "$effective" ] && ! $sudo "$sshd" -t -f "$config"; then
  $sudo mv -f "$key.old" "$key"
  $sudo mv -f "$key.pub.old" "$key.pub" 2>/dev/null || true
  echo "sshd -t rejects the configuration with the new key; the old key is back" >&2
  exit 4
fi
$sudo rm -f "$key.old" "$key.pub.old"
if [ -n "$pidfile" ] && pid=$($sudo cat "$pidfile" 2>/dev/null) && [ -n "$pid" ]; then
  $sudo kill -HUP "$pid"
else
  $sudo systemctl reload ssh 2>/dev/null || $sudo systemctl reload sshd
fi
cat "$key.pub"
"""


def _public_key(line: str) -> str | None:
    """'ssh-ed25519 AAAA... comment' -> 'ssh-ed25519 AAAA...' when the body is a real ed25519 key."""
    parts = line.split()
    if len(parts) < 2 or parts[0] != "ssh-ed25519":
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    return f"{parts[0]} {parts[1]}" if blob.startswith(b"\x00\x00\x00\x0bssh-ed25519") else None


def rotate_node(node: Node, identity_file: Path, sshd_config: str = STANDARD_SSHD_CONFIG) -> Node:
    """The node, now presenting (and pinned to) a host key that only it has ever held."""
    command = f"sh -c {shlex.quote(_SCRIPT)} rotate {shlex.quote(sshd_config)} {COMMENT}"
    with SshRemote(node, identity_file) as remote:  # pinned to the first-boot key
        result = remote.run(command, check=False)
    lines = result.stdout.strip().splitlines()
    public = _public_key(lines[-1]) if result.ok and lines else None
    if public is None:
        why = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no public key printed"]
        raise ProvisionError(f"could not replace the first-boot host key of {node.name}: {why[0][:300]}", "run `cloudtrain up` again; it rebuilds the cluster")
    rotated = dataclasses.replace(node, host_key=public)
    # Proof before the pin moves: a fresh connection must meet the new key (retried while the
    # listener re-executes).
    try:
        with SshRemote(rotated, identity_file, connect_timeout=60) as remote:
            remote.run("true")
    except RemoteError as e:
        raise ProvisionError(f"{node.name} does not present its new host key: {e.message}", "run `cloudtrain up` again; it rebuilds the cluster") from e
    return rotated


def rotate(cluster: Cluster, sshd_config: Callable[[Node], str] = lambda node: STANDARD_SSHD_CONFIG) -> Cluster:
    """Every node rotated (in parallel: each is a few round trips), rank order kept."""
    with ThreadPoolExecutor(max_workers=min(16, len(cluster.nodes)) or 1) as pool:
        nodes = tuple(pool.map(lambda node: rotate_node(node, cluster.identity_file, sshd_config(node)), cluster.nodes))
    return dataclasses.replace(cluster, nodes=nodes)


def after_create(provisioner: Provisioner, cdir: ClusterDir, record: ClusterRecord) -> None:
    """`up`'s one call: rotate where the provisioner says its first-boot keys were exposed,
    then save the record (and known_hosts) with the new pins."""
    if not provisioner.rotates_host_keys or record.cluster is None:
        return
    record.cluster = rotate(record.cluster, lambda node: provisioner.sshd_config(record, node))
    cdir.save(record)
