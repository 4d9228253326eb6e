"""cloud-init user data that installs the node's pinned SSH host key before sshd first starts.

cloud-init's `ssh_keys` module writes the keys during the init stage, which runs before sshd
on the Ubuntu images all three clouds boot; deleting and not generating other key types means
the node presents only the key cloudtrain already knows.
"""

from __future__ import annotations

import json

from cloudtrain.provisioner.contract import HostKey

# GCP's guest agent may regenerate host keys on first boot; this turns that off.
_GCE_INSTANCE_CONFIGS = "[InstanceSetup]\nset_host_keys = false\n"


def user_data(host_key: HostKey) -> str:
    """A #cloud-config document (JSON is valid YAML, and quoting it is exact)."""
    doc = {
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {"ed25519_private": host_key.private, "ed25519_public": host_key.public},
        "ssh_pwauth": False,
        "disable_root": True,
        "write_files": [
            {"path": "/etc/default/instance_configs.cfg", "content": _GCE_INSTANCE_CONFIGS, "permissions": "0644"},
        ],
    }
    return "#cloud-config\n" + json.dumps(doc, indent=1) + "\n"
