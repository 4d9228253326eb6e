"""GCP: no sweep yet. What to look at by hand: the label every cloudtrain resource carries.
(VPC networks and firewall rules take no labels on GCP; they are named `<cluster>-...`.)"""

from __future__ import annotations

from cloudtrain.provisioner.contract import CLUSTER_TAG

SWEEPS = False


def console_filter(cluster: str, where: str | None) -> str:
    return (
        f"`gcloud compute instances list --filter=labels.{CLUSTER_TAG}={cluster}` and "
        f"`gcloud compute disks list --filter=labels.{CLUSTER_TAG}={cluster}`"
    )
