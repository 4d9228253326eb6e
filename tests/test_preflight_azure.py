"""Azure pre-flight against a fake Azure Resource Manager.

The fake answers GETs with bodies shaped like ARM's own responses, as the REST reference shows them:
  Resource Skus - List    https://learn.microsoft.com/en-us/rest/api/compute/resource-skus/list
                          (value[]: resourceType, name, tier, size, family, locations, locationInfo,
                          capabilities[{name, value}], restrictions[{type, values, restrictionInfo,
                          reasonCode}])
  Usage - List            https://learn.microsoft.com/en-us/rest/api/compute/usage/list
                          (value[]: unit, currentValue, limit, name{value, localizedValue})
  Virtual Machine Images - List
                          https://learn.microsoft.com/en-us/rest/api/compute/virtual-machine-images/list
                          (a JSON array of {location, name, id})
  Permissions          GET /subscriptions/{id}/providers/Microsoft.Authorization/permissions
                          (value[]: {actions, notActions, dataActions, notDataActions}, nextLink),
                          as Microsoft documents the call and its answer ("Use Resource Manager
                          authentication API to access subscriptions", MicrosoftDocs/azure-docs
                          articles/azure-resource-manager/resource-manager-api-authentication.md:
                          {"value":[{"actions":["*"],"notActions":["Microsoft.Authorization/*/Write",
                          "Microsoft.Authorization/*/Delete"]},{"actions":["*/read"],"notActions":[]}]})
and ARM's error body {"error": {"code", "message"}} (404 NotFound for an image that is not
published). The token comes from a stand-in `az` on PATH, a real process, printing what
`az account get-access-token` prints. Nothing is created anywhere: pre-flight only reads.
"""

from __future__ import annotations

import json
import socket
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from cloudtrain import catalog
from cloudtrain.errors import NotOffered, PreflightError, QuotaExceeded
from cloudtrain.provisioner.preflight import azure
from cloudtrain.provisioner.rest import error_from_body
from cloudtrain.spec import ClusterSpec

SUB = "00000000-0000-0000-0000-00000000000a"
ARM = azure.ARM


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    def refuse(*a, **k):
        raise AssertionError("test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    for var in ("ARM_SUBSCRIPTION_ID", "AZURE_SUBSCRIPTION_ID", "ARM_CLIENT_ID", "ARM_CLIENT_SECRET", "ARM_TENANT_ID", "ARM_USE_MSI", "ARM_USE_OIDC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "no-azure"))
    monkeypatch.setattr(azure, "_tokens", {})


class FakeArm:
    """GET path -> the stored body; an unknown path -> ARM's 404."""

    def __init__(self) -> None:
        self.bodies: dict[str, object] = {}
        self.calls: list[str] = []

    def put(self, path: str, body) -> None:
        self.bodies[path] = body

    def get(self, url: str):
        path = url.removeprefix(ARM)
        self.calls.append(path)
        base = path.split("?", 1)[0]
        body = self.bodies.get(base)
        if body is None:
            raise error_from_body(404, json.dumps({"error": {"code": "NotFound", "message": "Artifact: VMImage was not found."}}).encode())
        if isinstance(body, Exception):
            raise body
        return body


def sku(name: str, family: str, loc: str, vcpus: int, restrictions: list[dict] | None = None) -> dict:
    return {
        "resourceType": "virtualMachines",
        "name": name,
        "tier": "Standard",
        "size": name.removeprefix("Standard_"),
        "family": family,
        "locations": [loc],
        "locationInfo": [{"location": loc, "zones": ["1", "2", "3"], "zoneDetails": []}],
        "capabilities": [
            {"name": "vCPUs", "value": str(vcpus)},
            {"name": "MemoryGB", "value": "28"},
            {"name": "GPUs", "value": "1"},
            {"name": "HyperVGenerations", "value": "V1,V2"},
            {"name": "LowPriorityCapable", "value": "True"},
        ],
        "restrictions": restrictions or [],
    }


def other_sku(loc: str) -> dict:
    return {
        "resourceType": "disks",
        "name": "Premium_LRS",
        "tier": "Premium",
        "kind": "Disks",
        "locations": [loc],
        "locationInfo": [{"location": loc, "zones": ["1", "2", "3"]}],
        "capabilities": [{"name": "MaxSizeGiB", "value": "4"}],
        "restrictions": [],
    }


def usage(value: str, localized: str, current: int, limit: int) -> dict:
    return {"unit": "Count", "currentValue": current, "limit": limit, "name": {"value": value, "localizedValue": localized}}


def choose(gpu="t4", **kw):
    name, _, count = gpu.partition(":")
    spec = ClusterSpec(name="p1", provider="azure", gpu=name, gpu_count=int(count or 1), ssh_cidr="198.51.100.7/32", **kw)
    # A fixed placement, so the catalog's region order does not matter to these tests.
    return spec, replace(catalog.choose(spec), region="eastus2", zone=None)


def skus_path(loc: str) -> str:
    return f"/subscriptions/{SUB}/providers/Microsoft.Compute/skus"


def usages_path(loc: str) -> str:
    return f"/subscriptions/{SUB}/providers/Microsoft.Compute/locations/{loc}/usages"


def permissions_path() -> str:
    return f"/subscriptions/{SUB}/providers/Microsoft.Authorization/permissions"


def grant(actions: list[str], not_actions: list[str] | None = None) -> dict:
    return {"actions": actions, "notActions": not_actions or [], "dataActions": [], "notDataActions": []}


OWNER = grant(["*"])
# The documented example answer: Contributor (everything but Microsoft.Authorization writes) and Reader.
CONTRIBUTOR_AND_READER = [grant(["*"], ["Microsoft.Authorization/*/Write", "Microsoft.Authorization/*/Delete"]), grant(["*/read"])]


def ready(c, *, family=(0, 100), cores=(0, 100), low=(0, 100), restrictions=None, permissions=(OWNER,)) -> FakeArm:
    fake = FakeArm()
    loc = c.region
    fake.put(permissions_path(), {"value": list(permissions)})
    fake.put(skus_path(loc), {"value": [other_sku(loc), sku(c.offer.instance_type, "standardNCASv3_T4Family", loc, c.offer.vcpus, restrictions)]})
    fake.put(usages_path(loc), {"value": [
        usage("availabilitySets", "Availability Sets", 0, 2500),
        usage("cores", "Total Regional vCPUs", *cores),
        usage("lowPriorityCores", "Total Regional Low-priority vCPUs", *low),
        usage("standardNCASv3_T4Family", "Standard NCASv3_T4 Family vCPUs", *family),
    ]})
    publisher, offer, image_sku, _ = c.image.ref.split(":")
    fake.put(
        f"/subscriptions/{SUB}/providers/Microsoft.Compute/locations/{loc}/publishers/{publisher}/artifacttypes/vmimage/offers/{offer}/skus/{image_sku}/versions",
        [{"location": loc, "name": "22.04.202611010",
          "id": f"/Subscriptions/{SUB}/Providers/Microsoft.Compute/Locations/{loc}/Publishers/{publisher}/ArtifactTypes/VMImage/Offers/{offer}/Skus/{image_sku}/Versions/22.04.202611010"}],
    )
    return fake


def test_everything_in_place_passes_and_names_the_subscription():
    spec, c = choose("t4")
    fake = ready(c)
    assert azure.check(spec, c, arm=fake, subscription_id=SUB) == (c, {"azure-native:subscriptionId": SUB})
    assert "$filter=location%20eq%20%27eastus2%27" in next(p for p in fake.calls if "/skus" in p)  # only this region's SKUs


def test_size_absent_from_the_region_is_not_offered():
    spec, c = choose("t4")
    fake = ready(c)
    fake.put(skus_path(c.region), {"value": [other_sku(c.region)]})
    with pytest.raises(NotOffered) as e:
        azure.check(spec, c, arm=fake, subscription_id=SUB)
    assert e.value.placement == "eastus2" and "Standard_NC4as_T4_v3 is not offered in eastus2" in e.value.line()
    assert any(r in e.value.line() for r in c.offer.locations if r != "eastus2")  # where else to look


def test_location_restriction_for_the_subscription_is_not_offered():
    spec, c = choose("t4")
    restriction = {"type": "Location", "values": ["eastus2"], "restrictionInfo": {"locations": ["eastus2"]}, "reasonCode": "NotAvailableForSubscription"}
    fake = ready(c, restrictions=[restriction])
    with pytest.raises(NotOffered) as e:
        azure.check(spec, c, arm=fake, subscription_id=SUB)
    line = e.value.line()
    assert "restricted in eastus2 for this subscription (NotAvailableForSubscription)" in line and "Azure support" in line


def test_zone_restriction_blocks_only_when_it_covers_every_zone():
    spec, c = choose("t4")
    some = {"type": "Zone", "values": ["eastus2"], "restrictionInfo": {"locations": ["eastus2"], "zones": ["1", "3"]}, "reasonCode": "NotAvailableForSubscription"}
    assert azure.check(spec, c, arm=ready(c, restrictions=[some]), subscription_id=SUB)[0] == c
    every = {**some, "restrictionInfo": {"locations": ["eastus2"], "zones": ["1", "2", "3"]}}
    with pytest.raises(NotOffered):
        azure.check(spec, c, arm=ready(c, restrictions=[every]), subscription_id=SUB)


def test_family_quota_short_is_quota_exceeded_with_the_portal_page():
    spec, c = choose("t4", nodes=2)  # 2 x 4 vCPUs
    with pytest.raises(QuotaExceeded) as e:
        azure.check(spec, c, arm=ready(c, family=(0, 4)), subscription_id=SUB)
    line = e.value.line()
    assert "need 8 vCPUs" in line and "'Standard NCASv3_T4 Family vCPUs' (standardNCASv3_T4Family) in eastus2 has 4 free of 4" in line
    assert azure.QUOTA_PAGE in line


def test_regional_total_short_is_quota_exceeded():
    spec, c = choose("t4")
    with pytest.raises(QuotaExceeded, match="Total Regional vCPUs"):
        azure.check(spec, c, arm=ready(c, cores=(8, 10)), subscription_id=SUB)


def test_spot_reads_the_low_priority_quota_only():
    spec, c = choose("t4", spot=True)
    # The family quota at 0 does not matter to Spot VMs; the low-priority one does.
    assert azure.check(spec, c, arm=ready(c, family=(0, 0), cores=(0, 0)), subscription_id=SUB)[0] == c
    with pytest.raises(QuotaExceeded, match="lowPriorityCores"):
        azure.check(spec, c, arm=ready(c, low=(0, 3)), subscription_id=SUB)


def test_missing_image_is_refused():
    spec, c = choose("t4")
    fake = ready(c)
    for path in [p for p in fake.bodies if p.endswith("/versions")]:
        fake.bodies[path] = []  # the SKU exists but has no version in this region
    with pytest.raises(PreflightError) as e:
        azure.check(spec, c, arm=fake, subscription_id=SUB)
    assert f"the Azure image {c.image.ref} is not published in eastus2" in e.value.line()
    fake = ready(c)
    for path in [p for p in fake.bodies if p.endswith("/versions")]:
        del fake.bodies[path]  # 404 NotFound
    with pytest.raises(PreflightError, match="not published"):
        azure.check(spec, c, arm=fake, subscription_id=SUB)


def test_arm_refusal_is_one_line():
    spec, c = choose("t4")
    fake = ready(c)
    fake.put(skus_path(c.region), error_from_body(403, json.dumps({"error": {
        "code": "AuthorizationFailed",
        "message": f"The client 'x' with object id 'y' does not have authorization to perform action 'Microsoft.Compute/skus/read' over scope '/subscriptions/{SUB}'",
    }}).encode()))
    with pytest.raises(PreflightError) as e:
        azure.check(spec, c, arm=fake, subscription_id=SUB)
    assert "(AuthorizationFailed)" in e.value.line() and "Reader role" in e.value.line()
    assert not isinstance(e.value, (NotOffered, QuotaExceeded))


# --- the rights `up` needs to let each VM deallocate itself --------------------------------


def test_contributor_alone_is_refused_before_anything_region_specific_naming_both_rights():
    spec, c = choose("t4")
    fake = ready(c, permissions=CONTRIBUTOR_AND_READER)
    with pytest.raises(PreflightError) as e:
        azure.check(spec, c, arm=fake, subscription_id=SUB)
    line = e.value.line()
    assert "lacks Microsoft.Authorization/roleDefinitions/write and Microsoft.Authorization/roleAssignments/write" in line
    assert "Owner or User Access Administrator" in line and f"--scope /subscriptions/{SUB}" in line and "\n" not in line
    assert not isinstance(e.value, (NotOffered, QuotaExceeded))  # failover must not try another region
    assert fake.calls == [permissions_path() + "?api-version=2022-04-01"]  # asked first, and only read


def test_rights_match_case_insensitively_with_wildcards_across_pages():
    spec, c = choose("t4")

    class Paged(FakeArm):
        """The first page ends in a nextLink, as the permissions API's pageable answer does."""

        def get(self, url: str):
            if "permissions" in url and "$skiptoken" not in url:
                self.calls.append(url.removeprefix(ARM))
                return {"value": CONTRIBUTOR_AND_READER, "nextLink": f"{ARM}{permissions_path()}?api-version=2022-04-01&$skiptoken=2"}
            return super().get(url)

    fake = Paged()
    fake.bodies.update(ready(c).bodies)
    # User Access Administrator's kind of grant, spelled in another case, on the second page.
    fake.put(permissions_path(), {"value": [grant(["*/read", "microsoft.authorization/*"])]})
    assert azure.check(spec, c, arm=fake, subscription_id=SUB)[0] == c
    assert sum("permissions" in p for p in fake.calls) == 2


def test_an_api_version_arm_refuses_at_subscription_scope_falls_back_to_the_documented_one():
    spec, c = choose("t4")

    class OldVersionOnly(FakeArm):
        def get(self, url: str):
            if "permissions" in url and "2022-04-01" in url:
                self.calls.append(url.removeprefix(ARM))
                raise error_from_body(400, json.dumps({"error": {"code": "InvalidApiVersionParameter", "message": "The api-version '2022-04-01' is invalid."}}).encode())
            return super().get(url)

    fake = OldVersionOnly()
    fake.bodies.update(ready(c, permissions=CONTRIBUTOR_AND_READER).bodies)
    with pytest.raises(PreflightError, match="lacks Microsoft.Authorization/roleDefinitions/write"):
        azure.check(spec, c, arm=fake, subscription_id=SUB)
    assert [p.split("api-version=")[1] for p in fake.calls] == ["2022-04-01", "2015-07-01"]
    fake.put(permissions_path(), {"value": [OWNER]})
    assert azure.check(spec, c, arm=fake, subscription_id=SUB)[0] == c


def test_one_right_missing_is_named_alone_and_not_actions_win_within_their_permission():
    spec, c = choose("t4")
    only_assign = [grant(["*"], ["Microsoft.Authorization/roleDefinitions/*"]), grant(["*/read"])]
    with pytest.raises(PreflightError) as e:
        azure.check(spec, c, arm=ready(c, permissions=only_assign), subscription_id=SUB)
    assert "lacks Microsoft.Authorization/roleDefinitions/write on" in e.value.line()
    assert not azure.allows([grant(["Microsoft.Compute/*"])], "Microsoft.Authorization/roleAssignments/write")
    # A notActions entry removes an action from its own permission only, not from another one.
    assert azure.allows([grant(["*"], ["Microsoft.Authorization/*/Write"]), grant(["Microsoft.Authorization/roleAssignments/write"])],
                        "Microsoft.Authorization/roleAssignments/write")


# --- the token: a stand-in `az`, a real process ----------------------------------------------


def _az(tmp_path: Path, monkeypatch, script: str) -> Path:
    folder = tmp_path / "azure"
    folder.mkdir()
    (folder / "azureProfile.json").write_text(json.dumps({"subscriptions": [{"id": SUB, "isDefault": True, "state": "Enabled"}]}), encoding="utf-8-sig")
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(folder))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    az = bin_dir / "az"
    az.write_text("#!/bin/sh\n" + script)
    az.chmod(az.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return tmp_path / "calls"


def test_token_comes_from_the_azure_cli_once_per_process(tmp_path, monkeypatch):
    log = tmp_path / "calls"
    _az(tmp_path, monkeypatch, f'echo "$@" >> {log}\n'
        'echo \'{"accessToken": "tok-1", "expiresOn": "2026-12-01 13:00:00.000000", "subscription": "' + SUB + '", "tenant": "t", "tokenType": "Bearer"}\'\n')
    assert azure.token(azure.subscription()) == "tok-1"
    assert azure.token(SUB) == "tok-1"
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and "get-access-token --resource https://management.azure.com/" in calls[0] and SUB in calls[0]


def test_expired_az_login_is_one_line(tmp_path, monkeypatch):
    _az(tmp_path, monkeypatch, "echo \"ERROR: AADSTS700082: The refresh token has expired due to inactivity.\" >&2\n"
        "echo \"Please run 'az login' to setup account.\" >&2\nexit 1\n")
    with pytest.raises(PreflightError) as e:
        azure.token(azure.subscription())
    line = e.value.line()
    assert "no token (Please run 'az login' to setup account.)" in line and "\n" not in line


def test_service_principal_without_tenant_is_refused(monkeypatch):
    monkeypatch.setenv("ARM_CLIENT_ID", "app")
    monkeypatch.setenv("ARM_CLIENT_SECRET", "secret")
    with pytest.raises(PreflightError, match="ARM_TENANT_ID"):
        azure.token(SUB)
