"""GCP: find and remove the instances and disks labelled `cloudtrain-cluster=<name>` in the
cluster's region, through the Compute Engine REST API (aggregatedList with a label filter).

VPC networks, subnetworks and firewall rules take no labels on GCP, so they cannot be found by
label; they are named `<cluster>-...` and are free. The sweep says so instead of deleting by
name: a name is not a tag, and another cluster's resources must never be touched.
"""

from __future__ import annotations

import os
from typing import Any

from cloudtrain.provisioner.contract import CLUSTER_TAG
from cloudtrain.provisioner.leftovers.base import Leftover

SWEEPS = True
API = "https://compute.googleapis.com/compute/v1"
_KINDS = (("instance", "instances"), ("disk", "disks"))  # deletion order: a boot disk is freed by its instance
UNLABELLED = "networks, subnetworks and firewall rules (GCP gives them no labels: `gcloud compute networks list --filter=name~^{cluster}-`)"


def console_filter(cluster: str, where: str | None) -> str:
    return (
        f"`gcloud compute instances list --filter=labels.{CLUSTER_TAG}={cluster}` and "
        f"`gcloud compute disks list --filter=labels.{CLUSTER_TAG}={cluster}`"
    )


def _session_and_project(session: Any | None, project: str | None) -> tuple[Any, str]:
    if session is not None and project is not None:
        return session, project
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    creds, default_project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or default_project
    if not project:
        raise RuntimeError("no GCP project: set GOOGLE_CLOUD_PROJECT or `gcloud config set project ID`")
    return session or AuthorizedSession(creds), project


def _in_region(scope: str, region: str) -> bool:
    # Scopes are "zones/us-central1-a"; a zone's region is its name without the last part.
    kind, _, zone = scope.partition("/")
    return kind == "zones" and zone.rsplit("-", 1)[0] == region


def _json(resp: Any) -> dict[str, Any]:
    if resp.status_code >= 400:
        raise RuntimeError(f"HTTP {resp.status_code}: {_error(resp)}")
    return resp.json()


def _error(resp: Any) -> str:
    try:
        return resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return resp.text[:200]


def find(cluster: str, region: str, session: Any | None = None, project: str | None = None, api: str = API) -> tuple[list[Leftover], list[str]]:
    """Instances and disks in `region` labelled with the cluster, in deletion order; and what
    cannot be looked for by label."""
    session, project = _session_and_project(session, project)
    found: list[Leftover] = []
    for kind, plural in _KINDS:
        params: dict[str, str] = {"filter": f'labels.{CLUSTER_TAG}="{cluster}"'}
        while True:
            page = _json(session.get(f"{api}/projects/{project}/aggregated/{plural}", params=params, timeout=60))
            for scope, entry in (page.get("items") or {}).items():
                if not _in_region(scope, region):
                    continue
                for item in entry.get(plural, []):
                    if (item.get("labels") or {}).get(CLUSTER_TAG) == cluster:
                        found.append(Leftover(kind, item["name"], scope.split("/", 1)[1], item))
            if not page.get("nextPageToken"):
                break
            params["pageToken"] = page["nextPageToken"]
    return found, [UNLABELLED.format(cluster=cluster)]


def remove(found: list[Leftover], session: Any | None = None, project: str | None = None, api: str = API) -> list[str]:
    """Delete what `find` returned (each deletion waited for); the lines of what remains."""
    if not found:
        return []
    session, project = _session_and_project(session, project)
    failed: list[str] = []
    for left in found:
        base = f"{api}/projects/{project}/zones/{left.region}"
        try:
            resp = session.delete(f"{base}/{left.kind}s/{left.id}", timeout=60)
            if resp.status_code == 404:
                continue  # already gone: a boot disk goes with its instance
            op = _json(resp)
            while op.get("status") != "DONE":  # operations/wait returns when done, or after ~2 min
                op = _json(session.post(f"{base}/operations/{op['name']}/wait", timeout=180))
            errors = (op.get("error") or {}).get("errors") or []
            if errors:
                failed.append(f"{left.kind} {left.id} in {left.region} ({errors[0].get('code', 'error')})")
        except Exception as e:  # noqa: BLE001 - transport or HTTP errors: say what remains
            failed.append(f"{left.kind} {left.id} in {left.region} ({e})")
    return failed
