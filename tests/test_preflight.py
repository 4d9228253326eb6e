"""Pre-flight checks: AWS through boto3 against moto; GCP and Azure against real credential files.

moto serves STS, EC2 offerings and AMIs. moto's Service Quotas backend only knows VPC quotas
(NoSuchResource for every EC2 code), so the EC2 vCPU quota calls go through botocore's
Stubber on a real service-quotas client, the one place moto cannot serve.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from dataclasses import replace
from pathlib import Path
from unittest import mock

import boto3
import pytest
from botocore.stub import Stubber
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from moto import mock_aws
from moto.core import set_initial_no_auth_action_count
from moto.ec2.models import amis as moto_amis

from cloudtrain import catalog
from cloudtrain.errors import MissingTool, NotOffered, PreflightError, ProvisionError, QuotaExceeded
from cloudtrain.provisioner.preflight import aws, azure, gcp, pulumi_cli
from cloudtrain.spec import ClusterSpec

REGION = "us-east-1"
DL_AMI = {
    "ami_id": "ami-0dl0000000000001",
    "state": "available",
    "public": True,
    "owner_id": "898082745236",
    "image_location": "amazon/dlami",
    "root_device_type": "ebs",
    "root_device_name": "/dev/sda1",
    "description": "Deep Learning Base AMI",
    "image_type": "machine",
    "platform": None,
    "architecture": "x86_64",
    "name": "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20260717",
    "virtualization_type": "hvm",
    "hypervisor": "xen",
    "creation_date": "2026-07-17T00:00:00.000Z",
}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No sockets, and no real cloud credentials or config leaking in from this machine."""

    def refuse(*a, **k):
        raise AssertionError("test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "ARM_SUBSCRIPTION_ID",
                "AZURE_SUBSCRIPTION_ID", "ARM_CLIENT_ID", "ARM_CLIENT_SECRET", "ARM_USE_MSI", "ARM_USE_OIDC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "no-azure"))


@pytest.fixture
def aws_env(monkeypatch):
    """moto with fake keys, and the Deep Learning AMI added to moto's public AMIs (owner 'amazon')."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setattr(moto_amis, "AMIS", [*moto_amis.AMIS, dict(DL_AMI)])
    with mock_aws():
        yield boto3.Session(region_name=REGION)


def choose(gpu="t4", **kw):
    name, _, count = gpu.partition(":")
    spec = ClusterSpec(name="p1", provider="aws", gpu=name, gpu_count=int(count or 1), ssh_cidr="198.51.100.7/32", **kw)
    return spec, catalog.choose(spec)


def quotas_client(responses):
    """A real service-quotas client whose answers come from Stubber (moto has no EC2 quotas)."""
    client = boto3.client("service-quotas", region_name=REGION)
    stub = Stubber(client)
    for method, body, params in responses:
        if isinstance(body, str):
            stub.add_client_error(method, service_error_code=body, expected_params=params)
        else:
            stub.add_response(method, body, params)
    stub.activate()
    return client, stub


def quota(value):
    return {"Quota": {"ServiceCode": "ec2", "QuotaCode": "x", "Value": value}}


# --- AWS credentials ------------------------------------------------------------------------


def test_credentials_ok_returns_the_account(aws_env):
    assert aws.credentials(aws_env) == "123456789012"


def test_no_credentials_is_actionable(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    # Not under mock_aws, which injects fake keys: botocore refuses to sign before any request
    # (the socket guard and AWS_EC2_METADATA_DISABLED keep it offline).
    with pytest.raises(PreflightError) as e:
        aws.credentials(boto3.Session(region_name=REGION))
    assert "no AWS credentials" in e.value.line() and "aws configure" in e.value.line()


@set_initial_no_auth_action_count(0)
@mock_aws
def test_invalid_credentials_are_refused():
    # With authentication on, moto rejects access keys it never issued, as AWS does. The keys are
    # set by patch.dict inside mock_aws, not by monkeypatch: monkeypatch would undo after moto and
    # put moto's own fake key back into the process's environment for every later test.
    keys = {"AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKEFAKE", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret"}
    with mock.patch.dict(os.environ, keys), pytest.raises(PreflightError) as e:
        aws.credentials(boto3.Session(region_name=REGION))
    assert "rejected the credentials (InvalidClientTokenId)" in e.value.line()
    assert e.value.__cause__ is not None


# --- instance type offered in the zone ------------------------------------------------------


def test_offered_zone_defaults_to_the_first_offering_zone(aws_env):
    _, c = choose()
    assert aws.offered_zone(aws_env.client("ec2"), c.offer, REGION, None) == "us-east-1a"
    assert aws.offered_zone(aws_env.client("ec2"), c.offer, REGION, "us-east-1d") == "us-east-1d"


def test_zone_that_lacks_the_type_names_the_zones_that_have_it(aws_env):
    _, c = choose("a100-80gb:8")  # p4de.24xlarge: moto's data has it in us-east-1b and 1c only
    with pytest.raises(NotOffered) as e:
        aws.offered_zone(aws_env.client("ec2"), c.offer, REGION, "us-east-1a")
    assert "not offered in us-east-1a" in e.value.line() and "us-east-1b, us-east-1c" in e.value.line()
    assert e.value.placement == "us-east-1a"  # failover moves on to the next placement


def test_the_live_answer_refuses_a_zone_through_check(aws_env):
    # The whole check, not only the helper: the catalog's choice with a zone the live
    # DescribeInstanceTypeOfferings answer lacks is NotOffered before quotas are even read.
    spec, c = choose("a100-80gb:8")
    client, stub = quotas_client([])
    with pytest.raises(NotOffered) as e:
        aws.check(spec, replace(c, zone="us-east-1a"), session=aws_env, quotas=client)
    assert e.value.placement == "us-east-1a" and "us-east-1b" in e.value.line()


def test_zones_lists_every_offering_zone_for_failover(aws_env):
    _, c = choose("a100-80gb:8")  # p4de.24xlarge in us-east-1b and 1c (moto's offerings data)
    assert aws.zones(c, session=aws_env) == ["us-east-1b", "us-east-1c"]


def test_region_that_lacks_the_type_is_refused():
    _, c = choose("a100-80gb:8")
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="eu-west-1", aws_access_key_id="t", aws_secret_access_key="t")
        with pytest.raises(NotOffered) as e:
            aws.offered_zone(ec2, c.offer, "eu-west-1", None)
    assert "p4de.24xlarge is not offered in eu-west-1" in e.value.line() and "us-east-1" in e.value.line()
    assert e.value.placement == "eu-west-1"


# --- the AMI resolves -----------------------------------------------------------------------


def test_dl_ami_resolves_with_the_programs_filters(aws_env):
    _, c = choose()
    assert aws.resolve_ami(aws_env.client("ec2"), c.image, REGION) == DL_AMI["ami_id"]


def test_missing_ami_is_refused(aws_env):
    _, c = choose(image="ubuntu")  # no Canonical jammy image in moto's set
    with pytest.raises(PreflightError) as e:
        aws.resolve_ami(aws_env.client("ec2"), c.image, REGION)
    assert "no AMI named" in e.value.line() and "099720109477" in e.value.line()


# --- GPU vCPU quota (Stubber: moto's Service Quotas has no EC2 codes) -------------------------


def test_quota_that_covers_the_request_passes():
    _, c = choose(nodes=3)
    client, stub = quotas_client([("get_service_quota", quota(64.0), {"ServiceCode": "ec2", "QuotaCode": "L-DB2E81BA"})])
    assert aws.check_quota(client, c.offer, 3, False, REGION) == 64.0
    stub.assert_no_pending_responses()


def test_quota_short_is_refused_with_the_increase_command():
    _, c = choose("h100:8", nodes=2)
    client, _ = quotas_client([("get_service_quota", quota(192.0), {"ServiceCode": "ec2", "QuotaCode": "L-417A185B"})])
    with pytest.raises(QuotaExceeded) as e:
        aws.check_quota(client, c.offer, 2, False, REGION)
    line = e.value.line()
    assert "need 384 vCPUs" in line and "Running On-Demand P instances" in line and "is 192" in line
    assert "--quota-code L-417A185B --desired-value 384" in line


def test_spot_uses_the_spot_quota_and_falls_back_to_the_default():
    _, c = choose(spot=True)
    params = {"ServiceCode": "ec2", "QuotaCode": "L-3819A6DF"}
    client, stub = quotas_client([
        ("get_service_quota", "NoSuchResourceException", params),
        ("get_aws_default_service_quota", quota(0.0), params),
    ])
    with pytest.raises(QuotaExceeded, match="quota"):
        aws.check_quota(client, c.offer, 1, True, REGION)
    stub.assert_no_pending_responses()


def test_quota_unreadable_is_actionable():
    _, c = choose()
    client, _ = quotas_client([("get_service_quota", "AccessDeniedException", None)])
    with pytest.raises(PreflightError) as e:
        aws.check_quota(client, c.offer, 1, False, REGION)
    assert "servicequotas:GetServiceQuota" in e.value.line() and "servicequotas:GetAWSDefaultServiceQuota" in e.value.line()
    assert not isinstance(e.value, QuotaExceeded)


def test_full_aws_check_pins_an_offering_zone(aws_env):
    spec, c = choose("a100-80gb:8")
    client, _ = quotas_client([("get_service_quota", quota(96.0), None)])
    pinned, extra = aws.check(spec, c, session=aws_env, quotas=client)
    assert pinned.zone == "us-east-1b" and pinned.region == REGION and extra == {}
    # An asked-for zone that is offered is kept.
    client, _ = quotas_client([("get_service_quota", quota(96.0), None)])
    assert aws.check(spec, replace(c, zone="us-east-1c"), session=aws_env, quotas=client)[0].zone == "us-east-1c"


def test_credentials_are_checked_once_per_process(aws_env, monkeypatch):
    # check runs once per placement attempt; STS is asked once per access key.
    calls = []
    real = aws_env.client

    def counting(name, *a, **k):
        if name == "sts":
            calls.append(name)
        return real(name, *a, **k)

    monkeypatch.setattr(aws, "_accounts", {})
    monkeypatch.setattr(aws_env, "client", counting)
    assert aws.credentials(aws_env) == aws.credentials(aws_env) == "123456789012"
    assert calls == ["sts"]


# --- GCP: application default credentials and a project ---------------------------------------


def _service_account(path: Path, project: str | None) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    info = {
        "type": "service_account",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "ct@proj.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    if project:
        info["project_id"] = project
    path.write_text(json.dumps(info))
    return path


def test_gcp_adc_with_project(tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(_service_account(tmp_path / "sa.json", "proj-9")))
    assert gcp.project_and_credentials()[1] == "proj-9"
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "other-proj")
    assert gcp.project_and_credentials()[1] == "other-proj"


def test_gcp_missing_adc_is_actionable(tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    with pytest.raises(PreflightError) as e:
        gcp.project_and_credentials()
    assert "gcloud auth application-default login" in e.value.line()


def test_gcp_without_a_project_is_actionable(tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(_service_account(tmp_path / "sa.json", None)))
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcloud to ask for a project
    with pytest.raises(PreflightError) as e:
        gcp.project_and_credentials()
    assert "gcloud config set project" in e.value.line()


# --- Azure: a subscription --------------------------------------------------------------------


def _azure_login(tmp_path: Path, monkeypatch, subs: list[dict]) -> None:
    folder = tmp_path / "azure"
    folder.mkdir()
    (folder / "azureProfile.json").write_text(json.dumps({"subscriptions": subs}), encoding="utf-8-sig")
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(folder))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    az = bin_dir / "az"  # only its presence is checked: the provider asks it for tokens later
    az.write_text("#!/bin/sh\nexit 1\n")
    az.chmod(az.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_azure_default_subscription_from_az_login(tmp_path, monkeypatch):
    _azure_login(tmp_path, monkeypatch, [
        {"id": "sub-a", "isDefault": False, "state": "Enabled"},
        {"id": "sub-b", "isDefault": True, "state": "Enabled"},
    ])
    assert azure.subscription() == "sub-b"
    monkeypatch.setenv("ARM_SUBSCRIPTION_ID", "sub-a")
    assert azure.subscription() == "sub-a"


def test_azure_service_principal_needs_no_login(monkeypatch):
    monkeypatch.setenv("ARM_SUBSCRIPTION_ID", "sub-sp")
    monkeypatch.setenv("ARM_CLIENT_ID", "app")
    monkeypatch.setenv("ARM_CLIENT_SECRET", "secret")
    assert azure.subscription() == "sub-sp"


@pytest.mark.parametrize(
    "subs, env, words",
    [
        ([], None, "no Azure login found"),
        ([{"id": "sub-a", "isDefault": True, "state": "Disabled"}], None, "is Disabled"),
        ([{"id": "sub-a", "isDefault": True, "state": "Enabled"}], "sub-z", "sub-z is not in your Azure login"),
    ],
)
def test_azure_refusals_are_actionable(tmp_path, monkeypatch, subs, env, words):
    _azure_login(tmp_path, monkeypatch, subs)
    if env:
        monkeypatch.setenv("ARM_SUBSCRIPTION_ID", env)
    with pytest.raises(PreflightError) as e:
        azure.subscription()
    assert words in e.value.line()


# --- the Pulumi CLI ---------------------------------------------------------------------------


def test_missing_pulumi_cli_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert pulumi_cli.find() is None
    with pytest.raises(MissingTool) as e:
        pulumi_cli.require()
    line = e.value.line()
    assert "cloudtrain install-pulumi" in line and "get.pulumi.com" in line and "\n" not in line


def test_install_uses_the_sdk_installer(monkeypatch):
    import pulumi.automation as auto

    seen = {}

    def fake_install(cls=None, root=None, version=None, skip_version_check=False):
        seen["version"] = version
        return type("Cmd", (), {"command": "/home/u/.pulumi/versions/3.272.0/bin/pulumi"})()

    monkeypatch.setattr(auto.PulumiCommand, "install", staticmethod(fake_install))
    assert pulumi_cli.install().endswith("/bin/pulumi")

    def broken(**kw):
        raise RuntimeError("download failed")

    monkeypatch.setattr(auto.PulumiCommand, "install", staticmethod(broken))
    with pytest.raises(ProvisionError, match="installing the Pulumi CLI failed"):
        pulumi_cli.install()
