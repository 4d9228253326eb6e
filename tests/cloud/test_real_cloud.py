"""A real cloud, end to end through the `cloudtrain` CLI: up -> run examples/mnist.py -> down.

It costs money (one T4 node for roughly 15-30 minutes), so it runs only when all hold:
  - CLOUDTRAIN_CLOUD_TESTS names the cloud (e.g. `aws`, `gcp,azure` or `all`),
  - the Pulumi CLI is installed (`cloudtrain install-pulumi`),
  - that cloud's credentials are present (the same ones `cloudtrain up` uses).
`down` always runs, even when `up` or `run` fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cloudtrain.errors import CloudtrainError

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.cloud


def _asked(cloud: str) -> bool:
    wanted = {w.strip() for w in os.environ.get("CLOUDTRAIN_CLOUD_TESTS", "").split(",") if w.strip()}
    return cloud in wanted or "all" in wanted


def _credentials(cloud: str) -> bool:
    """Whether this cloud's pre-flight credential check passes here (no resources touched)."""
    try:
        if cloud == "aws":
            import boto3

            from cloudtrain.provisioner.preflight import aws

            aws.credentials(boto3.Session())
        elif cloud == "gcp":
            from cloudtrain.provisioner.preflight import gcp

            gcp.project_and_credentials()
        else:
            from cloudtrain.provisioner.preflight import azure

            azure.subscription()
    except (CloudtrainError, ImportError):
        return False
    return True


def _pulumi_cli() -> bool:
    from cloudtrain.provisioner.preflight import pulumi_cli

    return pulumi_cli.find() is not None


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_up_run_mnist_down(cloud, cli):
    if not _asked(cloud):
        pytest.skip(f"set CLOUDTRAIN_CLOUD_TESTS={cloud} to spend money on a real {cloud} run")
    if not _pulumi_cli():
        pytest.skip("no Pulumi CLI; run `cloudtrain install-pulumi`")
    if not _credentials(cloud):
        pytest.skip(f"no usable {cloud} credentials")

    name = f"ct-e2e-{cloud}"
    try:
        up = cli("up", "--provider", cloud, "--gpu", "t4", "--name", name, "--disk-gb", "100", timeout=3600)
        assert up.returncode == 0, up.stderr[-4000:]
        # The first-boot host key went through user data / metadata: after `up` it is no longer the pin.
        cdir = cli.home / "clusters" / name
        pinned = {n["name"]: n["host_key"].split()[1] for n in json.loads((cdir / "cluster.json").read_text())["cluster"]["nodes"]}
        first = {p.stem: json.loads(p.read_text())["public"].split()[1] for p in (cdir / "provider" / "host-keys").glob("*.json")}
        assert pinned.keys() == first.keys() and all(pinned[n] != first[n] for n in pinned)
        run = cli("run", str(REPO / "examples" / "mnist.py"), "--cluster", name, timeout=3600)
        assert run.returncode == 0, run.stderr[-4000:]
        records = list((cli.cwd / "runs").glob("*/run.json"))
        assert len(records) == 1
        record = json.loads(records[0].read_text())
        assert record["exit_code"] == 0
        assert (records[0].parent / "manifest.json").exists()
    finally:
        down = cli("down", "--cluster", name, "--force", timeout=3600)
        assert down.returncode == 0, f"`cloudtrain down --cluster {name}` failed; check the cloud console: {down.stderr[-2000:]}"
