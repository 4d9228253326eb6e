"""Azure outside the resource group: the custom role the program defines for the nodes'
self-deallocation, and its assignments. A role definition is a tenant's, not a group's: deleting
the group leaves it behind. It takes no tags; the program names it `cloudtrain self-deallocate
(<group>)`, describes it `cloudtrain-cluster=<name>: ...` (contract.marker) and makes it
assignable at that group alone, so all three are matched: the marker exactly, the name's group
and the one assignable scope, a group of this subscription.

Shapes (learn.microsoft.com/rest/api/authorization, api-version 2022-04-01):
- Role Definitions - List, every custom role of the tenant ("custom-roles-rest": `GET
  /providers/Microsoft.Authorization/roleDefinitions?$filter=type eq 'CustomRole'`), answering
  `{"value": [{"id", "name", "type", "properties": {"roleName", "type", "description",
  "assignableScopes", "permissions"}}]}`; Delete at a scope above the assignable one: 200, or 204 when absent.
- Role Assignments - List For Subscription (`{"value": [{"id", "name", "properties":
  {"roleDefinitionId", "principalId", "scope"}}], "nextLink"}`) and Delete (200, or 204). ARM
  refuses to delete a definition that is still assigned, so its assignments go first.
"""

from __future__ import annotations

import urllib.parse
from typing import Iterator

from cloudtrain.provisioner.contract import CLUSTER_TAG
from cloudtrain.provisioner.leftovers.base import GLOBAL, Leftover, Tagged
from cloudtrain.provisioner.rest import Rest, Transport

API_VERSION = "2022-04-01"
ROLE_PREFIX = "cloudtrain self-deallocate ("
_DEFS = "providers/Microsoft.Authorization/roleDefinitions"


def _group_of(definition: dict, sub: str) -> str | None:
    """The group a cloudtrain role is for, when its name, and its one assignable scope agree on it."""
    props = definition.get("properties") or {}
    name, scopes = str(props.get("roleName", "")), props.get("assignableScopes") or []
    if props.get("type") != "CustomRole" or not name.startswith(ROLE_PREFIX) or not name.endswith(")") or len(scopes) != 1:
        return None
    group = name[len(ROLE_PREFIX):-1]
    return group if str(scopes[0]).lower() == f"/subscriptions/{sub}/resourcegroups/{group}".lower() else None


def definitions(http: Transport, sub: str, arm: str) -> Iterator[tuple[dict, str, str]]:
    """(definition, its group, the cluster its description marks) of each cloudtrain role of `sub`."""
    flt = urllib.parse.quote("type eq 'CustomRole'")
    for page in Rest(http, "Azure").pages(f"{arm}/{_DEFS}?api-version={API_VERSION}&$filter={flt}"):
        for d in page.get("value", []):
            group = _group_of(d, sub)
            text = str((d.get("properties") or {}).get("description", ""))
            if group is not None and text.startswith(f"{CLUSTER_TAG}=") and ":" in text:
                # Deleted at the subscription above its group: the group itself may be gone.
                yield d | {"id": f"/subscriptions/{sub}/{_DEFS}/{d['name']}"}, group, text.removeprefix(f"{CLUSTER_TAG}=").split(":", 1)[0]


def find(http: Transport, sub: str, arm: str, cluster: str, groups: set[str]) -> list[Leftover]:
    """The cluster's roles whose group is in `groups` (being removed) or gone, each after its
    assignments: in deletion order."""
    rest = Rest(http, "Azure")
    roles = [(d, g) for d, g, value in definitions(http, sub, arm) if value == cluster]
    roles = [(d, g) for d, g in roles if g.lower() in {x.lower() for x in groups} or _gone(http, sub, arm, g)]
    if not roles:
        return []
    assigned = [a for page in rest.pages(f"{arm}/subscriptions/{sub}/providers/Microsoft.Authorization/roleAssignments?api-version={API_VERSION}")
                for a in page.get("value", [])]
    out: list[Leftover] = []
    for d, _ in roles:
        mine = [a for a in assigned if str((a.get("properties") or {}).get("roleDefinitionId", "")).lower().endswith(f"/{d['name']}".lower())]
        out += [Leftover("role-assignment", a["name"], GLOBAL, a) for a in mine]
        out.append(Leftover("role-definition", d["properties"]["roleName"], GLOBAL, d))
    return out


def _gone(http: Transport, sub: str, arm: str, group: str) -> bool:
    return http.request("GET", f"{arm}/subscriptions/{sub}/resourcegroups/{group}?api-version=2021-04-01").status == 404


def tagged(http: Transport, sub: str, arm: str) -> list[Tagged]:
    """status --cloud's rows: the roles (free), whatever cluster their marker names."""
    return [Tagged("azure", "role-definition", d["properties"]["roleName"], GLOBAL, "exists", value, "free (a custom role)", GLOBAL)
            for d, _, value in definitions(http, sub, arm)]


def delete(http: Transport, arm: str, left: Leftover) -> str | None:
    """Remove one; None when done or already gone, else ARM's error code."""
    reply = http.request("DELETE", f"{arm}{left.raw['id']}?api-version={API_VERSION}")
    return None if reply.status in (200, 204, 404) else reply.error_code()
