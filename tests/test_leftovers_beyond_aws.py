"""After lost state, `down` and `status --cloud` find what the AWS program makes outside EC2:
the checkpoint bucket (S3, versioned) and the nodes' IAM role and instance profile (and the EC2 key pair), by
the names and tags provisioner/buckets.py gives them; S3 and IAM through boto3 against moto.

Each is planted for the cluster and for clusters whose names extend it or differ in case (and
untagged): only the cluster's may go, in dependency order (the profile before its role).
"""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from cloudtrain.errors import ProvisionError
from cloudtrain.provisioner import inventory, leftovers
from cloudtrain.provisioner.contract import CLUSTER_TAG
from cloudtrain.provisioner.leftovers import aws
from cloudtrain.provisioner.leftovers.base import GLOBAL
from cloudtrain.state import Store

REGION = "us-east-1"
WEST = "eu-west-1"


@pytest.fixture
def session(monkeypatch):
    # No default images: `status --cloud` asks every region's EC2, each a moto backend (as in test_inventory).
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
           "AWS_EC2_METADATA_DISABLED": "true", "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        yield boto3.Session(region_name=REGION)
    from moto.core.base_backend import BackendDict  # later tests' backends get their images again

    for backends in BackendDict._instances:
        backends.clear()
    BackendDict._instances.clear()


def _tags(value: str | None) -> list[dict[str, str]]:
    return [{"Key": "managed-by", "Value": "cloudtrain"}] + ([{"Key": CLUSTER_TAG, "Value": value}] if value is not None else [])


def plant(session, value: str | None, suffix: str, region: str = REGION) -> dict[str, str]:
    """A bucket holding checkpoints (old versions and a delete marker too), the nodes' role with
    its inline policy, and the instance profile holding it: as buckets.aws makes them."""
    s3 = session.client("s3", region_name=region)
    bucket = f"cloudtrain-ckpt-{suffix}"
    where = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **where)
    if value is not None:
        s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": _tags(value)})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for body in (b"epoch 1", b"epoch 2"):
        s3.put_object(Bucket=bucket, Key="run-1/ckpt.pt", Body=body)
    s3.put_object(Bucket=bucket, Key="run-1/old.pt", Body=b"x")
    s3.delete_object(Bucket=bucket, Key="run-1/old.pt")
    iam = session.client("iam")
    name = value or "untagged"
    role = f"{name}-node-role-{suffix[:7]}"
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust), Description=f"cloudtrain {name}: the nodes write checkpoints",
                    Tags=_tags(value) if value is not None else [])
    iam.put_role_policy(RoleName=role, PolicyName=f"{name}-node-ckpt", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    profile = f"{name}-node-profile-{suffix[:7]}"
    iam.create_instance_profile(InstanceProfileName=profile, Tags=_tags(value) if value is not None else [])
    iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=role)
    return {"bucket": bucket, "iam-role": role, "instance-profile": profile}


def _live(session) -> set[str]:
    iam = session.client("iam")
    names = {b["Name"] for b in session.client("s3").list_buckets()["Buckets"]}
    names |= {r["RoleName"] for r in iam.list_roles()["Roles"]}
    return names | {p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]}


def test_sweep_empties_and_deletes_the_bucket_then_the_profile_then_the_role(session):
    mine = plant(session, "c1", "aaaaaaa1")
    west = plant(session, "c1", "bbbbbbb1", region=WEST)  # the same name's bucket in another region
    others = [plant(session, "c1-other", "ccccccc1"), plant(session, "C1", "ddddddd1"), plant(session, None, "eeeeeee1")]
    ec2 = session.client("ec2")
    keys = {v: ec2.create_key_pair(KeyName=f"{v}-key", TagSpecifications=[{"ResourceType": "key-pair", "Tags": _tags(v)}])["KeyPairId"] for v in ("c1", "c1-other")}
    found, _ = aws.aws_beyond.find("c1", REGION)
    beyond = [(x.kind, x.id) for x in found]
    # Global IAM: both regions' role and profile; each profile before any role (it holds one).
    assert [k for k, _ in beyond] == ["bucket", "instance-profile", "instance-profile", "iam-role", "iam-role"]
    assert set(beyond) == {("bucket", mine["bucket"])} | {(k, x[k]) for k in ("instance-profile", "iam-role") for x in (mine, west)}
    assert west["bucket"] not in {x.id for x in found}, "a bucket of another region was taken"
    said: list[str] = []
    leftovers.sweep("aws", "c1", REGION, said.append)
    live = _live(session)
    assert not set(mine.values()) & live and not {west["instance-profile"], west["iam-role"]} & live  # IAM is global
    assert west["bucket"] in live
    for other in others:
        assert set(other.values()) <= live, "the sweep touched what is not this cluster's"
    assert any(mine["bucket"] in s and "that Pulumi state did not know" in s for s in said)
    assert [k["KeyPairId"] for k in ec2.describe_key_pairs()["KeyPairs"]] == [keys["c1-other"]]  # the program's key pair went too
    assert aws.find("c1", GLOBAL)[0] == []  # a second down finds nothing more


def test_a_role_that_cannot_go_is_named_and_the_rest_still_goes(session, monkeypatch):
    mine = plant(session, "c2", "fffffff2")
    real = aws.aws_beyond.delete

    def refuse_role(left, s=None):
        if left.kind == "iam-role":
            raise aws.ClientError({"Error": {"Code": "AccessDenied", "Message": "x"}}, "DeleteRole")
        real(left, s)

    monkeypatch.setattr(aws.aws_beyond, "delete", refuse_role)
    with pytest.raises(ProvisionError) as e:
        leftovers.sweep("aws", "c2", GLOBAL, lambda s: None)  # GLOBAL: IAM alone, no region's EC2
    assert f"iam-role {mine['iam-role']} in {GLOBAL} (AccessDenied)" in e.value.line()
    assert _live(session) & set(mine.values()) == {mine["iam-role"], mine["bucket"]}


def test_status_lists_them_and_down_of_the_lost_name_removes_what_only_iam_holds(session, tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUDTRAIN_HOME", str(tmp_path / "home"))
    mine = plant(session, "ghost", "1111111a")
    kept = plant(session, "other", "2222222b")
    monkeypatch.setattr(aws, "regions", lambda s=None: [REGION])  # every region's EC2 is test_inventory's; here, S3 and IAM
    store = Store()
    conns = {"aws": {"session": session}}
    seen = inventory.unknown(store, "aws", conns=conns)
    rows = {(t.kind, t.id, t.cluster, t.region) for t in seen.found}
    assert ("bucket", mine["bucket"], "ghost", REGION) in rows
    assert ("iam-role", mine["iam-role"], "ghost", GLOBAL) in rows and ("instance-profile", kept["instance-profile"], "other", GLOBAL) in rows
    aws.aws_beyond.delete(aws.Leftover("bucket", mine["bucket"], REGION))  # now only IAM holds the name
    assert inventory.down_unrecorded(store, "ghost", lambda _: None, force=True, confirm=None, show=lambda _: None, conns=conns)
    live = _live(session)
    assert not set(mine.values()) & live and set(kept.values()) <= live
