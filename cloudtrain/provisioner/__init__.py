"""How machines appear. Each provider is one `Provisioner` class, found by name here.

Shared code asks a provisioner what it can do (its class attributes), never which cloud it is.
"""

from __future__ import annotations

import importlib

from cloudtrain.errors import BadInput
from cloudtrain.provisioner.base import Provisioner

# name -> "module:Class"; imported lazily so `--provider local` never loads a cloud SDK.
_REGISTRY = {
    "local": "cloudtrain.provisioner.local:LocalProvisioner",
    "aws": "cloudtrain.provisioner.cloud:AwsProvisioner",
    "gcp": "cloudtrain.provisioner.cloud:GcpProvisioner",
    "azure": "cloudtrain.provisioner.cloud:AzureProvisioner",
}
PROVIDERS = tuple(_REGISTRY)


def get(name: str) -> Provisioner:
    target = _REGISTRY.get(name)
    if target is None:
        raise BadInput(f"unknown provider {name!r}", f"choose one of {', '.join(PROVIDERS)}")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)()
