"""How machines appear. Each provider is one `Provisioner` class, found by name here.

Shared code asks a provisioner what it can do (its class attributes), never which cloud it is.
"""

from __future__ import annotations

import importlib
import importlib.util

from cloudtrain.errors import BadInput
from cloudtrain.provisioner.base import Provisioner

# name -> ("module:Class", what it imports beyond the base install). Imported lazily so
# `--provider local` never loads a cloud SDK; the clouds' SDKs come with the `cloud` extra.
_REGISTRY = {
    "local": ("cloudtrain.provisioner.local:LocalProvisioner", ()),
    "ssh": ("cloudtrain.provisioner.ssh:SshProvisioner", ()),
    "aws": ("cloudtrain.provisioner.cloud:AwsProvisioner", ("pulumi", "pulumi_aws", "boto3")),
    "gcp": ("cloudtrain.provisioner.cloud:GcpProvisioner", ("pulumi", "pulumi_gcp", "google.auth")),
    "azure": ("cloudtrain.provisioner.cloud:AzureProvisioner", ("pulumi", "pulumi_azure_native")),
}
PROVIDERS = tuple(_REGISTRY)
CLOUD_EXTRA = "pip install 'cloudtrain[cloud]'"


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:  # its parent package is absent too (google for google.auth)
        return True


def require_cloud_extra(who: str, modules: tuple[str, ...]) -> None:
    """Refuse (exit 2, nothing created) when the cloud extra's packages are not installed,
    before anything imports them: one line naming the install command, not a traceback."""
    missing = [m for m in modules if _absent(m)]
    if missing:
        raise BadInput(f"{who} needs the cloud extra ({', '.join(missing)} not installed)", f"run: {CLOUD_EXTRA}")


def get(name: str) -> Provisioner:
    entry = _REGISTRY.get(name)
    if entry is None:
        raise BadInput(f"unknown provider {name!r}", f"choose one of {', '.join(PROVIDERS)}")
    target, needs = entry
    require_cloud_extra(f"--provider {name}", needs)
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)()
