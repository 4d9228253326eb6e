"""GCP outside Compute Engine: the checkpoint bucket (Cloud Storage JSON API) and the nodes'
service account (IAM API), as provisioner/buckets.py makes them.

- The bucket is `cloudtrain-ckpt-<cluster>-<hash>`, labelled `cloudtrain-cluster=<name>`, located in
  the cluster's region (`location` upper-case). Buckets - List (`GET /storage/v1/b?project=&prefix=`,
  `{"items": [...], "nextPageToken"}`) finds it; the label value is compared exactly. Storage deletes
  only an empty bucket: Objects - List with `versions=true`, each generation deleted
  (`DELETE /b/{bucket}/o/{object}?generation=`), then `DELETE /b/{bucket}` (204).
- The service account is `ct-ckpt-<hash>@...` and takes no labels; its description is the
  cluster's marker, exactly (contract.marker). ServiceAccounts - List (`{"accounts": [...],
  "nextPageToken"}`), Delete (`DELETE /v1/projects/{p}/serviceAccounts/{email}`, `{}`). Service
  accounts are project-wide: found from any region (the caveat of the global networks).
"""

from __future__ import annotations

import urllib.parse
from typing import Iterator

from cloudtrain.provisioner.contract import CLUSTER_TAG
from cloudtrain.provisioner.leftovers.base import GLOBAL, Leftover, Tagged
from cloudtrain.provisioner.rest import ApiError, Rest, with_query

STORAGE = "https://storage.googleapis.com/storage/v1"
IAM = "https://iam.googleapis.com/v1"
BUCKET_PREFIX, ACCOUNT_PREFIX = "cloudtrain-ckpt-", "ct-ckpt-"


def _roots(api: str) -> tuple[str, str]:
    """Storage's and IAM's roots: Google's, or beside a test's Compute root (one fake serves all three)."""
    if api.startswith("https://compute.googleapis.com/"):
        return STORAGE, IAM
    parts = urllib.parse.urlsplit(api)
    return f"{parts.scheme}://{parts.netloc}/storage/v1", f"{parts.scheme}://{parts.netloc}/v1"


def buckets(rest: Rest, project: str, api: str) -> Iterator[dict]:
    """Each checkpoint bucket of the project carrying the cluster label (any value)."""
    for page in rest.pages(with_query(f"{_roots(api)[0]}/b", project=project, prefix=BUCKET_PREFIX)):
        for b in page.get("items", []):
            if (b.get("labels") or {}).get(CLUSTER_TAG) is not None:
                yield b


def accounts(rest: Rest, project: str, api: str) -> Iterator[tuple[dict, str]]:
    """Each node service account of the project with the cluster it is marked with."""
    for page in rest.pages(f"{_roots(api)[1]}/projects/{project}/serviceAccounts"):
        for a in page.get("accounts", []):
            text = a.get("description") or ""
            if str(a.get("email", "")).startswith(ACCOUNT_PREFIX) and text.startswith(f"{CLUSTER_TAG}="):
                yield a, text.removeprefix(f"{CLUSTER_TAG}=").split(":", 1)[0]


def find_buckets(rest: Rest, project: str, api: str, cluster: str, region: str) -> list[Leftover]:
    return [Leftover("bucket", b["name"], region, b) for b in buckets(rest, project, api)
            if b["labels"][CLUSTER_TAG] == cluster and str(b.get("location", "")).lower() == region.lower()]


def find_accounts(rest: Rest, project: str, api: str, cluster: str) -> list[Leftover]:
    return [Leftover("service-account", a["email"], GLOBAL, a) for a, value in accounts(rest, project, api) if value == cluster]


def tagged(rest: Rest, project: str, api: str) -> list[Tagged]:
    """status --cloud's rows: buckets bill for what they hold; service accounts are free."""
    out = [Tagged("gcp", "bucket", b["name"], str(b.get("location", "?")).lower(), "exists", b["labels"][CLUSTER_TAG],
                  "Cloud Storage of the checkpoints it holds", str(b.get("location", "")).lower()) for b in buckets(rest, project, api)]
    return out + [Tagged("gcp", "service-account", a["email"], GLOBAL, "disabled" if a.get("disabled") else "exists", value, "free (IAM)", GLOBAL)
                  for a, value in accounts(rest, project, api)]


def delete(rest: Rest, project: str, api: str, left: Leftover) -> None:
    """Remove one; raises ApiError (status 404 when already gone)."""
    storage, iam = _roots(api)
    if left.kind == "service-account":
        rest.delete(f"{iam}/projects/{project}/serviceAccounts/{left.id}")
        return
    base = f"{storage}/b/{left.id}"
    # Listed whole before any delete: a page token must not point into what was just deleted.
    objects = [obj for page in rest.pages(with_query(f"{base}/o", versions="true")) for obj in page.get("items", [])]
    for obj in objects:
        try:
            rest.delete(with_query(f"{base}/o/{urllib.parse.quote(obj['name'], safe='')}", generation=str(obj["generation"])))
        except ApiError as e:
            if e.status != 404:
                raise
    rest.delete(base)
