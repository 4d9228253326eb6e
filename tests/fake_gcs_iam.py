"""A fake of the two Google APIs the GCP sweep asks beside Compute, served by FakeCompute's
server (test_leftovers_rest.py) for every path outside /compute/, shaped like the references:

- Cloud Storage JSON API v1 (cloud.google.com/storage/docs/json_api/v1): Buckets - List
  (`GET /storage/v1/b?project=&prefix=` -> `{"kind": "storage#buckets", "items", "nextPageToken"}`),
  Objects - List (`GET /b/{bucket}/o`, noncurrent generations only with `versions=true`),
  Objects - Delete (`DELETE /b/{bucket}/o/{object}?generation=`, 204), Buckets - Delete (204; 409
  `conflict` "The bucket you tried to delete is not empty." while any generation remains).
- IAM v1 (cloud.google.com/iam/docs/reference/rest/v1/projects.serviceAccounts): List
  (`{"accounts", "nextPageToken"}`; `{}` when none), Delete (`{}`; 404 NOT_FOUND).
Lists answer two per page, so paging is followed.
"""

from __future__ import annotations

from urllib.parse import unquote


def _error(status: int, reason: str, message: str) -> tuple[int, dict, None]:
    return status, {"error": {"code": status, "message": message, "errors": [{"message": message, "domain": "global", "reason": reason}]}}, None


def _page(items: list[dict], query: dict, key: str, kind: str | None) -> dict:
    start = int(query.get("pageToken", ["0"])[0])
    page: dict = {"kind": kind} if kind else {}
    if items[start:start + 2]:
        page[key] = items[start:start + 2]
    if start + 2 < len(items):
        page["nextPageToken"] = str(start + 2)
    return page


class FakeGcsIam:
    def __init__(self, project: str) -> None:
        self.project = project
        self.buckets: dict[str, dict] = {}
        self.objects: dict[str, list[dict]] = {}  # bucket -> generations; "live" marks the current one
        self.accounts: dict[str, dict] = {}
        self.deleted: list[str] = []  # what was deleted, in order: "bucket:x", "account:y"

    def bucket(self, name: str, location: str, labels: dict[str, str], objects: dict[str, int] | None = None) -> None:
        """A bucket whose objects each have `n` generations (the newest live)."""
        self.buckets[name] = {"kind": "storage#bucket", "id": name, "name": name, "projectNumber": "123456789", "location": location.upper(),
                              "locationType": "region", "storageClass": "STANDARD", "labels": labels, "versioning": {"enabled": True}}
        gens = self.objects.setdefault(name, [])
        for obj, n in (objects or {}).items():
            for g in range(n):
                gens.append({"kind": "storage#object", "name": obj, "bucket": name, "generation": str(1700000000000000 + len(gens)), "size": "7", "live": g == n - 1})

    def account(self, account_id: str, description: str, display: str = "") -> str:
        email = f"{account_id}@{self.project}.iam.gserviceaccount.com"
        self.accounts[email] = {"name": f"projects/{self.project}/serviceAccounts/{email}", "projectId": self.project, "uniqueId": str(100000 + len(self.accounts)),
                                "email": email, "displayName": display, "description": description, "etag": "MDEwMjE5MjA=", "oauth2ClientId": "1"}
        return email

    def handle(self, method: str, path: str, query: dict):
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["storage", "v1"]:
            return self._storage(method, parts[2:], query)
        if parts[:3] == ["v1", "projects", self.project] and parts[3:4] == ["serviceAccounts"]:
            if method == "GET" and len(parts) == 4:
                return 200, _page(sorted(self.accounts.values(), key=lambda a: a["email"]), query, "accounts", None), None
            if method == "DELETE" and len(parts) == 5:
                if parts[4] not in self.accounts:
                    return 404, {"error": {"code": 404, "message": f"Service account projects/{self.project}/serviceAccounts/{parts[4]} does not exist.", "status": "NOT_FOUND"}}, None
                del self.accounts[parts[4]]
                self.deleted.append(f"account:{parts[4]}")
                return 200, {}, None
        return _error(404, "notFound", "unknown path")

    def _storage(self, method: str, rest: list[str], query: dict):
        if method == "GET" and rest == ["b"]:
            assert query.get("project") == [self.project], query
            prefix = query.get("prefix", [""])[0]
            return 200, _page([b for n, b in sorted(self.buckets.items()) if n.startswith(prefix)], query, "items", "storage#buckets"), None
        if rest[:1] != ["b"] or len(rest) < 2 or rest[1] not in self.buckets:
            return _error(404, "notFound", "The specified bucket does not exist.")
        name, gens = rest[1], self.objects[rest[1]]
        if method == "GET" and rest[2:] == ["o"]:
            shown = gens if query.get("versions") == ["true"] else [g for g in gens if g["live"]]
            return 200, _page([{k: v for k, v in g.items() if k != "live"} for g in shown], query, "items", "storage#objects"), None
        if method == "DELETE" and len(rest) == 4 and rest[2] == "o":
            want = query.get("generation", [None])[0]
            hit = [g for g in gens if g["name"] == rest[3] and (g["generation"] == want if want else g["live"])]
            if not hit:
                return _error(404, "notFound", "No such object.")
            gens.remove(hit[0])
            return 204, None, None
        if method == "DELETE" and len(rest) == 2:
            if gens:
                return _error(409, "conflict", "The bucket you tried to delete is not empty.")
            del self.buckets[name]
            self.deleted.append(f"bucket:{name}")
            return 204, None, None
        return _error(404, "notFound", "unknown path")
