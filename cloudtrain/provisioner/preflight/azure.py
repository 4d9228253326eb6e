"""Azure pre-flight: a subscription, and credentials the azure-native provider can use
(a service principal in ARM_* variables, managed identity, or an `az login` session)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from cloudtrain.errors import PreflightError

_LOGIN_HINT = "run `az login` then `az account set --subscription ID`, or set ARM_SUBSCRIPTION_ID with a service principal"


def _profile() -> dict:
    folder = Path(os.environ.get("AZURE_CONFIG_DIR") or Path.home() / ".azure")
    path = folder / "azureProfile.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))  # az writes a byte-order mark
    except (OSError, ValueError) as e:
        raise PreflightError(f"cannot read {path}: {e}", _LOGIN_HINT) from e


def subscription() -> str:
    """The subscription id to deploy into; refuses when none is set or the login is unusable."""
    env_sub = os.environ.get("ARM_SUBSCRIPTION_ID") or os.environ.get("AZURE_SUBSCRIPTION_ID")
    service_principal = os.environ.get("ARM_CLIENT_ID") and (
        os.environ.get("ARM_CLIENT_SECRET") or os.environ.get("ARM_USE_OIDC") or os.environ.get("ARM_CLIENT_CERTIFICATE_PATH")
    )
    if env_sub and (service_principal or os.environ.get("ARM_USE_MSI")):
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


def check() -> dict[str, str]:
    """Extra stack config Azure needs: the subscription."""
    return {"azure-native:subscriptionId": subscription()}
