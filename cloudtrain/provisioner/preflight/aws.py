"""AWS pre-flight through boto3: credentials (STS), the instance type offered in the zone,
the AMI resolves, and the GPU vCPU quota covers the request (Service Quotas).

The live DescribeInstanceTypeOfferings answer is the authority on where a type is offered: a
zone that lacks it is NotOffered (failover moves on), a short quota is QuotaExceeded (it stops).
The credential check runs once per process per access key: `check` runs once per placement.
"""

from __future__ import annotations

from dataclasses import replace

from cloudtrain import catalog
from cloudtrain.catalog import Choice, Image, Offer
from cloudtrain.errors import MissingTool, NotOffered, PreflightError, QuotaExceeded
from cloudtrain.spec import ClusterSpec

try:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

    from cloudtrain.provisioner.aws import ami_query  # needs pulumi-aws
except ImportError as e:  # without the cloud extra: check() says so in one line
    _MISSING: ImportError | None = e
    BotoCoreError = ClientError = NoCredentialsError = PartialCredentialsError = ()  # type: ignore[assignment,misc]
else:
    _MISSING = None

# EC2 vCPU quotas per instance family (Service Quotas codes, documented by AWS per family).
_QUOTAS = {
    ("g", False): ("L-DB2E81BA", "Running On-Demand G and VT instances"),
    ("p", False): ("L-417A185B", "Running On-Demand P instances"),
    ("g", True): ("L-3819A6DF", "All G and VT Spot Instance Requests"),
    ("p", True): ("L-7212CCBC", "All P Spot Instance Requests"),
}
_CRED_HINT = "run `aws configure` or `aws sso login`, or set AWS_PROFILE / AWS_ACCESS_KEY_ID"
_accounts: dict[str, str] = {}  # access key id -> account id, for this process


def _code(e: ClientError) -> str:
    return e.response.get("Error", {}).get("Code", "")


def credentials(session: "boto3.Session") -> str:
    """The caller's account id; refuses missing, expired or invalid credentials."""
    try:
        creds = session.get_credentials()
        key = creds.access_key if creds is not None else None
        if key in _accounts:
            return _accounts[key]
        account = session.client("sts").get_caller_identity()["Account"]
        if key is not None:
            _accounts[key] = account
        return account
    except (NoCredentialsError, PartialCredentialsError) as e:
        raise PreflightError("no AWS credentials found", _CRED_HINT) from e
    except ClientError as e:
        raise PreflightError(f"AWS rejected the credentials ({_code(e)})", _CRED_HINT) from e
    except BotoCoreError as e:
        raise PreflightError(f"cannot reach AWS STS: {e}", "check the network and AWS_REGION") from e


def offering_zones(ec2, offer: Offer, region: str) -> list[str]:
    """The region's zones that offer the type, per the live DescribeInstanceTypeOfferings answer."""
    try:
        resp = ec2.describe_instance_type_offerings(
            LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [offer.instance_type]}]
        )
    except ClientError as e:
        raise PreflightError(f"cannot list EC2 offerings in {region} ({_code(e)})", "check the IAM permission ec2:DescribeInstanceTypeOfferings") from e
    return sorted(o["Location"] for o in resp.get("InstanceTypeOfferings", []))


def zones(choice: Choice, session: "boto3.Session | None" = None) -> list[str]:
    """Every zone of the choice's region that offers its type: failover can try each in turn
    (as `replace(choice, zone=z)`) when one has no capacity, before moving to another region."""
    if _MISSING is not None:
        raise MissingTool(f"the AWS libraries are not installed ({_MISSING.name})", "install the cloud extra: pip install 'cloudtrain[cloud]'") from _MISSING
    session = session or boto3.Session(region_name=choice.region)
    try:
        return offering_zones(session.client("ec2", region_name=choice.region), choice.offer, choice.region)
    except BotoCoreError as e:
        raise PreflightError(f"cannot reach AWS in {choice.region}: {e}", "check the network") from e


def offered_zone(ec2, offer: Offer, region: str, zone: str | None) -> str:
    """The zone to use: the one asked for if it offers the type, else the first that does."""
    offering = offering_zones(ec2, offer, region)
    if not offering:
        raise NotOffered(
            f"{offer.instance_type} is not offered in {region} for this account",
            f"try another --region ({', '.join(r for r in dict.fromkeys(catalog.region_of('aws', z) for z in offer.locations) if r != region) or 'none listed'})",
            placement=region,
        )
    if zone is not None and zone not in offering:
        raise NotOffered(f"{offer.instance_type} is not offered in {zone}", f"choose --zone from {', '.join(offering)}", placement=zone)
    return zone or offering[0]


def resolve_ami(ec2, image: Image, region: str) -> str:
    """The newest AMI matching the same owner and name filter the Pulumi program uses."""
    owners, filters = ami_query(image)
    try:
        found = ec2.describe_images(Owners=owners, Filters=[{"Name": f["name"], "Values": f["values"]} for f in filters])["Images"]
    except ClientError as e:
        raise PreflightError(f"cannot look up AMIs in {region} ({_code(e)})", "check the IAM permission ec2:DescribeImages") from e
    if not found:
        pattern = filters[0]["values"][0]
        raise PreflightError(f"no AMI named {pattern!r} from owner {owners[0]} in {region}", "try another --region, or --image ubuntu")
    return max(found, key=lambda im: im.get("CreationDate", ""))["ImageId"]


def quota_code(offer: Offer, spot: bool) -> tuple[str, str]:
    family = offer.instance_type[0]
    if (family, spot) not in _QUOTAS:
        raise PreflightError(f"no known vCPU quota for {offer.instance_type}", "report this; the catalog has a new family")
    return _QUOTAS[(family, spot)]


def check_quota(quotas, offer: Offer, nodes: int, spot: bool, region: str) -> float:
    """The account's vCPU limit for the family; refuses when it is below what the cluster needs."""
    code, title = quota_code(offer, spot)
    try:
        try:
            value = quotas.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"]
        except ClientError as e:
            if _code(e) != "NoSuchResourceException":
                raise
            # An account that never raised the quota has only the default value.
            value = quotas.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"]
    except ClientError as e:
        raise PreflightError(
            f"cannot read the EC2 quota {title!r} ({_code(e)})",
            "grant servicequotas:GetServiceQuota and servicequotas:GetAWSDefaultServiceQuota, or check the quota in the console",
        ) from e
    need = offer.vcpus * nodes
    if value < need:
        raise QuotaExceeded(
            f"{nodes} x {offer.instance_type} need {need} vCPUs but the quota {title!r} in {region} is {value:g}",
            f"request an increase: aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {code} --desired-value {need} --region {region}",
        )
    return value


def check(spec: ClusterSpec, choice: Choice, session: "boto3.Session | None" = None, quotas=None) -> tuple[Choice, dict[str, str]]:
    """Run every AWS check; return the choice with the zone pinned to one that offers the type.

    `session` and `quotas` (a service-quotas client) default to the user's own; tests pass theirs.
    """
    if _MISSING is not None:
        raise MissingTool(f"the AWS libraries are not installed ({_MISSING.name})", "install the cloud extra: pip install 'cloudtrain[cloud]'") from _MISSING
    session = session or boto3.Session(region_name=choice.region)
    credentials(session)
    try:
        ec2 = session.client("ec2", region_name=choice.region)
        zone = offered_zone(ec2, choice.offer, choice.region, choice.zone)
        resolve_ami(ec2, choice.image, choice.region)
        quotas = quotas or session.client("service-quotas", region_name=choice.region)
        check_quota(quotas, choice.offer, spec.nodes, spec.spot, choice.region)
    except BotoCoreError as e:
        raise PreflightError(f"cannot reach AWS in {choice.region}: {e}", "check the network") from e
    return replace(choice, zone=zone), {}
