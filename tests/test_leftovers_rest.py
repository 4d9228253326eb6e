"""`down` sweeps by tag on GCP and Azure (issue 10 item 5), against fakes of their REST APIs
served over real HTTP on loopback, with the response shapes of the clouds' references:

- Compute Engine v1 (cloud.google.com/compute/docs/reference/rest/v1): InstanceAggregatedList /
  DiskAggregatedList (`items` keyed by scope, a NO_RESULTS_ON_PAGE warning for empty scopes),
  NetworkList / FirewallList / SubnetworkList / ResourcePolicyList (`items`, `nextPageToken`),
  Operation (`status` RUNNING / DONE), `{operations}/wait`, and the error body
  `{"error": {"code", "message", "errors": [{"reason"}]}}`.
- Azure Resource Manager: Resource Groups - List (`value`, `nextLink`) and - Delete (202 with
  `Location` and `Retry-After`), the Location URL answering 202 then 200 (ARM RPC Addendum,
  "202 Accepted and Location Headers"), and CloudError bodies (`{"error": {"code", "message"}}`).

Each fake holds resources of this cluster, of a cluster whose name extends it, of one whose
name differs only in case, and unmarked ones: only the first set may go.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from fake_arm_roles import FakeRoles
from fake_gcs_iam import FakeGcsIam

from cloudtrain.errors import ProvisionError
from cloudtrain.provisioner import leftovers
from cloudtrain.provisioner.contract import CLUSTER_TAG
from cloudtrain.provisioner.leftovers import azure, gcp
from cloudtrain.provisioner.rest import Bearer, Rest
from cloudtrain.provisioner.preflight import azure as azure_login

P = "proj-1"
GLOBAL = f"https://www.googleapis.com/compute/v1/projects/{P}/global"


def serve(fake):
    """Serve `fake.handle(method, path, query, headers) -> (status, body, headers)` on loopback."""

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            code, body, headers = fake.handle(self.command, url.path, parse_qs(url.query), self.headers)
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_DELETE = do_POST = _serve

        def log_message(self, *a) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _gcp_error(status: int, reason: str, message: str) -> tuple[int, dict, None]:
    return status, {"error": {"code": status, "message": message, "errors": [{"message": message, "domain": "global", "reason": reason}]}}, None


class FakeCompute:
    """Zonal instances/disks (labelled) and global networks/firewalls, regional subnetworks/
    resource policies (description-marked). A deletion completes only when its operation is
    waited on twice (RUNNING, then DONE), and a network or subnetwork still used by another
    resource refuses deletion (resourceInUseByAnotherResource), so order and waiting matter."""

    def __init__(self) -> None:
        self.res: dict[tuple[str, str, str], dict] = {}  # (collection, scope path, name) -> resource
        self.ops: dict[str, dict] = {}
        self.filters: list[str] = []
        self.waits = 0
        self.forbidden: set[str] = set()  # collections whose list answers 403
        self.beyond = FakeGcsIam(P)  # Cloud Storage and IAM, on the same server

    def add(self, plural: str, scope: str, name: str, **fields) -> None:
        link = f"https://www.googleapis.com/compute/v1/projects/{P}/{scope}/{plural}/{name}"
        self.res[(plural, scope, name)] = {"kind": f"compute#{plural[:-1]}", "id": str(len(self.res) + 1000), "name": name, "selfLink": link, **fields}

    def names(self) -> set[str]:
        return {f"{pl}/{name}" for (pl, _, name) in self.res}

    def _users(self, link: str) -> list[str]:
        return [r["selfLink"] for r in self.res.values() if link in (r.get("network"), r.get("subnetwork"))]

    def handle(self, method, path, query, headers):
        if not path.startswith("/compute/"):
            return self.beyond.handle(method, path, query)
        parts = path.strip("/").split("/")
        assert parts[:4] == ["compute", "v1", "projects", P], path
        rest = parts[4:]
        if method == "GET" and rest[0] == "aggregated":
            plural, flt = rest[1], query["filter"][0]
            self.filters.append(flt)
            key, _, value = flt.partition("=")
            items: dict[str, dict] = {"zones/europe-west4-a": {"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "There are no results for scope 'zones/europe-west4-a' on this page."}}}
            for (pl, scope, _), r in sorted(self.res.items()):
                if pl == plural and (r.get("labels") or {}).get(key.removeprefix("labels.")) == value.strip('"'):
                    items.setdefault(scope, {plural: []})[plural].append(r)
            return 200, {"kind": f"compute#{plural[:-1]}AggregatedList", "id": f"projects/{P}/aggregated/{plural}", "items": items}, None
        scope = "/".join(rest[:1] if rest[0] == "global" else rest[:2])
        tail = rest[len(scope.split("/")):]
        if method == "GET" and len(tail) == 1 and tail[0] in self.forbidden:
            return _gcp_error(403, "forbidden", f"Required 'compute.{tail[0]}.list' permission for 'projects/{P}'")
        if method == "GET" and len(tail) == 1:  # list, two per page
            mine = [r for (pl, sc, _), r in sorted(self.res.items()) if pl == tail[0] and sc == scope]
            start = int(query.get("pageToken", ["0"])[0])
            page = {"kind": f"compute#{tail[0][:-1]}List", "id": f"projects/{P}/{scope}/{tail[0]}", "items": mine[start:start + 2]}
            if start + 2 < len(mine):
                page["nextPageToken"] = str(start + 2)
            return 200, page, None
        if method == "DELETE" and len(tail) == 2:
            key = (tail[0], scope, tail[1])
            if key not in self.res:
                return _gcp_error(404, "notFound", f"The resource 'projects/{P}/{scope}/{tail[0]}/{tail[1]}' was not found")
            users = self._users(self.res[key]["selfLink"])
            if users:
                return _gcp_error(400, "resourceInUseByAnotherResource", f"The {tail[0][:-1]} resource '{self.res[key]['selfLink']}' is already being used by '{users[0]}'")
            op = {"kind": "compute#operation", "name": f"operation-{len(self.ops)}", "operationType": "delete", "targetLink": self.res[key]["selfLink"], "status": "RUNNING", "progress": 0}
            self.ops[op["name"]] = {"op": op, "key": key, "polls": 0, "scope": scope}
            return 200, op, None
        if method == "POST" and tail[:1] == ["operations"] and tail[2:] == ["wait"]:
            entry = self.ops[tail[1]]
            assert entry["scope"] == scope, f"operation of {entry['scope']} waited on in {scope}"
            self.waits += 1
            entry["polls"] += 1
            if entry["polls"] < 2:
                return 200, entry["op"], None
            self.res.pop(entry["key"], None)
            for d in entry["op"].get("disks", []):
                self.res.pop(("disks", scope, d), None)
            return 200, entry["op"] | {"status": "DONE", "progress": 100}, None
        return _gcp_error(404, "notFound", "unknown path")


@pytest.fixture
def compute():
    fake = FakeCompute()
    server, url = serve(fake)
    fake.api = f"{url}/compute/v1"
    yield fake
    server.shutdown()
    server.server_close()


def plant_gcp(fake: FakeCompute, cluster: str, labelled: bool = True) -> None:
    """One of each kind the GCP program makes, wired as it wires them."""
    mark = f"{CLUSTER_TAG}={cluster}"
    net = f"{GLOBAL}/networks/{cluster}-net"
    fake.add("networks", "global", f"{cluster}-net", description=mark, autoCreateSubnetworks=False)
    fake.add("subnetworks", "regions/us-central1", f"{cluster}-subnet", description=mark, network=net, ipCidrRange="10.0.0.0/24")
    fake.add("firewalls", "global", f"{cluster}-ssh", description=f"{mark}: ssh from 203.0.113.7/32", network=net)
    fake.add("firewalls", "global", f"{cluster}-intra", description=f"{mark}: all traffic between the nodes", network=net)
    fake.add("resourcePolicies", "regions/us-central1", f"{cluster}-placement", description=mark, status="READY")
    labels = {CLUSTER_TAG: cluster, "managed-by": "cloudtrain"} if labelled else {}
    fake.add("instances", "zones/us-central1-a", f"{cluster}-0", labels=labels, network=net,
             subnetwork=f"https://www.googleapis.com/compute/v1/projects/{P}/regions/us-central1/subnetworks/{cluster}-subnet")
    fake.add("disks", "zones/us-central1-a", f"{cluster}-data", labels=labels)


def test_gcp_sweep_removes_the_marked_networks_firewalls_subnets_and_policies_in_dependency_order(compute):
    plant_gcp(compute, "g1")
    before = compute.names()
    plant_gcp(compute, "g1-other")  # a name that extends ours: its marker starts with ours
    plant_gcp(compute, "G1")
    compute.add("networks", "global", "default", description="Default network for the project")
    compute.add("firewalls", "global", "g1-by-hand", description="not cloudtrain's", network=f"{GLOBAL}/networks/default")
    compute.add("subnetworks", "regions/us-east1", "g1-subnet-east", description=f"{CLUSTER_TAG}=g1", network=f"{GLOBAL}/networks/default")
    others = compute.names() - before

    http = Bearer("ya29.test")  # the real transport; the fake API does not check the token
    found, unchecked = gcp.find("g1", "us-central1", http=http, project=P, api=compute.api)
    assert unchecked == []
    assert [(x.kind, x.id, x.region) for x in found] == [
        ("instance", "g1-0", "us-central1-a"), ("disk", "g1-data", "us-central1-a"),
        ("firewall", "g1-intra", "global"), ("firewall", "g1-ssh", "global"),
        ("subnetwork", "g1-subnet", "us-central1"), ("resource-policy", "g1-placement", "us-central1"),
        ("network", "g1-net", "global"),
    ]
    assert gcp.remove(found, http=http, project=P, api=compute.api) == []
    assert compute.names() == others, "the sweep removed too little or touched another cluster's resources"
    assert compute.waits == 2 * len(found)  # each operation polled until DONE


def test_gcp_a_network_that_cannot_be_removed_fails_down_with_what_remains(compute, monkeypatch):
    plant_gcp(compute, "g9")
    # A firewall rule someone added by hand to our network blocks the network's deletion.
    compute.add("firewalls", "global", "hand-made", description="", network=f"{GLOBAL}/networks/g9-net")
    http = Bearer("ya29.test")  # the real transport; the fake API does not check the token
    monkeypatch.setattr(gcp, "_client", lambda h, p: (Rest(http, "GCP"), P))
    monkeypatch.setattr(gcp, "API", compute.api)
    said: list[str] = []
    with pytest.raises(ProvisionError) as e:
        leftovers.sweep("gcp", "g9", "us-central1", said.append)
    line = e.value.line()
    assert "could not remove 1 leftover(s) of cluster g9: network g9-net in global (HTTP 400 resourceInUseByAnotherResource)" in line
    assert "cloudtrain down --cluster g9" in line and "description~^cloudtrain-cluster=g9" in line
    assert compute.names() == {"networks/g9-net", "firewalls/hand-made"}
    assert "g9-subnet" in said[0] and "g9-placement" in said[0]


def test_gcp_sweep_removes_the_labelled_instances_and_disks_of_the_region_only(compute):
    label = {CLUSTER_TAG: "g1", "managed-by": "cloudtrain"}
    compute.add("instances", "zones/us-central1-a", "g1-0", labels=label)
    compute.add("disks", "zones/us-central1-b", "g1-data", labels=label)
    compute.add("instances", "zones/us-east1-b", "g1-elsewhere", labels=label)  # another region
    compute.add("instances", "zones/us-central1-a", "g1-other-0", labels={CLUSTER_TAG: "g1-other"})
    compute.add("instances", "zones/us-central1-a", "unlabelled", labels={})
    http = Bearer("ya29.test")  # the real transport; the fake API does not check the token
    found, _ = gcp.find("g1", "us-central1", http=http, project=P, api=compute.api)
    assert [(x.kind, x.id, x.region) for x in found] == [("instance", "g1-0", "us-central1-a"), ("disk", "g1-data", "us-central1-b")]
    assert compute.filters == [f'labels.{CLUSTER_TAG}="g1"'] * 2
    assert gcp.remove(found, http=http, project=P, api=compute.api) == []
    assert compute.names() == {"instances/g1-elsewhere", "instances/g1-other-0", "instances/unlabelled"}


def test_gcp_a_free_kind_that_cannot_be_listed_is_a_warning_and_the_rest_is_swept(compute, monkeypatch):
    plant_gcp(compute, "g5")
    compute.forbidden.add("resourcePolicies")
    http = Bearer("ya29.test")  # the real transport; the fake API does not check the token
    monkeypatch.setattr(gcp, "_client", lambda h, p: (Rest(http, "GCP"), P))
    monkeypatch.setattr(gcp, "API", compute.api)
    said: list[str] = []
    leftovers.sweep("gcp", "g5", "us-central1", said.append)
    assert said[0].startswith("warning: could not look for resourcePolicies (HTTP 403 forbidden) tagged g5 in us-central1")
    assert compute.names() == {"resourcePolicies/g5-placement"}


# --- Azure Resource Manager ------------------------------------------------------------------

SUB = "00000000-0000-0000-0000-0000000000aa"


class FakeArm:
    """Resource groups of a subscription. Deleting one answers 202 with a Location that answers
    202 for `polls` GETs, then 200 and the group is gone; a locked group refuses with 409."""

    def __init__(self, polls: int = 2) -> None:
        self.groups: dict[str, dict] = {}
        self.locked: set[str] = set()
        self.pending: dict[str, list] = {}  # operation token -> [group name, polls left]
        self.polls = polls
        self.async_fail: set[str] = set()  # groups whose delete is tracked by Azure-AsyncOperation, and fails
        self.filters: list[str] = []
        self.tokens: set[str] = set()
        self.url = ""
        self.link_base = None  # where nextLink points; None: this server
        self.roles = FakeRoles(SUB)  # the authorization API, on the same server

    def add(self, name: str, location: str, tags: dict[str, str]) -> None:
        self.groups[name] = {
            "id": f"/subscriptions/{SUB}/resourceGroups/{name}", "name": name, "type": "Microsoft.Resources/resourceGroups",
            "location": location, "managedBy": None, "tags": tags, "properties": {"provisioningState": "Succeeded"},
        }

    def handle(self, method, path, query, headers):
        self.tokens.add(headers.get("Authorization", ""))
        if "/providers/Microsoft.Authorization/" in path:
            self.roles.url = self.url
            return self.roles.handle(method, path, query)
        assert query.get("api-version") == ["2021-04-01"], query
        parts = path.strip("/").split("/")
        assert parts[:2] == ["subscriptions", SUB], path
        if method == "GET" and len(parts) == 4 and parts[2].lower() == "resourcegroups":  # Resource Groups - Get
            group = next((g for n, g in self.groups.items() if n.lower() == parts[3].lower()), None)
            if group is None:
                return 404, {"error": {"code": "ResourceGroupNotFound", "message": f"Resource group '{parts[3]}' could not be found."}}, None
            return 200, group, None
        if method == "GET" and parts[2:] == ["resourcegroups"]:
            flt = query["$filter"][0]
            self.filters.append(flt)
            # Tag filters are not case-sensitive on the value here (the worst case for the sweep).
            want = flt.split("tagValue eq ", 1)[1].strip("'").lower()
            match = [g for g in self.groups.values() if any(k.lower() == CLUSTER_TAG and v.lower() == want for k, v in g["tags"].items())]
            start = int(query.get("$skiptoken", ["0"])[0])
            page: dict = {"value": match[start:start + 2]}
            if start + 2 < len(match):
                page["nextLink"] = f"{self.link_base or self.url}{path}?api-version=2021-04-01&$filter={quote(flt)}&$skiptoken={start + 2}"
            return 200, page, None
        if method == "DELETE" and parts[2].lower() == "resourcegroups":
            name = parts[3]
            if name in self.locked:
                msg = f"The scope '/subscriptions/{SUB}/resourcegroups/{name}' cannot perform delete operation because following scope(s) are locked: '/subscriptions/{SUB}/resourceGroups/{name}'. Please remove the lock and try again."
                return 409, {"error": {"code": "ScopeLocked", "message": msg}}, None
            if name not in self.groups:
                return 404, {"error": {"code": "ResourceGroupNotFound", "message": f"Resource group '{name}' could not be found."}}, None
            token = f"eyJqb2JJZCI6IlJFU09VUkNFR1JPVVBERUxFVElPTkpPQi0{len(self.pending)}"
            self.pending[token] = [name, self.polls]
            if name in self.async_fail:
                op = f"{self.url}/subscriptions/{SUB}/providers/Microsoft.Resources/operations/{token}?api-version=2021-04-01"
                return 202, None, {"Azure-AsyncOperation": op, "Retry-After": "0"}
            loc = f"{self.url}/subscriptions/{SUB}/operationresults/{token}?api-version=2021-04-01"
            return 202, None, {"Location": loc, "Retry-After": "0"}
        if method == "GET" and parts[2:4] == ["providers", "Microsoft.Resources"]:  # Azure-AsyncOperation status
            entry = self.pending[parts[5]]
            if entry[1] > 0:
                entry[1] -= 1
                return 200, {"id": path, "name": parts[5], "status": "InProgress"}, {"Retry-After": "0"}
            # The code's value is illustrative: cloudtrain names whatever code the operation reports.
            error = {"code": "ResourceGroupDeletionBlocked", "message": f"Deletion of resource group '{entry[0]}' failed as resources with identifiers could not be deleted."}
            return 200, {"id": path, "name": parts[5], "status": "Failed", "error": error}, None
        if method == "GET" and parts[2] == "operationresults":
            entry = self.pending[parts[3]]
            if entry[1] > 0:
                entry[1] -= 1
                return 202, None, {"Location": f"{self.url}{path}?api-version=2021-04-01", "Retry-After": "0"}
            self.groups.pop(entry[0], None)
            return 200, None, None
        return 404, {"error": {"code": "NotFound", "message": "unknown path"}}, None


@pytest.fixture
def arm(monkeypatch):
    fake = FakeArm()
    server, fake.url = serve(fake)
    monkeypatch.setattr(azure, "ARM", fake.url, raising=False)
    monkeypatch.setenv("ARM_SUBSCRIPTION_ID", SUB)
    monkeypatch.setenv("ARM_CLIENT_ID", "client")
    monkeypatch.setenv("ARM_CLIENT_SECRET", "secret")
    monkeypatch.setattr(azure_login, "token", lambda sub: f"token-for-{sub}")  # the one call that would leave this machine
    yield fake
    server.shutdown()
    server.server_close()


def test_azure_sweep_deletes_exactly_the_tagged_groups_of_the_region_and_polls_each_deletion(arm):
    for name in ("z1-rg1", "z1-rg2", "z1-rg3"):
        arm.add(name, "eastus", {CLUSTER_TAG: "z1", "managed-by": "cloudtrain"})
    arm.add("z1-upper", "eastus", {CLUSTER_TAG: "Z1"})
    arm.add("z1-other", "eastus", {CLUSTER_TAG: "z1-other"})
    arm.add("z1-west", "westus2", {CLUSTER_TAG: "z1"})
    arm.add("untagged", "eastus", {})
    said: list[str] = []
    leftovers.sweep("azure", "z1", "eastus", said.append)
    assert sorted(arm.groups) == ["untagged", "z1-other", "z1-upper", "z1-west"]
    assert arm.filters[0] == f"tagName eq '{CLUSTER_TAG}' and tagValue eq 'z1'" and len(arm.filters) == 3  # two pages followed
    assert all(left == 0 for _, left in arm.pending.values()) and len(arm.pending) == 3  # each Location polled to its end
    assert arm.tokens == {f"Bearer token-for-{SUB}"}
    assert "resource-group z1-rg1 in eastus" in said[0]
    assert azure.find("z1", "eastus")[0] == []  # a second down finds nothing


def test_azure_a_locked_group_fails_down_naming_it_and_the_others_still_go(arm):
    arm.add("z2-locked", "eastus", {CLUSTER_TAG: "z2"})
    arm.add("z2-free", "eastus", {CLUSTER_TAG: "z2"})
    arm.locked.add("z2-locked")
    with pytest.raises(ProvisionError) as e:
        leftovers.sweep("azure", "z2", "eastus", lambda s: None)
    line = e.value.line()
    assert "could not remove 1 leftover(s) of cluster z2: resource-group z2-locked in eastus (ScopeLocked)" in line
    assert "az group list --tag cloudtrain-cluster=z2" in line and "cloudtrain down --cluster z2" in line
    assert sorted(arm.groups) == ["z2-locked"]


def test_azure_a_deletion_that_never_ends_is_bounded_and_named(arm):
    arm.polls = 10**6
    arm.add("z3-slow", "eastus", {CLUSTER_TAG: "z3"})
    found, _ = azure.find("z3", "eastus")
    slept: list[float] = []
    failed = azure.remove(found, wait_s=5, sleep=slept.append)
    assert failed == ["resource-group z3-slow in eastus (still deleting after 5 s)"]
    assert len(slept) == 5 and "z3-slow" in arm.groups


def test_azure_an_async_operation_that_fails_is_polled_to_its_end_and_named(arm):
    arm.add("z4-stuck", "eastus", {CLUSTER_TAG: "z4"})
    arm.async_fail.add("z4-stuck")
    found, _ = azure.find("z4", "eastus")
    slept: list[float] = []
    assert azure.remove(found, sleep=slept.append) == ["resource-group z4-stuck in eastus (ResourceGroupDeletionBlocked)"]
    assert len(slept) == 3 and all(left == 0 for _, left in arm.pending.values())  # two InProgress answers, then Failed


def test_azure_a_next_link_off_resource_manager_is_not_followed_with_the_token(arm):
    for i in range(3):
        arm.add(f"z5-rg{i}", "eastus", {CLUSTER_TAG: "z5"})
    arm.link_base = "http://127.0.0.2:9"  # the bearer token must not travel to another host
    with pytest.raises(ProvisionError) as e:
        leftovers.sweep("azure", "z5", "eastus", lambda s: None)
    assert "could not look for leftovers tagged z5 in eastus (RuntimeError: Azure answered with a link outside" in e.value.line()
    assert len(arm.groups) == 3 and len(arm.filters) == 1
