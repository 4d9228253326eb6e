"""Host keys cloudtrain generates for cloud nodes, kept 0600 so a retried `up` reuses them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cloudtrain import keys
from cloudtrain.provisioner.contract import HostKey


def load_or_create(folder: Path, names: list[str]) -> tuple[HostKey, ...]:
    """One ed25519 host key per node name, read from `folder` or generated there (0600, folder 0700).

    Reusing them matters: a new key would change cloud-init user data and replace the VM.
    """
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    out = []
    for name in names:
        path = folder / f"{name}.json"
        if path.exists():
            data = json.loads(path.read_text())
        else:
            private, public = keys.generate(comment=f"cloudtrain-host-{name}")
            data = {"private": private, "public": public}
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
        out.append(HostKey(private=data["private"], public=data["public"]))
    return tuple(out)
