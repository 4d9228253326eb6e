"""Azure: no sweep yet. Every resource of a cluster sits in its resource group, tagged with the
cluster's name; deleting that group deletes them all."""

from __future__ import annotations

from cloudtrain.provisioner.contract import CLUSTER_TAG

SWEEPS = False


def console_filter(cluster: str, where: str | None) -> str:
    return f"`az group list --tag {CLUSTER_TAG}={cluster}` and `az resource list --tag {CLUSTER_TAG}={cluster}`"
