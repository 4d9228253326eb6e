"""Azure pre-flight: a subscription and a token the checks can use (a service principal in ARM_*
variables, managed identity, or an `az login` session), then the live answer for this region
from Azure Resource Manager REST: the VM size exists there and is not restricted for this
subscription (resource SKUs), the family's and the region's vCPU quotas cover the request
(usages; Spot VMs draw on the low-priority quota), the marketplace image exists, and the login
may create the role (definition and assignment) that lets each VM deallocate itself.

The subscription and the token are looked up once per process; each placement attempt then
costs four GETs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from cloudtrain.catalog import Choice
from cloudtrain.errors import NotOffered, PreflightError, QuotaExceeded
from cloudtrain.provisioner import rest as _rest
from cloudtrain.provisioner.rest import ApiError, Rest, Unreachable
from cloudtrain.spec import ClusterSpec

ARM = "https://management.azure.com"
_RESOURCE = "https://management.azure.com/"
_LOGIN_HINT = "run `az login` then `az account set --subscription ID`, or set ARM_SUBSCRIPTION_ID with a service principal"
# Where a subscription's quotas are raised (Azure portal, Quotas > Compute).
QUOTA_PAGE = "https://portal.azure.com/#view/Microsoft_Azure_Capacity/QuotaMenuBlade/~/myQuotas"
_tokens: dict[tuple, str] = {}
# The program creates a custom role (deallocate only) and assigns it on each VM, so its identity
# can deallocate itself at autostop: both need rights Contributor lacks (Owner and User Access
# Administrator have them).
RIGHTS = ("Microsoft.Authorization/roleDefinitions/write", "Microsoft.Authorization/roleAssignments/write")
_RIGHTS_HINT = ("ask for the Owner or User Access Administrator role on the subscription "
                "(`az role assignment create --assignee YOU --role 'User Access Administrator' --scope /subscriptions/{sub}`)")


def _profile() -> dict:
    folder = Path(os.environ.get("AZURE_CONFIG_DIR") or Path.home() / ".azure")
    path = folder / "azureProfile.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))  # az writes a byte-order mark
    except (OSError, ValueError) as e:
        raise PreflightError(f"cannot read {path}: {e}", _LOGIN_HINT) from e


def _service_principal() -> bool:
    return bool(os.environ.get("ARM_CLIENT_ID") and (
        os.environ.get("ARM_CLIENT_SECRET") or os.environ.get("ARM_USE_OIDC") or os.environ.get("ARM_CLIENT_CERTIFICATE_PATH")
    ))


def subscription() -> str:
    """The subscription id to deploy into; refuses when none is set or the login is unusable."""
    env_sub = os.environ.get("ARM_SUBSCRIPTION_ID") or os.environ.get("AZURE_SUBSCRIPTION_ID")
    if env_sub and (_service_principal() or os.environ.get("ARM_USE_MSI")):
        return env_sub
    subs = _profile().get("subscriptions", [])
    if not subs:
        raise PreflightError("no Azure login found", _LOGIN_HINT)
    if shutil.which("az") is None:
        raise PreflightError("the Azure CLI (az) holding your login is not on PATH", "install the Azure CLI, or use a service principal via ARM_* variables")
    chosen = next((s for s in subs if s.get("id") == env_sub), None) if env_sub else next((s for s in subs if s.get("isDefault")), None)
    if chosen is None:
        raise PreflightError(f"subscription {env_sub or '(default)'} is not in your Azure login", _LOGIN_HINT)
    if chosen.get("state", "Enabled") != "Enabled":
        raise PreflightError(f"Azure subscription {chosen['id']} is {chosen['state']}", "choose an enabled one with `az account set`")
    return chosen["id"]


def _post_form(url: str, fields: dict[str, str], what: str) -> dict:
    data = urllib.parse.urlencode(fields).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise PreflightError(f"Azure refused the {what} credentials (HTTP {e.code})", _LOGIN_HINT) from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise PreflightError(f"cannot get an Azure token for the {what}: {e}", "check the network") from e


def _az_token(sub: str) -> str:
    cmd = ["az", "account", "get-access-token", "--resource", _RESOURCE, "--subscription", sub, "--output", "json"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PreflightError(f"`az account get-access-token` did not run: {e}", _LOGIN_HINT) from e
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise PreflightError(f"the Azure CLI gave no token ({said})", _LOGIN_HINT)
    try:
        return json.loads(proc.stdout)["accessToken"]
    except (ValueError, KeyError, TypeError) as e:
        raise PreflightError("the Azure CLI printed no accessToken", "update the Azure CLI, then `az login` again") from e


def token(sub: str) -> str:
    """A Resource Manager token from the same credentials the azure-native provider uses."""
    env = os.environ
    key = (sub, env.get("ARM_CLIENT_ID"), env.get("ARM_TENANT_ID"), env.get("ARM_USE_MSI"), env.get("AZURE_CONFIG_DIR"))
    if key in _tokens:
        return _tokens[key]
    if env.get("ARM_CLIENT_ID") and env.get("ARM_CLIENT_SECRET"):
        if not env.get("ARM_TENANT_ID"):
            raise PreflightError("ARM_CLIENT_ID and ARM_CLIENT_SECRET are set but ARM_TENANT_ID is not", "set ARM_TENANT_ID to the directory (tenant) id")
        body = _post_form(
            f"https://login.microsoftonline.com/{env['ARM_TENANT_ID']}/oauth2/v2.0/token",
            {"grant_type": "client_credentials", "client_id": env["ARM_CLIENT_ID"], "client_secret": env["ARM_CLIENT_SECRET"], "scope": _RESOURCE + ".default"},
            "service principal",
        )
        found = body.get("access_token")
    elif env.get("ARM_USE_MSI"):
        query = urllib.parse.urlencode({"api-version": "2018-02-01", "resource": _RESOURCE} | ({"client_id": env["ARM_CLIENT_ID"]} if env.get("ARM_CLIENT_ID") else {}))
        req = urllib.request.Request(f"http://169.254.169.254/metadata/identity/oauth2/token?{query}", headers={"Metadata": "true"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                found = json.loads(resp.read()).get("access_token")
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise PreflightError(f"no managed identity token from the instance metadata service: {e}", "unset ARM_USE_MSI off Azure, or assign an identity to this VM") from e
    elif shutil.which("az"):
        found = _az_token(sub)
    else:
        raise PreflightError(
            "pre-flight needs a Resource Manager token: an ARM_CLIENT_SECRET, ARM_USE_MSI, or the Azure CLI",
            "install the Azure CLI and `az login`, or set ARM_CLIENT_SECRET and ARM_TENANT_ID",
        )
    if not found:
        raise PreflightError("Azure returned no access token", _LOGIN_HINT)
    _tokens[key] = found
    return found


def _get(arm: Rest, path: str, what: str, not_found: PreflightError | None = None):
    try:
        return arm.get(f"{ARM}{path}")
    except Unreachable as e:
        raise PreflightError(f"cannot reach Azure Resource Manager: {e}", "check the network") from e
    except ApiError as e:
        if e.status == 404 and not_found is not None:
            raise not_found from e
        if e.status in (401, 403):
            raise PreflightError(f"Azure refused to {what} ({e.code})", "grant the Reader role on the subscription, or `az login` again") from e
        raise PreflightError(f"Azure failed to {what}: {e.code} {e.message}", "try again, or check status.azure.com") from e


def _elsewhere(choice: Choice) -> str:
    return ", ".join(r for r in choice.offer.locations if r != choice.region) or "none listed"


def resource_sku(arm: Rest, sub: str, choice: Choice) -> dict:
    """The VM size's SKU in this region, refused (NotOffered) when absent or restricted for the subscription."""
    size, loc = choice.offer.instance_type, choice.region
    where = urllib.parse.quote(f"location eq '{loc}'")
    path = f"/subscriptions/{sub}/providers/Microsoft.Compute/skus?api-version=2021-07-01&$filter={where}"
    skus: list[dict] = []
    while path:
        page = _get(arm, path, "list VM sizes (Microsoft.Compute/skus)") or {}
        skus += page.get("value", [])
        path = (page.get("nextLink") or "").removeprefix(ARM)
    sku = next((s for s in skus if s.get("resourceType") == "virtualMachines" and s.get("name", "").lower() == size.lower()), None)
    if sku is None:
        raise NotOffered(f"{size} is not offered in {loc}", f"try another --region ({_elsewhere(choice)})", placement=loc)
    zones = {z for info in sku.get("locationInfo", []) if info.get("location", "").lower() == loc.lower() for z in info.get("zones", [])}
    for r in sku.get("restrictions", []):
        scope = r.get("restrictionInfo") or {}
        blocked_zones = set(scope.get("zones") or [])
        # cloudtrain places Azure VMs without a zone: a Zone restriction blocks only when it covers every zone.
        if r.get("type") == "Location" or (r.get("type") == "Zone" and zones and zones <= blocked_zones):
            reason = r.get("reasonCode", "restricted")
            hint = (
                f"try another --region ({_elsewhere(choice)}), or ask Azure support to enable {size} for the subscription"
                if reason == "NotAvailableForSubscription" else f"try another --region ({_elsewhere(choice)})"
            )
            raise NotOffered(f"{size} is restricted in {loc} for this subscription ({reason})", hint, placement=loc)
    return sku


def _vcpus(sku: dict, fallback: int) -> int:
    for cap in sku.get("capabilities", []):
        if cap.get("name") == "vCPUs":
            return int(cap["value"])
    return fallback


def check_quota(arm: Rest, sub: str, choice: Choice, sku: dict, nodes: int, spot: bool) -> None:
    """Spot: Total Regional Low-priority vCPUs. Otherwise the size's family quota and Total Regional vCPUs."""
    loc, need = choice.region, _vcpus(sku, choice.offer.vcpus) * nodes
    usages = _get(arm, f"/subscriptions/{sub}/providers/Microsoft.Compute/locations/{loc}/usages?api-version=2023-07-01", "read the vCPU quotas (usages)") or {}
    by_name = {u["name"]["value"]: u for u in usages.get("value", []) if isinstance(u.get("name"), dict)}
    names = ["lowPriorityCores"] if spot else [sku.get("family", ""), "cores"]
    for name in names:
        usage = by_name.get(name)
        if usage is None:
            continue  # a quota Azure does not report for this subscription is not enforced on it
        free = float(usage.get("limit", 0)) - float(usage.get("currentValue", 0))
        if free < need:
            title = (usage["name"].get("localizedValue") or name)
            raise QuotaExceeded(
                f"{nodes} x {choice.offer.instance_type} need {need} vCPUs but the Azure quota {title!r} ({name}) in {loc} has {free:g} free of {usage.get('limit', 0):g}",
                f"request a limit of {need + float(usage.get('currentValue', 0)):g} or more at {QUOTA_PAGE}",
            )


def check_image(arm: Rest, sub: str, loc: str, ref: str) -> None:
    """images.csv holds a URN 'publisher:offer:sku:version'; 'latest' needs at least one version."""
    publisher, offer, sku, version = ref.split(":")
    base = f"/subscriptions/{sub}/providers/Microsoft.Compute/locations/{loc}/publishers/{publisher}/artifacttypes/vmimage/offers/{offer}/skus/{sku}/versions"
    missing = PreflightError(f"the Azure image {ref} is not published in {loc}", "pass --image ubuntu, or try another --region")
    # 'latest': one listed version is enough ($top keeps the answer small).
    path = f"{base}?api-version=2024-07-01&$top=1" if version == "latest" else f"{base}/{version}?api-version=2024-07-01"
    found = _get(arm, path, f"look up the image {ref}", missing)
    if not found:
        raise missing


def _matches(pattern: str, action: str) -> bool:
    """An RBAC action pattern: case-insensitive, `*` stands for any characters (`*`, `*/read`,
    `Microsoft.Authorization/*/Write`)."""
    return re.fullmatch(".*".join(map(re.escape, pattern.lower().split("*"))), action.lower()) is not None


def allows(permissions: list[dict], action: str) -> bool:
    """ARM's rule: allowed when one permission lists it in `actions` and not in that same
    permission's `notActions` (the permissions API's documented reading)."""
    return any(
        any(_matches(a, action) for a in p.get("actions") or []) and not any(_matches(n, action) for n in p.get("notActions") or [])
        for p in permissions
    )


def _permissions(arm: Rest, sub: str, version: str) -> list[dict]:
    path = f"/subscriptions/{sub}/providers/Microsoft.Authorization/permissions?api-version={version}"
    permissions: list[dict] = []
    while path:
        page = _get(arm, path, "read your permissions (Microsoft.Authorization/permissions)") or {}
        permissions += page.get("value", [])
        path = (page.get("nextLink") or "").removeprefix(ARM)
    return permissions


def check_rights(arm: Rest, sub: str) -> None:
    """Refuse before anything exists when the login cannot create the self-deallocate role."""
    try:
        permissions = _permissions(arm, sub, "2022-04-01")
    except PreflightError as e:
        # The 2022-04-01 specification lists this call at resource-group and resource scope only;
        # Microsoft documents it at subscription scope with 2015-07-01 ("Use Resource Manager
        # authentication API to access subscriptions"). A version ARM refuses is no verdict.
        if not (isinstance(e.__cause__, ApiError) and e.__cause__.status in (400, 404)):
            raise
        permissions = _permissions(arm, sub, "2015-07-01")
    missing = [a for a in RIGHTS if not allows(permissions, a)]
    if missing:
        raise PreflightError(
            f"your Azure login lacks {' and '.join(missing)} on subscription {sub}, which `up` needs to let each VM deallocate itself (autostop)",
            _RIGHTS_HINT.format(sub=sub),
        )


def check(spec: ClusterSpec, choice: Choice, arm: Rest | None = None, subscription_id: str | None = None) -> tuple[Choice, dict[str, str]]:
    """Run every Azure check for this region; return the choice unchanged and the stack's subscription.

    `arm` (anything with `get(url) -> JSON`) and `subscription_id` default to the user's; tests pass theirs.
    """
    sub = subscription_id or subscription()
    arm = arm or _rest.bearer(token(sub))
    check_rights(arm, sub)  # the same in every region: before the region's own checks
    sku = resource_sku(arm, sub, choice)
    check_quota(arm, sub, choice, sku, spec.nodes, spec.spot)
    check_image(arm, sub, choice.region, choice.image.ref)
    return choice, {"azure-native:subscriptionId": sub}
