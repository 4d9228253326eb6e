"""AWS outside EC2: the checkpoint bucket (S3) and the nodes' IAM role and instance profile.

The program (provisioner/buckets.py) names them `cloudtrain-ckpt-<random>`, `<cluster>-node-role-<hex>`
and `<cluster>-node-profile-<hex>` (Pulumi's autonames) and tags all three `cloudtrain-cluster=<name>`.
Neither S3 nor IAM filters by tag, so candidates are picked by name (and the role by the
description the program gives it), then each one's tags are read and its value compared exactly.
IAM is global: a role is found from any region (the caveat of GCP's global kinds, docs/clouds.md).
Deletion: a bucket is emptied first, every version and delete marker; a profile loses its role,
then goes; a role loses its inline and attached policies, then goes.
"""

from __future__ import annotations

from typing import Any, Iterator

import boto3
from botocore.exceptions import ClientError

from cloudtrain.provisioner.contract import CLUSTER_TAG
from cloudtrain.provisioner.leftovers.base import GLOBAL, Leftover, Tagged

BUCKET_PREFIX = "cloudtrain-ckpt-"
KINDS = ("bucket", "instance-profile", "iam-role")  # deletion order: the profile holds the role
_GONE = {"NoSuchBucket", "NoSuchEntity"}


def _session(session: Any | None) -> Any:
    return session or boto3.Session()


def _value(tags: list[dict[str, str]]) -> str | None:
    return next((t.get("Value", "") for t in tags if t.get("Key") == CLUSTER_TAG), None)


def _bucket_region(s3: Any, name: str) -> str:
    where = s3.get_bucket_location(Bucket=name).get("LocationConstraint")
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(where, where)


def buckets(session: Any | None = None) -> Iterator[tuple[str, str, str]]:
    """(name, region, tag value) of each checkpoint bucket carrying the cluster tag."""
    s3 = _session(session).client("s3")
    for b in s3.list_buckets().get("Buckets", []):
        if not b["Name"].startswith(BUCKET_PREFIX):
            continue
        try:
            value = _value(s3.get_bucket_tagging(Bucket=b["Name"]).get("TagSet", []))
            region = _bucket_region(s3, b["Name"]) if value is not None else ""
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchTagSet", "NoSuchBucket"):
                continue  # untagged (not ours) or deleted meanwhile
            raise
        if value is not None:
            yield b["Name"], region, value


def identities(session: Any | None = None) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(kind, name, tag value, raw) of each node role and instance profile carrying the cluster tag."""
    iam = _session(session).client("iam")
    for page in iam.get_paginator("list_instance_profiles").paginate():
        for p in page["InstanceProfiles"]:
            if "-node-profile" in p["InstanceProfileName"]:
                # ListInstanceProfiles leaves tags out (IAM's listing calls return a subset); Get has them.
                value = _value(iam.get_instance_profile(InstanceProfileName=p["InstanceProfileName"])["InstanceProfile"].get("Tags", []))
                if value is not None:
                    yield "instance-profile", p["InstanceProfileName"], value, p
    for page in iam.get_paginator("list_roles").paginate():
        for r in page["Roles"]:
            if "-node-role" in r["RoleName"] or str(r.get("Description", "")).startswith("cloudtrain "):
                value = _value(iam.list_role_tags(RoleName=r["RoleName"]).get("Tags", []))
                if value is not None:
                    yield "iam-role", r["RoleName"], value, r


def find(cluster: str, region: str, session: Any | None = None) -> tuple[list[Leftover], list[str]]:
    """The cluster's bucket in `region` (none for GLOBAL) and its role and profile, in deletion
    order; and what could not be listed. Raises when buckets (they bill) cannot be listed."""
    found = [Leftover("bucket", name, where) for name, where, value in buckets(session) if value == cluster and where == region]
    try:
        ids = [Leftover(kind, name, GLOBAL, raw) for kind, name, value, raw in identities(session) if value == cluster]
    except Exception as e:  # noqa: BLE001 - IAM is free: not listing it is a warning, as for VPCs
        return found, [f"IAM roles and instance profiles ({type(e).__name__})"]
    return found + sorted(ids, key=lambda x: KINDS.index(x.kind)), []


def tagged(session: Any | None = None) -> list[Tagged]:
    """status --cloud's rows for buckets (they bill for what they hold), roles and profiles (free)."""
    out = [Tagged("aws", "bucket", name, where, "exists", value, "S3 storage of the checkpoints it holds", where) for name, where, value in buckets(session)]
    out += [Tagged("aws", kind, name, GLOBAL, "exists", value, "free (IAM)", GLOBAL) for kind, name, value, _ in identities(session)]
    return out


def delete(left: Leftover, session: Any | None = None) -> None:
    """Remove one; raises ClientError (NoSuchBucket / NoSuchEntity when already gone)."""
    if left.kind == "bucket":
        _empty_and_delete(_session(session).client("s3", region_name=left.region), left.id)
        return
    iam = _session(session).client("iam")
    if left.kind == "instance-profile":
        for role in iam.get_instance_profile(InstanceProfileName=left.id)["InstanceProfile"].get("Roles", []):
            iam.remove_role_from_instance_profile(InstanceProfileName=left.id, RoleName=role["RoleName"])
        iam.delete_instance_profile(InstanceProfileName=left.id)
        return
    for profile in iam.list_instance_profiles_for_role(RoleName=left.id).get("InstanceProfiles", []):
        iam.remove_role_from_instance_profile(InstanceProfileName=profile["InstanceProfileName"], RoleName=left.id)
    for name in iam.list_role_policies(RoleName=left.id).get("PolicyNames", []):
        iam.delete_role_policy(RoleName=left.id, PolicyName=name)
    for policy in iam.list_attached_role_policies(RoleName=left.id).get("AttachedPolicies", []):
        iam.detach_role_policy(RoleName=left.id, PolicyArn=policy["PolicyArn"])
    iam.delete_role(RoleName=left.id)


def _empty_and_delete(s3: Any, bucket: str) -> None:
    """S3 deletes only an empty bucket; a versioned one keeps old versions and delete markers."""
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        keys = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if keys:  # at most 1000 per page, as DeleteObjects takes
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    s3.delete_bucket(Bucket=bucket)


def gone(e: ClientError) -> bool:
    return e.response.get("Error", {}).get("Code", "") in _GONE
