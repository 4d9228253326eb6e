"""The checkpoint bucket each cloud cluster gets: private, and written by the cluster's nodes only.

One function per cloud, called with one line from its GpuCluster component; each returns what
the instances need to carry (an instance profile, a service account, a grant to each VM's own identity),
the bucket's name, and the `checkpoints` output (contract.py): what a node's watchdog needs to
write there (bootstrap/node/blobs.py), with the node's own identity and no key. Nobody else is granted anything on it; the caller keeps only what its own
cloud credentials allow (reading, and deleting the objects when `down` removes the bucket:
`force_destroy`). A node's checkpoints survive the node (a preempted spot VM is deleted with
its disk) and the caller's laptop.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pulumi

from cloudtrain.provisioner.contract import ClusterPlan, store_entry

# What a node may do with checkpoint objects: write, read back (restore), list, replace.
AWS_NODE_ACTIONS = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
GCP_NODE_ROLE = "roles/storage.objectUser"
# Azure's built-in "Storage Blob Data Contributor".
AZURE_BLOB_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"


def _short(plan: ClusterPlan, n: int) -> str:
    """A short, stable, lowercase id for names with tight limits (GCP accounts, Azure storage)."""
    return hashlib.sha256(plan.cluster_name.encode()).hexdigest()[:n]


@dataclass
class Bucket:
    name: pulumi.Output[str]
    for_nodes: Any  # what each instance is given to act as the writer
    store: pulumi.Output[dict[str, Any]]  # the `checkpoints` output (contract.store_entry)


def aws(name: str, plan: ClusterPlan, parent: pulumi.Resource) -> Bucket:
    import pulumi_aws as aws_sdk

    child = pulumi.ResourceOptions(parent=parent)
    tags = plan.tags()
    bucket = aws_sdk.s3.BucketV2(f"{name}-ckpt", bucket_prefix="cloudtrain-ckpt-", force_destroy=True, tags=tags, opts=child)
    aws_sdk.s3.BucketPublicAccessBlock(
        f"{name}-ckpt-private", bucket=bucket.id, block_public_acls=True, block_public_policy=True,
        ignore_public_acls=True, restrict_public_buckets=True, opts=child,
    )
    role = aws_sdk.iam.Role(
        f"{name}-node-role",
        assume_role_policy=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}),
        description=f"cloudtrain {plan.cluster_name}: the nodes write checkpoints",
        tags=tags, opts=child,
    )
    aws_sdk.iam.RolePolicy(f"{name}-node-ckpt", role=role.id, policy=bucket.arn.apply(lambda arn: json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": AWS_NODE_ACTIONS, "Resource": f"{arn}/*"},
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": arn},
        ]})), opts=child)
    # Whatever else the account grants, nobody but the nodes' role puts objects in it.
    aws_sdk.s3.BucketPolicy(f"{name}-ckpt-policy", bucket=bucket.id, policy=pulumi.Output.all(bucket.arn, role.arn).apply(
        lambda a: json.dumps({"Version": "2012-10-17", "Statement": [
            {"Sid": "OnlyTheClusterNodesWrite", "Effect": "Deny", "Principal": "*", "Action": ["s3:PutObject"],
             "Resource": f"{a[0]}/*", "Condition": {"ArnNotEquals": {"aws:PrincipalArn": a[1]}}},
            {"Sid": "TlsOnly", "Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": [a[0], f"{a[0]}/*"],
             "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
        ]})), opts=child)
    profile = aws_sdk.iam.InstanceProfile(f"{name}-node-profile", role=role.name, tags=tags, opts=child)
    # Virtual-hosted style, the region's own endpoint (S3 User Guide, "Virtual hosting of buckets").
    url = bucket.bucket.apply(lambda b: f"https://{b}.s3.{plan.region}.amazonaws.com")
    return Bucket(bucket.bucket, profile.name, store_entry("aws", bucket.bucket, url, plan.region))


def gcp(name: str, plan: ClusterPlan, parent: pulumi.Resource) -> Bucket:
    import pulumi_gcp as gcp_sdk

    child = pulumi.ResourceOptions(parent=parent)
    bucket = gcp_sdk.storage.Bucket(
        f"{name}-ckpt", name=f"cloudtrain-ckpt-{plan.cluster_name}-{_short(plan, 8)}"[:63], location=plan.region.upper(),
        force_destroy=True, uniform_bucket_level_access=True, public_access_prevention="enforced",
        labels=plan.tags(), opts=child,
    )
    account = gcp_sdk.serviceaccount.Account(
        f"{name}-node-sa", account_id=f"ct-ckpt-{_short(plan, 12)}", display_name=f"cloudtrain {plan.cluster_name} nodes",
        description=plan.marker(), opts=child,
    )
    gcp_sdk.storage.BucketIAMMember(
        f"{name}-ckpt-writer", bucket=bucket.name, role=GCP_NODE_ROLE,
        member=account.email.apply(lambda e: f"serviceAccount:{e}"), opts=child,
    )
    return Bucket(bucket.name, gcp_sdk.compute.InstanceServiceAccountArgs(
        email=account.email, scopes=["https://www.googleapis.com/auth/devstorage.read_write"]),
        store_entry("gcp", bucket.name, "https://storage.googleapis.com", plan.region))


def azure(name: str, plan: ClusterPlan, parent: pulumi.Resource, resource_group: pulumi.Input[str]) -> Bucket:
    """The storage account and its private container; `azure_writer` grants each VM's identity."""
    from pulumi_azure_native import storage

    child = pulumi.ResourceOptions(parent=parent)
    account = storage.StorageAccount(
        f"{name}-ckpt", account_name=f"ctckpt{_short(plan, 16)}", resource_group_name=resource_group, location=plan.region,
        kind="StorageV2", sku=storage.SkuArgs(name="Standard_LRS"),
        allow_blob_public_access=False, allow_shared_key_access=False,  # Entra ID only: role assignments decide
        minimum_tls_version="TLS1_2", enable_https_traffic_only=True, tags=plan.tags(), opts=child,
    )
    container = storage.BlobContainer(
        f"{name}-ckpt-container", container_name="checkpoints", account_name=account.name,
        resource_group_name=resource_group, public_access="None", opts=child,
    )
    url = pulumi.Output.concat("https://", account.name, ".blob.core.windows.net/", container.name)
    name_ = pulumi.Output.concat(account.name, "/", container.name)
    return Bucket(name_, container, store_entry("azure", name_, url, plan.region))


def azure_writer(node: str, bucket: Bucket, vm: Any, parent: pulumi.Resource) -> None:
    """Storage Blob Data Contributor on the container alone, for one VM's system-assigned identity."""
    from pulumi_azure_native import authorization

    container = bucket.for_nodes
    authorization.RoleAssignment(
        f"{node}-ckpt-writer", principal_id=vm.identity.apply(lambda ident: ident.principal_id), principal_type="ServicePrincipal",
        # The built-in role's id within the container's subscription ("/subscriptions/<id>/...").
        role_definition_id=container.id.apply(lambda cid: "/".join(cid.split("/")[:3]) + f"/providers/Microsoft.Authorization/roleDefinitions/{AZURE_BLOB_CONTRIBUTOR}"),
        scope=container.id, opts=pulumi.ResourceOptions(parent=parent),
    )
