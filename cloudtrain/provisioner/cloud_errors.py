"""How each cloud says "no capacity here", "not offered here" and "over quota" in Pulumi's output.

Data only: `failover.classify` is the one matcher. Every pattern comes from the clouds' own
error texts as users met them (quoted, with their source, in tests/test_failover.py). Both the
code and the message are matched where a provider prints only the message: the Google provider
(Terraform-bridged) formats a failed operation as its messages alone, without the code
(openshift/release#29959: "Error waiting for instance to create: The zone '...' does not have
enough resources available to fulfill the request.").
"""

from __future__ import annotations

from cloudtrain.provisioner.failover import QuotaSignal, Signal, Signals

AWS = Signals(
    capacity=(
        # On-demand and one-time Spot alike ("There is no Spot capacity available that matches your request").
        Signal("InsufficientInstanceCapacity", r"\bInsufficientInstanceCapacity\b"),
        # AWS's Spot error "not enough spare capacity to fulfill your request for Spot Instances" (EC2 API error codes).
        Signal("UnfulfillableCapacity", r"\bUnfulfillableCapacity\b"),
        Signal(
            "Unsupported",
            r"\bUnsupported\b[^\n]*?not supported in your requested Availability Zone",
            reason="size not offered in this zone",
        ),
    ),
    quota=(
        QuotaSignal("VcpuLimitExceeded", r"\bVcpuLimitExceeded\b", "EC2 vCPUs of this instance family"),
        QuotaSignal("MaxSpotInstanceCountExceeded", r"\bMaxSpotInstanceCountExceeded\b", "EC2 Spot Instance requests"),
        QuotaSignal("InstanceLimitExceeded", r"\bInstanceLimitExceeded\b", "EC2 instances"),
    ),
    raise_at="https://{region}.console.aws.amazon.com/servicequotas/home/services/ec2/quotas (Service Quotas, Amazon EC2, {region})",
)

GCP = Signals(
    capacity=(
        # `\b` keeps the shorter code from matching inside the longer one; both are stock-outs,
        # for on-demand and Spot/preemptible VMs alike (google/fuzzbench#1101: preemptible stock-out).
        Signal("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", r"\bZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS\b"),
        Signal("ZONE_RESOURCE_POOL_EXHAUSTED", r"\bZONE_RESOURCE_POOL_EXHAUSTED\b"),
        Signal("ZONE_RESOURCE_POOL_EXHAUSTED", r"does not have enough resources available to fulfill the request"),
        # The API's HTTP 503 reason (Compute Engine's bulk-creation troubleshooting page).
        Signal("insufficientCapacity", r"\binsufficientCapacity\b"),
    ),
    quota=(
        QuotaSignal("QUOTA_EXCEEDED", r"Quota '(?P<quota>[A-Z0-9_]+)' exceeded", "{quota}"),
        QuotaSignal("QUOTA_EXCEEDED", r"\b(?:QUOTA_EXCEEDED|quotaExceeded)\b", "a Compute Engine quota"),
    ),
    raise_at="https://console.cloud.google.com/iam-admin/quotas (filter by the quota's name and region {region})",
)

AZURE = Signals(
    capacity=(
        Signal("ZonalAllocationFailed", r"\bZonalAllocationFailed\b"),
        Signal("AllocationFailed", r"\bAllocationFailed\b"),
        Signal("OverconstrainedZonalAllocationRequest", r"\bOverconstrainedZonalAllocationRequest\b"),
        Signal("OverconstrainedAllocationRequest", r"\bOverconstrainedAllocationRequest\b"),
        # Also Azure's answer when Spot capacity runs out ("The requested tier ... is currently
        # not available in location ...": MicrosoftDocs azure-compute-docs error-codes-spot.md).
        Signal("SkuNotAvailable", r"\bSkuNotAvailable\b", reason="size not available here now"),
        Signal("SkuNotAvailable", r"is currently not available in location", reason="size not available here now"),
    ),
    quota=(
        # Quota errors come as QuotaExceeded or OperationNotAllowed, always with this sentence,
        # which names the quota ("Standard NCASv3_T4 Family Cores", "LowPriorityCores" for Spot).
        QuotaSignal("QuotaExceeded", r"exceeding approved (?P<quota>[^\n]+?) quota", "{quota}"),
        QuotaSignal("QuotaExceeded", r"\bQuotaExceeded\b", "a Compute vCPU quota"),
    ),
    raise_at="https://aka.ms/ProdportalCRP/#blade/Microsoft_Azure_Capacity/UsageAndQuota.ReactView (Quotas, Compute, {region})",
)
