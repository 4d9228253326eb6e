"""The Pulumi CLI the Automation API drives: find it, or install it with the SDK's own installer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pulumi.automation as auto
from pulumi._version import _VERSION as SDK_VERSION

from cloudtrain.errors import MissingTool, ProvisionError

INSTALL_HINT = "run `cloudtrain install-pulumi` (or `curl -fsSL https://get.pulumi.com | sh`)"


def default_root() -> Path:
    """Where PulumiCommand.install puts the CLI matching this SDK."""
    return Path.home() / ".pulumi" / "versions" / str(SDK_VERSION)


def find() -> auto.PulumiCommand | None:
    """The CLI on PATH, else the one `cloudtrain install-pulumi` installed; None when neither exists."""
    roots: list[str | None] = []
    if shutil.which("pulumi"):
        roots.append(None)
    if (default_root() / "bin" / "pulumi").exists():
        roots.append(str(default_root()))
    for root in roots:
        try:
            return auto.PulumiCommand(root=root, skip_version_check=bool(os.environ.get("CLOUDTRAIN_PULUMI_ANY_VERSION")))
        except auto.InvalidVersionError:
            continue
        except (OSError, ValueError):
            continue
    return None


def require() -> auto.PulumiCommand:
    cmd = find()
    if cmd is None:
        raise MissingTool(f"the Pulumi CLI (>= the SDK's {SDK_VERSION}) is not installed", INSTALL_HINT)
    return cmd


def install() -> str:
    """Install the CLI version matching the SDK under ~/.pulumi/versions; return its path."""
    try:
        cmd = auto.PulumiCommand.install(version=None)
    except Exception as e:  # the installer raises plain exceptions for download/script failures
        raise ProvisionError(f"installing the Pulumi CLI failed: {e}", "install it by hand: curl -fsSL https://get.pulumi.com | sh") from e
    return cmd.command
