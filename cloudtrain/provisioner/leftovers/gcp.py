"""GCP: find and remove what cluster `<name>` left in its region, through the Compute Engine
REST API (v1 reference: cloud.google.com/compute/docs/reference/rest/v1).

Instances and disks carry the label `cloudtrain-cluster=<name>`: `aggregated/{instances,disks}`
with a label filter, checked again client-side. Networks, subnetworks, firewall rules and
resource policies take no labels; the GCP program starts their description with
`cloudtrain-cluster=<name>` (contract.marker), then nothing or ": ...". They are listed
(`global/networks`, `global/firewalls`, `regions/{r}/subnetworks`, `regions/{r}/resourcePolicies`)
and matched exactly on that client-side, so cluster `a` never takes `a-b`'s; no server filter, so
nothing rests on the filter language's regex rules. Networks and firewalls are global: a
same-named cluster of another region would match (the caveat of docs/clouds.md's sweep).
Deletion follows dependencies: instances, disks, firewalls, subnetworks, resource policies,
networks; each operation is waited for. The checkpoint bucket goes after the instances, the
nodes' service account last (gcp_beyond). Region GLOBAL: the global kinds alone.
"""

from __future__ import annotations

from cloudtrain.provisioner.contract import CLUSTER_TAG, marker
from cloudtrain.provisioner.leftovers import gcp_beyond
from cloudtrain.provisioner.leftovers.base import GLOBAL, Leftover, Tagged
from cloudtrain.provisioner.rest import ApiError, Google, Rest, Transport, with_query

SWEEPS = True
API = "https://compute.googleapis.com/compute/v1"
_LABELLED = (("instance", "instances"), ("disk", "disks"))  # zonal; a boot disk is freed by its instance
# (kind, collection, scope) in deletion order after the labelled kinds.
_MARKED = (
    ("firewall", "firewalls", "global"),
    ("subnetwork", "subnetworks", "region"),
    ("resource-policy", "resourcePolicies", "region"),
    ("network", "networks", "global"),
)
_COLLECTION = {kind: plural for kind, plural in _LABELLED} | {kind: plural for kind, plural, _ in _MARKED}
_SCOPE = {kind: scope for kind, _, scope in _MARKED}
WAITS = 15  # operations.wait calls per deletion (~2 min each) before saying it is still running


def console_filter(cluster: str, where: str | None) -> str:
    return (
        f"`gcloud compute instances list --filter=labels.{CLUSTER_TAG}={cluster}` and "
        f"`gcloud compute disks list --filter=labels.{CLUSTER_TAG}={cluster}`; networks, subnets, firewall rules and "
        f"resource policies: `gcloud compute networks list --filter=\"description~^{marker(cluster)}\"` (and the same for `networks subnets`, `firewall-rules`, `resource-policies`); "
        f"`gcloud storage buckets list --filter=labels.{CLUSTER_TAG}={cluster}` and `gcloud iam service-accounts list --filter=\"description={marker(cluster)}\"`"
    )


def _client(http: Transport | None, project: str | None) -> tuple[Rest, str]:
    """The Compute API signed with the application default credentials (or `http`, a test's)."""
    if http is not None and project is not None:
        return Rest(http, "GCP"), project
    from cloudtrain.provisioner.preflight import gcp as login  # the pre-flight's credentials and project, as Azure's sweep does

    creds, default_project = login.project_and_credentials()
    return Rest(http or Google(creds, timeout=180.0), "GCP"), project or default_project  # operations.wait answers within ~2 min


def why(e: Exception) -> str:
    """An API error as `HTTP 400 resourceInUseByAnotherResource` (GCP's reason), else the error itself."""
    return e.brief() if isinstance(e, ApiError) else str(e)


def _in_region(scope: str, region: str) -> bool:
    # Scopes are "zones/us-central1-a"; a zone's region is its name without the last part.
    kind, _, zone = scope.partition("/")
    return kind == "zones" and zone.rsplit("-", 1)[0] == region


def _marks(item: dict, cluster: str) -> bool:
    text, mark = item.get("description") or "", marker(cluster)
    return text == mark or text.startswith(mark + ":")


def find(cluster: str, region: str, http: Transport | None = None, project: str | None = None, api: str | None = None) -> tuple[list[Leftover], list[str]]:
    """What in `region` (and, for networks and firewalls, globally) carries the cluster's label
    or description marker, in deletion order; and the free kinds that could not be listed.
    Raises when instances or disks (they bill) cannot be listed."""
    rest, project = _client(http, project)
    api = api or API
    found: list[Leftover] = []
    for kind, plural in _LABELLED if region != GLOBAL else ():
        url = f"{api}/projects/{project}/aggregated/{plural}"
        for page in rest.pages(with_query(url, filter=f'labels.{CLUSTER_TAG}="{cluster}"')):
            for scope, entry in (page.get("items") or {}).items():
                if not _in_region(scope, region):
                    continue
                for item in entry.get(plural, []):
                    if (item.get("labels") or {}).get(CLUSTER_TAG) == cluster:
                        found.append(Leftover(kind, item["name"], scope.split("/", 1)[1], item))
    if region != GLOBAL:
        found += gcp_beyond.find_buckets(rest, project, api, cluster, region)  # bills: a failure to list raises
    unchecked: list[str] = []
    for kind, plural, scope in _MARKED:
        if scope != "global" and region == GLOBAL:
            continue
        where = "global" if scope == "global" else f"regions/{region}"
        try:
            for page in rest.pages(f"{api}/projects/{project}/{where}/{plural}"):
                found += [Leftover(kind, item["name"], where.removeprefix("regions/"), item) for item in page.get("items", []) if _marks(item, cluster)]
        except Exception as e:  # noqa: BLE001 - these kinds do not bill: not listing them is a warning, as on AWS
            unchecked.append(f"{plural} ({why(e)})")
    try:
        found += gcp_beyond.find_accounts(rest, project, api, cluster)
    except Exception as e:  # noqa: BLE001 - free, as the networks
        unchecked.append(f"service accounts ({why(e)})")
    return found, unchecked


def tagged(http: Transport | None = None, project: str | None = None, api: str | None = None) -> list[Tagged]:
    """Instances and disks of every zone that carry the cluster label, whatever its value: the
    list mode of `status --cloud` (the free kinds are found by `find` once a name is known)."""
    rest, project = _client(http, project)
    api = api or API
    out: list[Tagged] = []
    for kind, plural in _LABELLED:
        for page in rest.pages(with_query(f"{api}/projects/{project}/aggregated/{plural}", filter=f"labels.{CLUSTER_TAG}:*")):
            for scope, entry in (page.get("items") or {}).items():
                zone = scope.partition("/")[2]
                for item in entry.get(plural, []):
                    value = (item.get("labels") or {}).get(CLUSTER_TAG)
                    if value is None:
                        continue
                    out.append(_row(kind, item, zone, value))
    return out


def tagged_global(http: Transport | None = None, project: str | None = None, api: str | None = None) -> list[Tagged]:
    """What Compute does not answer for: checkpoint buckets and node service accounts (status --cloud)."""
    rest, project = _client(http, project)
    return gcp_beyond.tagged(rest, project, api or API)


def _row(kind: str, item: dict, zone: str, value: str) -> Tagged:
    state = item.get("status", "?")
    if kind == "instance":
        machine = str(item.get("machineType", "?")).rsplit("/", 1)[-1]
        gpus = "".join(f" + {a.get('acceleratorCount', 1)}x {str(a.get('acceleratorType', '')).rsplit('/', 1)[-1]}" for a in item.get("guestAccelerators") or [])
        what = machine + gpus + (" (running: billed by the second)" if state in ("RUNNING", "PROVISIONING", "STAGING") else " (not running: its disks bill)")
        return Tagged("gcp", kind, item["name"], zone, state, value, what, zone.rsplit("-", 1)[0], machine)
    size, dtype = item.get("sizeGb", "?"), str(item.get("type", "")).rsplit("/", 1)[-1]
    return Tagged("gcp", kind, item["name"], zone, state, value, f"{size} GB {dtype}".strip(), zone.rsplit("-", 1)[0])


def _base(api: str, project: str, left: Leftover) -> str:
    scope = _SCOPE.get(left.kind, "zone")
    where = "global" if scope == "global" else f"{'regions' if scope == 'region' else 'zones'}/{left.region}"
    return f"{api}/projects/{project}/{where}"


def remove(found: list[Leftover], http: Transport | None = None, project: str | None = None, api: str | None = None) -> list[str]:
    """Delete what `find` returned, in its order, each operation waited for (operations.wait
    returns when done or after about 2 minutes; at most WAITS of those); the lines of what remains."""
    if not found:
        return []
    rest, project = _client(http, project)
    api = api or API
    failed: list[str] = []
    for left in found:
        base = _base(api, project, left)
        try:
            try:
                if left.kind in ("bucket", "service-account"):  # answered at once: no operation to wait for
                    gcp_beyond.delete(rest, project, api, left)
                    continue
                op = rest.delete(f"{base}/{_COLLECTION[left.kind]}/{left.id}")
            except ApiError as e:
                if e.status == 404:
                    continue  # already gone: a boot disk goes with its instance
                raise
            for _ in range(WAITS):
                if op.get("status") == "DONE":
                    break
                op = rest.post(f"{base}/operations/{op['name']}/wait")
            else:
                failed.append(f"{left.line()} (still {op.get('status', 'running')} after {WAITS} waits)")
                continue
            errors = (op.get("error") or {}).get("errors") or []
            if errors:
                failed.append(f"{left.line()} ({errors[0].get('code', 'error')})")
        except Exception as e:  # noqa: BLE001 - transport or HTTP errors: say what remains
            failed.append(f"{left.line()} ({why(e)})")
    return failed
