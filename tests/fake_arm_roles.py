"""A fake of ARM's authorization API (learn.microsoft.com/rest/api/authorization, 2022-04-01),
served by FakeArm's server (test_leftovers_rest.py) for every `Microsoft.Authorization` path:
Role Definitions - List of the tenant's custom roles (`$filter=type eq 'CustomRole'`), Role
Assignments - List For Subscription (two per page, `nextLink`), and Delete of either (200 with
the body, 204 when absent). A definition still assigned refuses deletion with 409
RoleDefinitionHasAssignments, as ARM does; assignments outlive their scope here (the worst case).
"""

from __future__ import annotations

from urllib.parse import quote

AUTH = "providers/Microsoft.Authorization"


class FakeRoles:
    def __init__(self, sub: str) -> None:
        self.sub = sub
        self.defs: dict[str, dict] = {}
        self.assignments: dict[str, dict] = {}
        self.url = ""
        self.deleted: list[str] = []  # "definition:<roleName>" / "assignment:<name>", in order

    def define(self, role_name: str, description: str, scopes: list[str], kind: str = "CustomRole") -> str:
        guid = f"0000{len(self.defs):04d}-1111-2222-3333-444444444444"
        self.defs[guid] = {"id": f"/subscriptions/{self.sub}/{AUTH}/roleDefinitions/{guid}", "name": guid, "type": "Microsoft.Authorization/roleDefinitions",
                           "properties": {"roleName": role_name, "type": kind, "description": description, "assignableScopes": scopes,
                                          "permissions": [{"actions": ["Microsoft.Compute/virtualMachines/deallocate/action"], "notActions": []}]}}
        return guid

    def assign(self, definition: str, scope: str) -> str:
        guid = f"aaaa{len(self.assignments):04d}-1111-2222-3333-444444444444"
        self.assignments[guid] = {"id": f"{scope}/{AUTH}/roleAssignments/{guid}", "name": guid, "type": "Microsoft.Authorization/roleAssignments",
                                  "properties": {"roleDefinitionId": f"/subscriptions/{self.sub}/{AUTH}/roleDefinitions/{definition}",
                                                 "principalId": "99999999-0000-0000-0000-000000000000", "principalType": "ServicePrincipal", "scope": scope}}
        return guid

    def handle(self, method: str, path: str, query: dict):
        assert query.get("api-version") == ["2022-04-01"], query
        if method == "GET" and path == f"/{AUTH}/roleDefinitions":
            assert query.get("$filter") == ["type eq 'CustomRole'"], query
            return 200, {"value": [d for d in self.defs.values() if d["properties"]["type"] == "CustomRole"]}, None
        if method == "GET" and path == f"/subscriptions/{self.sub}/{AUTH}/roleAssignments":
            items, start = list(self.assignments.values()), int(query.get("$skipToken", ["0"])[0])
            page: dict = {"value": items[start:start + 2]}
            if start + 2 < len(items):
                page["nextLink"] = f"{self.url}{path}?api-version=2022-04-01&$skipToken={start + 2}"
            return 200, page, None
        if method == "DELETE" and path.startswith(f"/subscriptions/{self.sub}/{AUTH}/roleDefinitions/"):
            guid = path.rsplit("/", 1)[1]
            if guid not in self.defs:
                return 204, None, None
            if any(a["properties"]["roleDefinitionId"].endswith(guid) for a in self.assignments.values()):
                return 409, {"error": {"code": "RoleDefinitionHasAssignments", "message": f"There are existing role assignments referencing role (code: RoleDefinitionHasAssignments). {quote(guid)}"}}, None
            self.deleted.append(f"definition:{self.defs[guid]['properties']['roleName']}")
            return 200, self.defs.pop(guid), None
        if method == "DELETE" and f"/{AUTH}/roleAssignments/" in path:
            guid = path.rsplit("/", 1)[1]
            if guid not in self.assignments:
                return 204, None, None
            self.deleted.append(f"assignment:{guid}")
            return 200, self.assignments.pop(guid), None
        return 404, {"error": {"code": "NotFound", "message": "unknown path"}}, None
