"""Capacity failover on a cloud `up` (issue 10 item 3), with a stack double and a pre-flight double.

No cloud and no Pulumi CLI can run here, so the two boundaries are doubles: the stack (shaped
like ClusterStack: `up(config)`, `destroy()`, `state()`) fails the way the real one does, a
ProvisionError raised from the Pulumi CommandError whose output carries the cloud's own error
text, quoted below with its source; pre-flight returns the placement or raises NotOffered /
QuotaExceeded. Everything between is the real flow: the catalog's candidates, host keys and the
cluster record in a real home, the stack config each attempt writes.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

import pulumi.automation as auto
import pytest

from cloudtrain import catalog
from cloudtrain.catalog import Choice
from cloudtrain.errors import NoCapacity, NotOffered, ProvisionError, QuotaExceeded
from cloudtrain.provisioner import cloud, failover
from cloudtrain.provisioner.preflight import pulumi_cli
from cloudtrain.spec import ClusterSpec
from cloudtrain.state import ClusterRecord, Store

CIDR = "198.51.100.7/32"

# --- the clouds' own words ----------------------------------------------------------------
# (provider, the code failover must report, the cloud's text as users met it; source)
CAPACITY = [
    # red-hat-storage/ocs-ci#9263 (terraform-provider-aws, the engine pulumi-aws bridges)
    ("aws", "InsufficientInstanceCapacity",
     "creating EC2 Instance: InsufficientInstanceCapacity: We currently do not have sufficient m6i.xlarge capacity in the "
     "Availability Zone you requested (us-east-2a). Our system will be working on provisioning additional capacity. You can "
     "currently get m6i.xlarge capacity by not specifying an Availability Zone in your request or choosing us-east-2b, us-east-2c."),
    # ned1313/Getting-Started-Terraform#44 (aws-sdk-go-v2 form, as pulumi-aws v6 prints it)
    ("aws", "Unsupported",
     "creating EC2 Instance: operation error EC2: RunInstances, https response error StatusCode: 400, RequestID: "
     "f5620d69-168d-41c0-ac2b-070fa64e0707, api error Unsupported: Your requested instance type (t3.micro) is not supported in "
     "your requested Availability Zone (us-east-1e). Please retry your request by not specifying an Availability Zone or "
     "choosing us-east-1a, us-east-1b, us-east-1c, us-east-1d, us-east-1f."),
    # Spot: cortexlabs/cortex#1258
    ("aws", "InsufficientInstanceCapacity",
     "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity available that matches your "
     "request. Launching EC2 instance failed."),
    # googlefonts/fontbakery-dashboard#81
    ("gcp", "ZONE_RESOURCE_POOL_EXHAUSTED",
     "ZONE_RESOURCE_POOL_EXHAUSTED: The zone 'projects/fontbakery-168509/zones/us-central1-a' does not have enough resources "
     "available to fulfill the request. Try a different zone, or try again later."),
    # scylladb/scylla-cluster-tests#12477
    ("gcp", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
     "503 SERVICE UNAVAILABLE ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS: The zone 'projects/sct-project-1/zones/us-east1-c' "
     "does not have enough resources available to fulfill the request.  '(resource type:compute)'."),
    # openshift/release#29959: the Terraform-bridged Google provider prints the message only, no code
    ("gcp", "ZONE_RESOURCE_POOL_EXHAUSTED",
     "Error: Error waiting for instance to create: The zone 'projects/XXXXXXXXXXXXXXXXXXXXXXXX/zones/us-central1-c' does not "
     "have enough resources available to fulfill the request. '(resource type:compute)'."),
    # Preemptible (spot) stock-out: google/fuzzbench#1101
    ("gcp", "ZONE_RESOURCE_POOL_EXHAUSTED",
     "The zone 'projects/fuzzbench/zones/us-central1-a' does not have enough resources available to fulfill the request.  "
     "'(resource type:compute)'."),
    # cloud.google.com/compute/docs/troubleshooting/troubleshooting-bulk-vm-creation ("Insufficient capacity")
    ("gcp", "insufficientCapacity", 'HTTP 503 "reason": "insufficientCapacity"'),
    # openshift/release#5182
    ("azure", "ZonalAllocationFailed",
     'Error: Code="ZonalAllocationFailed" Message="Allocation failed. We do not have sufficient capacity for the requested VM '
     'size in this zone. Read more about improving likelihood of allocation success at http://aka.ms/allocation-guidance"'),
    # vmware-tanzu/community-edition#3963
    ("azure", "AllocationFailed",
     'failed to create virtual machine: Code="AllocationFailed" Message="Allocation failed. We do not have sufficient capacity '
     'for the requested VM size in this region. Read more about improving likelihood of allocation success at '
     'http://aka.ms/allocation-guidance"'),
    # Azure-Samples/aks-store-demo#115
    ("azure", "OverconstrainedAllocationRequest",
     'Code="OverconstrainedAllocationRequest" Message="Allocation failed. VM(s) with the following constraints cannot be '
     'allocated, because the condition is too restrictive. Please remove some constraints and try again. Constraints applied '
     'are:\\n - Networking Constraints (such as Accelerated Networking or IPv6)\\n - VM Size\\n" Target="0"'),
    # jenkins-infra/azure#1416
    ("azure", "OverconstrainedZonalAllocationRequest",
     'polling after CreateOrUpdate: polling failed: the Azure API returned the following error:\n\nStatus: '
     '"OverconstrainedZonalAllocationRequest"\nCode: ""\nMessage: "Allocation failed. VM(s) with the following constraints '
     'cannot be allocated, because the condition is too restrictive. Please remove some constraints and try again. '
     'Constraints applied are:\\n  - Availability Zone\\n  - VM Size\\n"'),
    # microsoft/PartsUnlimitedMRP#133
    ("azure", "SkuNotAvailable",
     '{ "error": { "code": "SkuNotAvailable", "message": "The requested size for resource \'/subscriptions/2c96e02c-517e-4e30-'
     "a63d-00b2c4ceaee0/resourceGroups/rogermrppartsunlimited/providers/Microsoft.Compute/virtualMachines/mrppartsunlimitedroger' "
     "is currently not available in location 'brazilsouth' zones '' for subscription '2c96e02c-517e-4e30-a63d-00b2c4ceaee0'. "
     'Please try another size or deploy to a different location or zones. See https://aka.ms/azureskunotavailable for details." } }'),
    # Spot, message only: MicrosoftDocs/azure-compute-docs articles/virtual-machines/error-codes-spot.md
    ("azure", "SkuNotAvailable",
     "The requested tier for resource '<resource>' is currently not available in location '<location>' for subscription "
     "'<subscriptionID>'. Try another tier or deploy to a different location."),
]

# (provider, the quota's name the line must carry, where to raise it, the cloud's text; source)
QUOTA = [
    # bentoml/bentoctl#202
    ("aws", "EC2 vCPUs", "servicequotas",
     "creating EC2 Instance: VcpuLimitExceeded: You have requested more vCPU capacity than your current vCPU limit of 32 allows "
     "for the instance bucket that the specified instance type belongs to. Please visit "
     "http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit."),
    # fastai/course-v3#165
    ("gcp", "GPUS_ALL_REGIONS", "console.cloud.google.com/iam-admin/quotas",
     "Could not fetch resource:\n - Quota 'GPUS_ALL_REGIONS' exceeded. Limit: 0.0 globally."),
    # The code alone, as the same GCP page gives it ("Quota exceeded"): the line says so plainly
    ("gcp", "a Compute Engine quota", "console.cloud.google.com/iam-admin/quotas", 'HTTP 403 "reason": "quotaExceeded"'),
    # skypilot-org/skypilot#464
    ("azure", "Standard NCASv3_T4 Family Cores", "aka.ms/ProdportalCRP",
     "Exception Details:      (QuotaExceeded) Operation could not be completed as it results in exceeding approved Standard "
     "NCASv3_T4 Family Cores quota. Additional details - Deployment Model: Resource Manager, Location: southcentralus, Current "
     "Limit: 0, Current Usage: 0, Additional Required: 4, (Minimum) New Limit Required: 4."),
    # Spot quota: scylladb/scylla-cluster-tests#4994
    ("azure", "LowPriorityCores", "aka.ms/ProdportalCRP",
     "exception=(OperationNotAllowed) Operation could not be completed as it results in exceeding approved LowPriorityCores "
     "quota. Additional details - Deployment Model: Resource Manager, Location: eastus, Current Limit: 100, Current Usage: 100, "
     "Additional Required: 8, (Minimum) New Limit Required: 108."),
]


def pulumi_failure(message: str) -> auto.CommandError:
    """The CommandError the Automation API raises when `pulumi up` fails: the engine's output
    with the provider's error in its Diagnostics section."""
    stdout = (
        "Updating (c1):\n +  pulumi:pulumi:Stack cloudtrain-c1 creating (0s)\n"
        "Diagnostics:\n  cloud:compute:Instance (c1-0):\n    error: 1 error occurred:\n"
        f"    \t* {message}\n\nResources:\n    + 4 created\n"
    )
    return auto.CommandError(auto.CommandResult(stdout=stdout, stderr="", code=255))


# --- doubles ------------------------------------------------------------------------------


def where(config: dict[str, str]) -> str:
    """The placement an attempt's stack config names (each cloud's own keys)."""
    return config.get("gcp:zone") or config.get("cloudtrain:zone") or config.get("aws:region") or config["azure-native:location"]


class StackDouble:
    """ClusterStack's shape. `fail` maps a placement to the cloud's text its `up` fails with;
    a failed `up` has made something (the network, say), so `live` stays true until destroy."""

    def __init__(self, fail: dict[str, str] | None = None, fail_all: str | None = None) -> None:
        self.fail = fail or {}
        self.fail_all = fail_all
        self.log: list[tuple[str, ...]] = []
        self.live = False
        self.destroy_error: Exception | None = None

    def state(self) -> dict[str, Any]:
        return {"stack": "c1", "project": "cloudtrain", "backend_url": "file:///double", "work_dir": "/double"}

    def up(self, config: dict[str, str]) -> dict[str, Any]:
        place = where(config)
        assert not self.live, "an attempt started before the failed one was removed"
        self.log.append(("up", place))
        self.live = True
        text = self.fail.get(place, self.fail_all)
        if text is not None:
            err = pulumi_failure(text)
            # Exactly what ClusterStack.up raises for a CommandError.
            raise ProvisionError(f"pulumi up failed: {text.splitlines()[0]}", "fix the cause, then rerun") from err
        node = {"name": "c1-0", "publicIp": "203.0.113.5", "privateIp": "10.0.0.5", "sshUser": "ubuntu", "sshPort": 22,
                "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDouble"}
        return {"nodes": [node]}

    def destroy(self) -> bool:
        self.log.append(("destroy",))
        if self.destroy_error:
            raise self.destroy_error
        self.live = False
        return True


class Preflight:
    """Pre-flight's answers by placement: NotOffered / QuotaExceeded where told, else the choice
    (AWS's pins a zone, as preflight/aws.py does, so the record must end with the zone)."""

    def __init__(self, not_offered: set[str] = frozenset(), quota: str | None = None, pin_zone: bool = False) -> None:
        self.not_offered, self.quota, self.pin_zone = not_offered, quota, pin_zone
        self.seen: list[str] = []

    def __call__(self, spec: ClusterSpec, choice: Choice) -> tuple[Choice, dict[str, str]]:
        place = failover.placement(choice)
        self.seen.append(place)
        if self.quota:
            raise QuotaExceeded(self.quota, "request an increase")
        if place in self.not_offered:
            raise NotOffered(f"{choice.offer.instance_type} is not offered in {place} for this account", placement=place)
        if self.pin_zone and choice.zone is None:
            from dataclasses import replace

            choice = replace(choice, zone=choice.region + "a")
        return choice, {}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network (the caller's address comes from --ssh-cidr) and a Pulumi CLI 'present'."""

    def refuse(*a, **k):
        raise AssertionError("test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(pulumi_cli, "require", lambda: "pulumi-cli")


CLASSES = {"aws": cloud.AwsProvisioner, "gcp": cloud.GcpProvisioner, "azure": cloud.AzureProvisioner}


def make(provider: str, stack: StackDouble, preflight: Preflight, lines: list[str]):
    class Prov(CLASSES[provider]):
        def preflight(self, spec, choice):
            return preflight(spec, choice)

    return Prov(on_output=None, say=lines.append, stack_factory=lambda *a: stack)


def new_cluster(home, provider: str, **kw):
    spec = ClusterSpec(name="c1", provider=provider, gpu="t4", ssh_cidr=CIDR, **kw)
    cdir = Store().cluster_dir("c1")
    cdir.create(provider=provider)
    return spec, cdir, ClusterRecord(spec=spec)


def spec_offer(spec: ClusterSpec) -> str:
    return catalog.choose(spec).offer.instance_type


def places(spec: ClusterSpec) -> list[str]:
    return [failover.placement(c) for c in catalog.candidates(spec)]


# --- tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("provider,code,text", CAPACITY, ids=[f"{p}-{c}-{i}" for i, (p, c, _) in enumerate(CAPACITY)])
def test_each_clouds_capacity_error_removes_the_attempt_and_tries_the_next(home, provider, code, text):
    spec, cdir, record = new_cluster(home, provider)
    first, second = places(spec)[:2]
    stack, lines = StackDouble(fail={first: text}), []
    cluster = make(provider, stack, Preflight(), lines).create(spec, cdir, record)

    assert stack.log == [("up", first), ("destroy",), ("up", second)], "the failed attempt is destroyed before the next"
    assert lines[0].startswith(f"{first}: ") and f"({code})" in lines[0] and lines[0].endswith(f"trying {second}")
    assert lines[1] == f"placed in {second} after 1 failed attempt(s)"
    assert (record.spec.zone or record.spec.region) == second
    assert (cdir.load().spec.zone or cdir.load().spec.region) == second, "the saved record names the placement that worked"
    assert [n.host for n in cluster.nodes] == ["203.0.113.5"]


@pytest.mark.parametrize("provider,quota,raise_at,text", QUOTA, ids=[f"{p}-{q}" for p, q, _, _ in QUOTA])
def test_a_quota_error_at_create_time_stops_at_once_naming_the_quota(home, provider, quota, raise_at, text):
    spec, cdir, record = new_cluster(home, provider)
    stack, lines = StackDouble(fail_all=text), []
    with pytest.raises(QuotaExceeded) as e:
        make(provider, stack, Preflight(), lines).create(spec, cdir, record)

    assert stack.log == [("up", places(spec)[0]), ("destroy",)], "one attempt, then its resources are removed"
    assert not stack.live and lines == []
    assert quota in e.value.message and raise_at in e.value.hint
    assert "\n" not in e.value.line()


def test_attempts_follow_the_catalogs_order_are_bounded_and_the_final_line_names_each(home):
    spec, cdir, record = new_cluster(home, "gcp")
    order = places(spec)
    assert len(order) > failover.MAX_ATTEMPTS, "the catalog offers GCP T4 in more zones than one up tries"
    text = CAPACITY[3][2]  # ZONE_RESOURCE_POOL_EXHAUSTED
    stack, lines = StackDouble(fail_all=text), []
    with pytest.raises(NoCapacity) as e:
        make("gcp", stack, Preflight(), lines).create(spec, cdir, record)

    tried = order[: failover.MAX_ATTEMPTS]
    assert stack.log == [step for p in tried for step in (("up", p), ("destroy",))]
    assert [ln.split(":")[0] for ln in lines] == tried
    assert lines[-1].endswith("no placement left to try")
    assert e.value.message.startswith(f"no placement could take {spec_offer(spec)}; tried {tried[0]}: ")
    assert all(f"{p}: no capacity (ZONE_RESOURCE_POOL_EXHAUSTED)" in e.value.message for p in tried)
    assert f"{len(order) - len(tried)} more placement(s) not tried" in e.value.hint
    assert e.value.exit_code == 1 and not stack.live


def test_region_keeps_every_attempt_in_that_region(home):
    spec, cdir, record = new_cluster(home, "gcp", region="us-central1")
    stack, lines = StackDouble(fail_all=CAPACITY[4][2]), []
    with pytest.raises(NoCapacity) as e:
        make("gcp", stack, Preflight(), lines).create(spec, cdir, record)

    ups = [step[1] for step in stack.log if step[0] == "up"]
    assert ups == places(spec) and len(ups) > 1
    assert all(z.startswith("us-central1-") for z in ups)
    assert "drop --region" in e.value.hint


def test_zone_pins_a_single_attempt(home):
    spec, cdir, record = new_cluster(home, "gcp", zone="us-central1-b")
    stack, lines = StackDouble(fail_all=CAPACITY[3][2]), []
    with pytest.raises(NoCapacity) as e:
        make("gcp", stack, Preflight(), lines).create(spec, cdir, record)

    assert stack.log == [("up", "us-central1-b"), ("destroy",)]
    assert "tried us-central1-b: no capacity" in e.value.message and "drop --zone" in e.value.hint


def test_not_offered_from_preflight_moves_on_without_making_anything(home):
    spec, cdir, record = new_cluster(home, "gcp")
    first, second = places(spec)[:2]
    stack, lines, pre = StackDouble(), [], Preflight(not_offered={first})
    make("gcp", stack, pre, lines).create(spec, cdir, record)

    assert pre.seen == [first, second]
    assert stack.log == [("up", second)], "no stack at a placement pre-flight refused"
    assert lines[0] == f"{first}: not offered: {spec_offer(spec)} is not offered in {first} for this account; trying {second}"
    assert record.spec.zone == second


def test_a_quota_refused_by_preflight_stops_before_any_stack(home):
    spec, cdir, record = new_cluster(home, "azure")
    stack, pre = StackDouble(), Preflight(quota="the Standard NCASv3_T4 Family vCPU quota in eastus2 is 0")
    with pytest.raises(QuotaExceeded):
        make("azure", stack, pre, []).create(spec, cdir, record)
    assert stack.log == [] and len(pre.seen) == 1


def test_a_failure_that_is_not_capacity_is_not_retried(home):
    """Left to `up`'s own teardown (lifecycle destroys on any error), not tried elsewhere."""
    spec, cdir, record = new_cluster(home, "aws")
    stack = StackDouble(fail_all="creating EC2 Instance: InvalidAMIID.NotFound: The image id '[ami-0abc]' does not exist")
    with pytest.raises(ProvisionError) as e:
        make("aws", stack, Preflight(), []).create(spec, cdir, record)
    assert type(e.value) is ProvisionError and stack.log == [("up", places(spec)[0])]
    assert cdir.load().provider_state["stack"] == "c1", "the record still names the stack to destroy"


def test_aws_failover_tries_the_next_zone_of_the_region_first_and_the_record_keeps_it(home):
    """The catalog lists AWS zones (from AWS's own AZ offerings), so a stock-out in one zone
    moves to the next zone of the same region before any other region."""
    spec, cdir, record = new_cluster(home, "aws")
    zones = places(spec)
    region = catalog.region_of("aws", zones[0])
    assert catalog.region_of("aws", zones[1]) == region, "the region's zones come first"
    stack, lines = StackDouble(fail={zones[0]: CAPACITY[0][2]}), []
    make("aws", stack, Preflight(), lines).create(spec, cdir, record)

    assert stack.log == [("up", zones[0]), ("destroy",), ("up", zones[1])]
    assert (record.spec.region, record.spec.zone) == (region, zones[1])
    assert lines[0].startswith(f"{zones[0]}: no capacity (InsufficientInstanceCapacity)")


def test_a_cleanup_that_fails_stops_failover(home):
    spec, cdir, record = new_cluster(home, "gcp")
    stack = StackDouble(fail_all=CAPACITY[3][2])
    stack.destroy_error = ProvisionError("pulumi destroy failed: timeout", "rerun `cloudtrain down`")
    with pytest.raises(ProvisionError, match="destroy failed"):
        make("gcp", stack, Preflight(), []).create(spec, cdir, record)
    assert stack.log == [("up", places(spec)[0]), ("destroy",)], "no new attempt while the last one may still exist"


def test_preflight_calls_each_clouds_module_the_same_way(monkeypatch):
    from cloudtrain.provisioner.preflight import aws, azure, gcp

    for provider, module in (("aws", aws), ("gcp", gcp), ("azure", azure)):
        seen = []
        monkeypatch.setattr(module, "check", lambda spec, choice, seen=seen: seen.append((spec, choice)) or (choice, {"k": "v"}))
        spec = ClusterSpec(name="c1", provider=provider, gpu="t4", ssh_cidr=CIDR)
        choice = catalog.choose(spec)
        assert CLASSES[provider]().preflight(spec, choice) == (choice, {"k": "v"})
        assert seen == [(spec, choice)]


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_the_clusters_bucket_is_recorded_and_handed_to_the_watchdog(home, provider):
    """The program's `checkpoints` output is kept with the cluster; the watchdog's config gets
    it, and the cloud's preemption notice where the cluster is spot (autostop.py)."""
    from cloudtrain import autostop
    from cloudtrain.provisioner.local import LocalProvisioner

    store = {"cloud": provider, "bucket": "b1", "url": "https://b1.example", "region": "r1"}

    class WithBucket(StackDouble):
        def up(self, config: dict[str, str]) -> dict[str, Any]:
            return {**super().up(config), "checkpoints": store}

    spec, cdir, record = new_cluster(home, provider, spot=True)
    prov = make(provider, WithBucket(), Preflight(), [])
    prov.create(spec, cdir, record)
    cdir.save(record)
    saved = cdir.load()
    assert prov.checkpoint_store(saved) == store
    assert autostop.preemption_settings(saved, prov) == {"preempt": provider, "checkpoints": store}
    on_demand = dataclasses.replace(saved, spec=dataclasses.replace(saved.spec, spot=False))
    assert autostop.preemption_settings(on_demand, prov) == {"checkpoints": store}  # never preempted: no notice to read
    assert autostop.preemption_settings(saved, LocalProvisioner()) == {}
