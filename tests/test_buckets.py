"""The checkpoint bucket of a cloud cluster (pulumi mocks: resources and policies; only the
cluster's nodes may write), and the node-side S3 upload path (moto)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cloudtrain import catalog, keys
from cloudtrain.jobs import node_checkpoints
from cloudtrain.provisioner import buckets, program
from cloudtrain.provisioner.contract import CHECKPOINTS, STORE_KEYS, HostKey
from cloudtrain.provisioner.leftovers import aws_beyond, azure_roles, gcp_beyond
from cloudtrain.spec import ClusterSpec
from pulumi_mocks import run_mocked

GPU = {"aws": "t4", "gcp": "t4", "azure": "t4"}


def _run(cloud: str, nodes: int = 2):
    spec = ClusterSpec(name="ct-test", provider=cloud, gpu=GPU[cloud], nodes=nodes, spot=True, ssh_cidr="198.51.100.7/32")
    choice = catalog.choose(spec)
    host_keys = tuple(HostKey(*keys.generate(f"h{i}")) for i in range(nodes))
    rec, _ = run_mocked(lambda: program.build(spec, choice, keys.generate("c")[1], host_keys).nodes)
    return rec


def test_aws_bucket_is_private_and_only_the_nodes_role_may_write() -> None:
    rec = _run("aws")
    (_, bucket), = rec.of("aws:s3/bucketV2:BucketV2")
    assert bucket["forceDestroy"] is True  # `down` removes it with its objects
    (_, block), = rec.of("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert all(block[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"))
    (role_name, role), = rec.of("aws:iam/role:Role")
    trust = json.loads(role["assumeRolePolicy"])["Statement"]
    assert trust == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]
    (_, inline), = rec.of("aws:iam/rolePolicy:RolePolicy")
    grants = json.loads(inline["policy"])["Statement"]
    # Only this bucket, only object actions plus listing it: nothing account-wide.
    assert [(g["Resource"], g["Action"]) for g in grants] == [
        ("arn:aws:s3:::ct-test-ckpt-x1/*", buckets.AWS_NODE_ACTIONS), ("arn:aws:s3:::ct-test-ckpt-x1", ["s3:ListBucket"])]
    (_, policy), = rec.of("aws:s3/bucketPolicy:BucketPolicy")
    deny = {s["Sid"]: s for s in json.loads(policy["policy"])["Statement"]}["OnlyTheClusterNodesWrite"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == ["s3:PutObject"]
    assert list(deny["Condition"]["ArnNotEquals"]) == ["aws:PrincipalArn"]
    (profile_name, profile), = rec.of("aws:iam/instanceProfile:InstanceProfile")
    assert profile["role"] == role_name  # the mock names a resource after itself
    instances = rec.of("aws:ec2/instance:Instance")
    assert len(instances) == 2 and all(i["iamInstanceProfile"] == profile_name for _, i in instances)
    # What the sweep after lost state matches (leftovers/aws_beyond.py): Pulumi's autoname is the logical name plus a suffix.
    assert bucket["bucketPrefix"] == aws_beyond.BUCKET_PREFIX and bucket["tags"]["cloudtrain-cluster"] == "ct-test"
    assert "-node-role" in role_name and role["description"].startswith("cloudtrain ") and role["tags"]["cloudtrain-cluster"] == "ct-test"
    assert "-node-profile" in profile_name and profile["tags"]["cloudtrain-cluster"] == "ct-test"


def test_aws_bucket_policy_names_the_nodes_role() -> None:
    rec = _run("aws", nodes=1)
    (_, policy), = rec.of("aws:s3/bucketPolicy:BucketPolicy")
    deny, tls = json.loads(policy["policy"])["Statement"]
    assert deny["Resource"] == "arn:aws:s3:::ct-test-ckpt-x1/*"
    assert deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] == "arn:aws:iam::123456789012:role/ct-test-node-role"
    assert tls["Effect"] == "Deny" and tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_gcp_bucket_is_private_and_only_the_nodes_account_is_granted() -> None:
    rec = _run("gcp")
    (_, bucket), = rec.of("gcp:storage/bucket:Bucket")
    assert bucket["uniformBucketLevelAccess"] is True and bucket["publicAccessPrevention"] == "enforced"
    assert bucket["forceDestroy"] is True and bucket["labels"]["cloudtrain-cluster"] == "ct-test"
    (_, account), = rec.of("gcp:serviceaccount/account:Account")
    email = f"{account['accountId']}@p.iam.gserviceaccount.com"
    grants = rec.of("gcp:storage/bucketIAMMember:BucketIAMMember")
    assert [(g["role"], g["member"]) for _, g in grants] == [(buckets.GCP_NODE_ROLE, f"serviceAccount:{email}")]
    assert not rec.of("gcp:storage/bucketIAMBinding:BucketIAMBinding") and not rec.of("gcp:projects/iAMMember:IAMMember")
    for _, vm in rec.of("gcp:compute/instance:Instance"):
        assert vm["serviceAccount"]["email"] == email
        assert vm["serviceAccount"]["scopes"] == ["https://www.googleapis.com/auth/devstorage.read_write"]
    # What the sweep after lost state matches (leftovers/gcp_beyond.py): the name prefixes and the marker, exactly.
    assert bucket["name"].startswith(gcp_beyond.BUCKET_PREFIX) and bucket["location"] == bucket["location"].upper()
    assert account["accountId"].startswith(gcp_beyond.ACCOUNT_PREFIX) and account["description"] == "cloudtrain-cluster=ct-test"


def test_azure_container_is_private_and_only_the_nodes_identities_may_write() -> None:
    rec = _run("azure")
    (_, account), = rec.of("azure-native:storage:StorageAccount")
    assert account["allowBlobPublicAccess"] is False and account["allowSharedKeyAccess"] is False
    assert account["minimumTlsVersion"] == "TLS1_2" and account["tags"]["cloudtrain-cluster"] == "ct-test"
    (_, container), = rec.of("azure-native:storage:BlobContainer")
    assert container["publicAccess"] == "None"
    vms = rec.of("azure-native:compute:VirtualMachine")
    assert len(vms) == 2 and all(vm["identity"]["type"] == "SystemAssigned" for _, vm in vms)
    grants = [g for _, g in rec.of("azure-native:authorization:RoleAssignment") if g["scope"] == "ct-test-ckpt-container-id"]
    # One grant per node, to that VM's own identity, on the container only (not the account or the group).
    assert sorted(g["principalId"] for g in grants) == sorted(f"principal-of-{name}" for name, _ in vms)
    for g in grants:
        assert g["roleDefinitionId"].endswith(f"/providers/Microsoft.Authorization/roleDefinitions/{buckets.AZURE_BLOB_CONTRIBUTOR}")
        assert g["principalType"] == "ServicePrincipal"
    # The role the group leaves behind is found by its name, marker and one scope (leftovers/azure_roles.py).
    (group_name, _), = rec.of("azure-native:resources:ResourceGroup")
    (_, role), = rec.of("azure-native:authorization:RoleDefinition")
    assert role["assignableScopes"] == [f"{group_name}-id"] and role["description"].startswith("cloudtrain-cluster=ct-test:")
    sub = "00000000-0000-0000-0000-0000000000aa"
    listed = {"properties": {"roleName": role["roleName"], "type": "CustomRole", "assignableScopes": [f"/subscriptions/{sub}/resourceGroups/{group_name}"]}}
    assert azure_roles._group_of(listed, sub) == group_name


# --- the node-side upload path, against moto's S3 ---------------------------------------


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):
    moto = pytest.importorskip("moto")
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    with moto.mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="ckpt")
        yield client


def _keys(client) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket="ckpt").get("Contents", []))


def test_node_uploads_only_complete_checkpoints_and_restores_them(s3, tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "epoch-1.pt").write_bytes(b"one")
    (folder / ".epoch-2.pt.tmp").write_bytes(b"half")  # a write-then-rename in progress
    writer = open(folder / "epoch-2.pt", "wb")  # still being written
    writer.write(b"tw")
    writer.flush()
    state: dict = {}
    try:
        assert node_checkpoints.upload_s3(str(folder), "ckpt", "job-1", s3, state) == []  # first look
        assert node_checkpoints.upload_s3(str(folder), "ckpt", "job-1", s3, state) == ["job-1/epoch-1.pt"]
        assert node_checkpoints.upload_s3(str(folder), "ckpt", "job-1", s3, state) == []  # nothing new
    finally:
        writer.close()
    assert node_checkpoints.upload_s3(str(folder), "ckpt", "job-1", s3, state) == ["job-1/epoch-2.pt"]
    assert _keys(s3) == ["job-1/epoch-1.pt", "job-1/epoch-2.pt"]
    (folder / "epoch-1.pt").write_bytes(b"ONE!")
    os.utime(folder / "epoch-1.pt", ns=(1, 1))
    assert node_checkpoints.upload_s3(str(folder), "ckpt", "job-1", s3, state) == []  # changed: not yet stable
    assert node_checkpoints.upload_s3(str(folder), "ckpt", "job-1", s3, state) == ["job-1/epoch-1.pt"]
    # A new node restores the prefix: complete files only, each renamed into place.
    s3.put_object(Bucket="ckpt", Key="job-1/.epoch-3.pt.tmp", Body=b"never")
    new = tmp_path / "new"
    new.mkdir()
    assert sorted(node_checkpoints.restore_s3(str(new), "ckpt", "job-1", s3)) == ["epoch-1.pt", "epoch-2.pt"]
    assert sorted(p.name for p in new.iterdir()) == ["epoch-1.pt", "epoch-2.pt"]
    assert (new / "epoch-1.pt").read_bytes() == b"ONE!" and (new / "epoch-2.pt").read_bytes() == b"tw"


# --- the `checkpoints` output: what a node needs to write there ---------------------------


def _store(cloud: str) -> dict:
    spec = ClusterSpec(name="ct-test", provider=cloud, gpu=GPU[cloud], nodes=1, spot=True, ssh_cidr="198.51.100.7/32")
    choice = catalog.choose(spec)
    host_keys = (HostKey(*keys.generate("h0")),)
    _, value = run_mocked(lambda: program.build(spec, choice, keys.generate("c")[1], host_keys).checkpoints)
    assert set(value) == set(STORE_KEYS)
    assert value["region"] == choice.region
    return value


def test_each_program_outputs_its_bucket_for_the_nodes() -> None:
    aws = _store("aws")
    assert aws["cloud"] == "aws" and aws["bucket"] == "ct-test-ckpt-x1"
    assert aws["url"] == f"https://ct-test-ckpt-x1.s3.{aws['region']}.amazonaws.com"
    gcp = _store("gcp")
    assert gcp["cloud"] == "gcp" and gcp["url"] == "https://storage.googleapis.com"
    assert gcp["bucket"].startswith("cloudtrain-ckpt-ct-test-")
    azure = _store("azure")
    # The mock names a resource after itself: the account and the container are their `name`s.
    assert azure["cloud"] == "azure" and azure["bucket"] == "ct-test-ckpt/ct-test-ckpt-container"
    assert azure["url"] == "https://ct-test-ckpt.blob.core.windows.net/ct-test-ckpt-container"


def test_the_stack_exports_the_checkpoints_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import runpy

    import pulumi
    import yaml

    from conftest import REPO

    config = {k: str(v) for k, v in yaml.safe_load((REPO / "stacks" / "Pulumi.aws-t4.yaml").read_text())["config"].items()}
    monkeypatch.setenv("CLOUDTRAIN_HOME", str(tmp_path))
    exported: dict = {}
    monkeypatch.setattr(pulumi, "export", lambda k, v: exported.__setitem__(k, v))

    def build():  # type: ignore[no-untyped-def]
        pulumi.runtime.set_all_config(config)
        runpy.run_path(str(REPO / "infra" / "__main__.py"), run_name="__main__")
        return exported[CHECKPOINTS]

    _, value = run_mocked(build)
    assert value["cloud"] == "aws" and value["bucket"] and value["url"].startswith("https://")
