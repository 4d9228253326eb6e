"""Azure: find and delete the resource groups tagged `cloudtrain-cluster=<name>` in the
cluster's region, through Azure Resource Manager REST. The Azure program puts every resource of
a cluster in one such group, so deleting the group deletes them all (the checkpoint storage
account and its container too); the one thing outside it, the nodes' custom role, is azure_roles'.

Shapes, from the ARM REST reference:
- Resource Groups - List (learn.microsoft.com/rest/api/resources/resourcegroups/list):
  `GET /subscriptions/{sub}/resourcegroups?$filter=tagName eq 'k' and tagValue eq 'v'`, answering
  `{"value": [ResourceGroup...], "nextLink": ...}`; a ResourceGroup has id, name, location, tags.
- Resource Groups - Delete (learn.microsoft.com/rest/api/resources/resourcegroups/delete): 200,
  or 202 Accepted with a `Location` header.
- Long-running operations (github.com/Azure/azure-resource-manager-rpc, v1.0/Addendum.md,
  "202 Accepted and Location Headers" / "Asynchronous Operations"): the `Location` URL answers
  202 until the operation ends, then 200/204, or an error status with an error body; an
  `Azure-AsyncOperation` URL answers `{"status": "InProgress"|"Succeeded"|"Failed"|"Canceled",
  "error": {...}}`; `Retry-After` says how many seconds to wait between polls.
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Callable, Iterator

from cloudtrain.provisioner.contract import CLUSTER_TAG, marker
from cloudtrain.provisioner.leftovers import azure_roles
from cloudtrain.provisioner.leftovers.base import GLOBAL, Leftover, Tagged
from cloudtrain.provisioner.rest import ApiError, Bearer, Reply, Rest, Transport, same_origin

SWEEPS = True
ARM = "https://management.azure.com"
API_VERSION = "2021-04-01"
# Deleting a group with VMs, disks and NICs takes minutes; past this, say what remains.
WAIT_S = 1800.0
_DEFAULT_POLL_S, _MAX_POLL_S = 10.0, 60.0


def console_filter(cluster: str, where: str | None) -> str:
    return (f"`az group list --tag {CLUSTER_TAG}={cluster}` and `az resource list --tag {CLUSTER_TAG}={cluster}`; the role: "
            f"`az role definition list --custom-role-only --query \"[?starts_with(description, '{marker(cluster)}:')]\"`")


def _client(http: Transport | None, subscription_id: str | None) -> tuple[Transport, str]:
    if http is not None and subscription_id is not None:
        return http, subscription_id
    from cloudtrain.provisioner.preflight import azure as login  # the pre-flight's login lookups

    sub = subscription_id or login.subscription()
    return http or Bearer(login.token(sub)), sub


def _tag_value(group: dict) -> str | None:
    # Tag names are case-insensitive on Azure, values are not: compare the value exactly.
    return next((v for k, v in (group.get("tags") or {}).items() if k.lower() == CLUSTER_TAG), None)


def _ours(url: str, arm: str) -> str:
    """A link ARM handed back (a Location) must stay on ARM: the token goes with it."""
    return same_origin(url, arm, "Azure")


def find(cluster: str, region: str, http: Transport | None = None, subscription_id: str | None = None, arm: str | None = None) -> tuple[list[Leftover], list[str]]:
    """The resource groups in `region` whose `cloudtrain-cluster` tag is exactly `cluster`, then
    the cluster's custom role (azure_roles) where its group is one of them or gone. Region
    GLOBAL: the roles of groups that are gone, alone."""
    http, sub = _client(http, subscription_id)
    arm = arm or ARM
    if region == GLOBAL:
        return azure_roles.find(http, sub, arm, cluster, set()), []
    where = urllib.parse.quote(f"tagName eq '{CLUSTER_TAG}' and tagValue eq '{cluster}'")
    url = f"{arm}/subscriptions/{sub}/resourcegroups?api-version={API_VERSION}&$filter={where}"
    found = [Leftover("resource-group", group["name"], group["location"], group) for group in _list(http, url, "resource groups")
             if _tag_value(group) == cluster and str(group.get("location", "")).lower() == region.lower()]
    try:
        return found + azure_roles.find(http, sub, arm, cluster, {x.id for x in found}), []
    except Exception as e:  # noqa: BLE001 - a role is free: not listing it is a warning, as on AWS
        return found, [f"custom role definitions ({type(e).__name__}: {e})"]


def _list(http: Transport, url: str, what: str) -> Iterator[dict]:
    """Each item of an ARM list, its pages followed (on ARM only); an error status says what was listed."""
    try:
        for page in Rest(http, "Azure").pages(url):
            yield from page.get("value", [])
    except ApiError as e:
        raise RuntimeError(f"listing {what}: {e.brief()}") from e


def tagged(http: Transport | None = None, subscription_id: str | None = None, arm: str | None = None) -> list[Tagged]:
    """The resource groups of every region that carry the cluster tag, whatever its value, each
    with what in it bills (Resources - List By Resource Group): the list mode of `status --cloud`."""
    http, sub = _client(http, subscription_id)
    arm = arm or ARM
    where = urllib.parse.quote(f"tagName eq '{CLUSTER_TAG}'")
    out: list[Tagged] = []
    for group in _list(http, f"{arm}/subscriptions/{sub}/resourcegroups?api-version={API_VERSION}&$filter={where}", "resource groups"):
        value = _tag_value(group)
        if value is None:
            continue
        kinds: dict[str, int] = {}
        for res in _list(http, f"{arm}{group['id']}/resources?api-version={API_VERSION}", f"resources of {group['name']}"):
            kind = str(res.get("type", "")).rsplit("/", 1)[-1]
            if kind in _BILLED:
                kinds[kind] = kinds.get(kind, 0) + 1
        what = ", ".join(f"{n} {_BILLED[k]}" for k, n in kinds.items()) or "nothing that bills"
        state = (group.get("properties") or {}).get("provisioningState", "?")
        out.append(Tagged("azure", "resource-group", group["name"], group.get("location", "?"), state, value, what, group.get("location", "")))
    return out


def tagged_global(http: Transport | None = None, subscription_id: str | None = None, arm: str | None = None) -> list[Tagged]:
    """The custom roles no resource group holds (status --cloud)."""
    http, sub = _client(http, subscription_id)
    return azure_roles.tagged(http, sub, arm or ARM)


# What bills in a cluster's group, by ARM resource type (the rest, networks and NICs, is free).
_BILLED = {"virtualMachines": "VM(s)", "disks": "disk(s)", "publicIPAddresses": "public IP(s)", "storageAccounts": "checkpoint storage account(s)"}


def _retry_after(reply: Reply) -> float:
    try:
        return min(max(float(reply.headers.get("retry-after", _DEFAULT_POLL_S)), 0.0), _MAX_POLL_S)
    except ValueError:
        return _DEFAULT_POLL_S


def _wait(http: Transport, accepted: Reply, group_url: str, arm: str, wait_s: float, sleep: Callable[[float], None]) -> str | None:
    """Poll a 202's operation to its end: None when the group is gone, else why it is not."""
    status_url = accepted.headers.get("azure-asyncoperation")
    location = accepted.headers.get("location")
    waited, delay = 0.0, _retry_after(accepted)
    while True:
        if waited + max(delay, 1.0) > wait_s:  # counts the pauses ARM asked for, so a test's sleep can be instant
            return f"still deleting after {waited:g} s"
        sleep(delay)
        waited += max(delay, 1.0)  # a poll itself takes time: even Retry-After: 0 ends
        if status_url:
            reply = http.request("GET", _ours(status_url, arm))
            if reply.status >= 400:
                return reply.error_code()
            body = reply.json() or {}
            state = body.get("status")
            if state == "Succeeded":
                return None
            if state in ("Failed", "Canceled"):
                return (body.get("error") or {}).get("code") or state
        elif location:
            reply = http.request("GET", _ours(location, arm))
            if reply.status in (200, 204):
                return None
            if reply.status != 202:
                return reply.error_code()
        else:  # a 202 with no operation to poll: watch the group itself until it is gone
            reply = http.request("GET", group_url)
            if reply.status == 404:
                return None
            if reply.status >= 400:
                return reply.error_code()
        delay = _retry_after(reply)


def remove(found: list[Leftover], http: Transport | None = None, subscription_id: str | None = None, arm: str | None = None,
           wait_s: float = WAIT_S, sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Delete each group and wait for it; the lines of what remains."""
    if not found:
        return []
    if http is None:  # a group's id is /subscriptions/{sub}/resourceGroups/{name}
        http, _ = _client(None, subscription_id or found[0].raw["id"].split("/")[2])
    arm = arm or ARM
    failed: list[str] = []
    for left in found:
        url = f"{arm}{left.raw['id']}?api-version={API_VERSION}"
        try:
            if left.kind != "resource-group":  # a role assignment or definition: gone at once
                why = azure_roles.delete(http, arm, left)
                if why is not None:
                    failed.append(f"{left.line()} ({why})")
                continue
            reply = http.request("DELETE", url)
            if reply.status in (200, 204, 404):  # done, or already gone
                continue
            why = _wait(http, reply, url, arm, wait_s, sleep) if reply.status == 202 else reply.error_code()
        except Exception as e:  # noqa: BLE001 - transport errors or a link off ARM: say what remains
            why = f"{type(e).__name__}: {e}"
        if why is not None:
            failed.append(f"{left.line()} ({why})")
    return failed
