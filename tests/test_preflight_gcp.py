"""GCP pre-flight against a fake Compute Engine REST API.

The fake answers GETs with bodies shaped like Compute Engine v1's own responses, field for field
as the API reference shows them:
  machineTypes.get        https://cloud.google.com/compute/docs/reference/rest/v1/machineTypes/get
  acceleratorTypes.get    https://cloud.google.com/compute/docs/reference/rest/v1/acceleratorTypes/get
  regions.get             https://cloud.google.com/compute/docs/reference/rest/v1/regions/get
  projects.get            https://cloud.google.com/compute/docs/reference/rest/v1/projects/get
  images.getFromFamily    https://cloud.google.com/compute/docs/reference/rest/v1/images/getFromFamily
and, for a resource it does not hold, the API's 404 error body ({"error": {"code", "message",
"errors": [{"message", "domain", "reason": "notFound"}]}}), as the real API does for a machine
type a zone does not offer. Nothing is created anywhere: pre-flight only reads.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from dataclasses import replace

import pytest

from cloudtrain import catalog
from cloudtrain.errors import NotOffered, PreflightError, QuotaExceeded
from cloudtrain.provisioner.preflight import gcp
from cloudtrain.provisioner.rest import ApiError, error_from_body
from cloudtrain.spec import ClusterSpec

PROJECT = "proj-9"
API = gcp.API


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _error(status: int, reason: str, message: str) -> ApiError:
    # The real body, parsed the way the real transport parses it.
    body = {"error": {"code": status, "message": message, "errors": [{"message": message, "domain": "global", "reason": reason}]}}
    return error_from_body(status, json.dumps(body).encode())


class FakeCompute:
    """GET url -> the stored body; an unknown url -> the API's 404 notFound."""

    def __init__(self) -> None:
        self.bodies: dict[str, object] = {}
        self.calls: list[str] = []

    def put(self, path: str, body) -> None:
        self.bodies[f"{API}/{path}"] = body

    def get(self, url: str):
        self.calls.append(url.removeprefix(API + "/"))
        body = self.bodies.get(url)
        if isinstance(body, ApiError):
            raise body
        if body is None:
            raise _error(404, "notFound", f"The resource '{url.removeprefix(API + '/')}' was not found")
        return body


def machine_type(zone: str, name: str, cpus: int, accelerators: list[dict] | None = None) -> dict:
    body = {
        "kind": "compute#machineType",
        "id": "3004",
        "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
        "name": name,
        "description": f"{cpus} vCPUs",
        "guestCpus": cpus,
        "memoryMb": cpus * 3840,
        "imageSpaceGb": 0,
        "maximumPersistentDisks": 128,
        "maximumPersistentDisksSizeGb": "263168",
        "zone": zone,
        "selfLink": f"{API}/projects/{PROJECT}/zones/{zone}/machineTypes/{name}",
        "isSharedCpu": False,
    }
    if accelerators:
        body["accelerators"] = accelerators
    return body


def accelerator_type(zone: str, name: str, max_cards: int) -> dict:
    return {
        "kind": "compute#acceleratorType",
        "id": "10002",
        "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
        "name": name,
        "description": "NVIDIA T4",
        "zone": f"{API}/projects/{PROJECT}/zones/{zone}",
        "selfLink": f"{API}/projects/{PROJECT}/zones/{zone}/acceleratorTypes/{name}",
        "maximumCardsPerInstance": max_cards,
    }


def region(name: str, quotas: dict[str, tuple[float, float]]) -> dict:
    return {
        "kind": "compute#region",
        "id": "1000",
        "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
        "name": name,
        "description": name,
        "status": "UP",
        "zones": [f"{API}/projects/{PROJECT}/zones/{name}-a", f"{API}/projects/{PROJECT}/zones/{name}-b"],
        "quotas": [{"metric": "CPUS", "limit": 24.0, "usage": 0.0}]
        + [{"metric": m, "limit": lim, "usage": use} for m, (lim, use) in quotas.items()],
        "selfLink": f"{API}/projects/{PROJECT}/regions/{name}",
        "supportsPzs": False,
    }


def project(gpus_all_regions: tuple[float, float]) -> dict:
    return {
        "kind": "compute#project",
        "id": "1234567890",
        "creationTimestamp": "2026-01-02T03:04:05.000-08:00",
        "name": PROJECT,
        "commonInstanceMetadata": {"kind": "compute#metadata", "fingerprint": "abc="},
        "quotas": [
            {"metric": "SNAPSHOTS", "limit": 5000.0, "usage": 0.0},
            {"metric": "GPUS_ALL_REGIONS", "limit": gpus_all_regions[0], "usage": gpus_all_regions[1]},
            {"metric": "CPUS_ALL_REGIONS", "limit": 32.0, "usage": 0.0},
        ],
        "selfLink": f"{API}/projects/{PROJECT}",
        "defaultServiceAccount": "1234567890-compute@developer.gserviceaccount.com",
        "xpnProjectStatus": "UNSPECIFIED_XPN_PROJECT_STATUS",
        "defaultNetworkTier": "PREMIUM",
        "vmDnsSetting": "ZONAL_ONLY",
    }


def image(project_: str, family: str) -> dict:
    return {
        "kind": "compute#image",
        "id": "555",
        "creationTimestamp": "2026-11-10T00:00:00.000-08:00",
        "name": f"{family}-v20261110",
        "family": family,
        "status": "READY",
        "archiveSizeBytes": "1",
        "diskSizeGb": "10",
        "selfLink": f"{API}/projects/{project_}/global/images/{family}-v20261110",
    }


def choose(gpu="t4", **kw):
    name, _, count = gpu.partition(":")
    spec = ClusterSpec(name="p1", provider="gcp", gpu=name, gpu_count=int(count or 1), ssh_cidr="198.51.100.7/32", **kw)
    # A fixed placement, so the catalog's zone order does not matter to these tests.
    return spec, replace(catalog.choose(spec), region="us-central1", zone="us-central1-a")


def ready(spec, c, *, regional=(8.0, 0.0), global_=(8.0, 0.0)) -> FakeCompute:
    """A project where everything the choice needs exists and has quota."""
    fake = FakeCompute()
    z, r = c.zone, c.region
    acc = c.offer.accelerator
    carried = None if acc else [{"guestAcceleratorType": _carried(c), "guestAcceleratorCount": c.offer.count}]
    fake.put(f"projects/{PROJECT}/zones/{z}/machineTypes/{c.offer.instance_type}", machine_type(z, c.offer.instance_type, c.offer.vcpus, carried))
    if acc:
        fake.put(f"projects/{PROJECT}/zones/{z}/acceleratorTypes/{acc}", accelerator_type(z, acc, 4))
    metric = gcp._METRICS[acc or _carried(c)]
    fake.put(f"projects/{PROJECT}/regions/{r}", region(r, {metric: regional, f"PREEMPTIBLE_{metric}": regional}))
    fake.put(f"projects/{PROJECT}", project(global_))
    img_project, family = c.image.ref.split("/", 1)
    fake.put(f"projects/{img_project}/global/images/family/{family}", image(img_project, family))
    return fake


def _carried(c) -> str:
    return {"a100": "nvidia-tesla-a100", "a100-80gb": "nvidia-a100-80gb", "l4": "nvidia-l4", "h100": "nvidia-h100-80gb"}[c.offer.gpu]


# --- offered in the zone --------------------------------------------------------------------


def test_everything_in_place_passes_and_names_the_project():
    spec, c = choose("t4")
    fake = ready(spec, c)
    assert gcp.check(spec, c, compute=fake, project=PROJECT) == (c, {"gcp:project": PROJECT})
    assert fake.calls[0] == f"projects/{PROJECT}/zones/{c.zone}/machineTypes/n1-standard-4"
    assert f"projects/{PROJECT}/zones/{c.zone}/acceleratorTypes/nvidia-tesla-t4" in fake.calls


def test_machine_type_missing_in_the_zone_is_not_offered():
    spec, c = choose("l4")
    fake = ready(spec, c)
    del fake.bodies[f"{API}/projects/{PROJECT}/zones/{c.zone}/machineTypes/g2-standard-4"]
    with pytest.raises(NotOffered) as e:
        gcp.check(spec, c, compute=fake, project=PROJECT)
    assert e.value.placement == c.zone
    line = e.value.line()
    assert f"g2-standard-4 is not offered in zone {c.zone}" in line and "\n" not in line
    assert any(z in line for z in c.offer.locations if z != c.zone)  # where else to look


def test_accelerator_missing_in_the_zone_is_not_offered():
    # n1-standard-4 exists in nearly every zone; the T4 does not.
    spec, c = choose("t4")
    fake = ready(spec, c)
    del fake.bodies[f"{API}/projects/{PROJECT}/zones/{c.zone}/acceleratorTypes/nvidia-tesla-t4"]
    with pytest.raises(NotOffered) as e:
        gcp.check(spec, c, compute=fake, project=PROJECT)
    assert e.value.placement == c.zone and f"nvidia-tesla-t4 GPUs are not offered in zone {c.zone}" in e.value.line()


# --- GPU quotas -----------------------------------------------------------------------------


def test_regional_gpu_quota_short_is_quota_exceeded_with_the_console_page():
    spec, c = choose("t4:4", nodes=2)  # 8 GPUs
    fake = ready(spec, c, regional=(8.0, 2.0))
    with pytest.raises(QuotaExceeded) as e:
        gcp.check(spec, c, compute=fake, project=PROJECT)
    line = e.value.line()
    assert "NVIDIA_T4_GPUS in us-central1 has 6 of 8 GPUs free but the cluster needs 8" in line
    assert f"https://console.cloud.google.com/iam-admin/quotas?project={PROJECT}" in line and "nvidia_t4_gpus" in line


def test_spot_reads_the_preemptible_quota():
    spec, c = choose("t4", spot=True)
    fake = ready(spec, c)
    fake.put(f"projects/{PROJECT}/regions/{c.region}", region(c.region, {"NVIDIA_T4_GPUS": (8.0, 0.0), "PREEMPTIBLE_NVIDIA_T4_GPUS": (0.0, 0.0)}))
    with pytest.raises(QuotaExceeded, match="PREEMPTIBLE_NVIDIA_T4_GPUS"):
        gcp.check(spec, c, compute=fake, project=PROJECT)


def test_global_gpu_quota_at_zero_on_a_new_project_is_quota_exceeded():
    spec, c = choose("t4")
    fake = ready(spec, c, global_=(0.0, 0.0))
    with pytest.raises(QuotaExceeded) as e:
        gcp.check(spec, c, compute=fake, project=PROJECT)
    assert "GPUS_ALL_REGIONS in all regions has 0 of 0 GPUs free" in e.value.line()


def test_a_machine_that_carries_its_gpus_is_checked_against_its_own_gpu_metric():
    # a2-ultragpu-1g names nvidia-a100-80gb in its `accelerators`: the quota is NVIDIA_A100_80GB_GPUS.
    spec, c = choose("a100-80gb")
    fake = ready(spec, c)
    fake.put(f"projects/{PROJECT}/regions/{c.region}", region(c.region, {"NVIDIA_A100_GPUS": (16.0, 0.0)}))
    with pytest.raises(QuotaExceeded, match="NVIDIA_A100_80GB_GPUS"):
        gcp.check(spec, c, compute=fake, project=PROJECT)


def test_h100_regional_metric_absent_is_not_taken_for_zero():
    # regions.get does not list NVIDIA_H100_GPUS; only GPUS_ALL_REGIONS is checked for A3.
    spec, c = choose("h100:8")
    fake = ready(spec, c, global_=(8.0, 0.0))
    fake.put(f"projects/{PROJECT}/regions/{c.region}", region(c.region, {}))
    assert gcp.check(spec, c, compute=fake, project=PROJECT)[1] == {"gcp:project": PROJECT}


# --- the image ------------------------------------------------------------------------------


def test_missing_image_family_is_refused():
    spec, c = choose("t4")
    fake = ready(spec, c)
    img_project, family = c.image.ref.split("/", 1)
    del fake.bodies[f"{API}/projects/{img_project}/global/images/family/{family}"]
    with pytest.raises(PreflightError) as e:
        gcp.check(spec, c, compute=fake, project=PROJECT)
    assert not isinstance(e.value, NotOffered)
    assert f"image family {family!r}" in e.value.line() and img_project in e.value.line()


# --- API refusals: one line each ------------------------------------------------------------


@pytest.mark.parametrize(
    "error, words",
    [
        (_error(403, "accessNotConfigured", "Compute Engine API has not been used in project 1234567890 before or it is disabled."),
         "gcloud services enable compute.googleapis.com --project proj-9"),
        (_error(403, "forbidden", "Required 'compute.machineTypes.get' permission for 'projects/proj-9/zones/us-central1-a/machineTypes/n1-standard-4'"),
         "refused compute.machineTypes.get"),
        (_error(401, "authError", "Request had invalid authentication credentials."), "gcloud auth application-default login"),
    ],
)
def test_api_refusals_are_one_actionable_line(error, words):
    spec, c = choose("t4")
    fake = ready(spec, c)
    fake.put(f"projects/{PROJECT}/zones/{c.zone}/machineTypes/n1-standard-4", error)
    with pytest.raises(PreflightError) as e:
        gcp.check(spec, c, compute=fake, project=PROJECT)
    assert words in e.value.line() and "\n" not in e.value.line()
    assert not isinstance(e.value, (NotOffered, QuotaExceeded))


def test_without_google_auth_the_line_names_the_cloud_extra():
    # A separate interpreter where google.auth cannot be imported: MissingTool, no traceback.
    code = (
        "import sys; sys.modules['google.auth'] = None\n"
        "from cloudtrain.provisioner.preflight import gcp\n"
        "from cloudtrain.errors import MissingTool\n"
        "try:\n    gcp.project_and_credentials()\nexcept MissingTool as e:\n    print(e.line())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "pip install 'cloudtrain[cloud]'" in out.stdout, out.stderr


def test_a_region_the_project_cannot_see_is_not_offered_rather_than_a_zero_quota():
    spec, c = choose("t4")
    fake = ready(spec, c)
    del fake.bodies[f"{API}/projects/{PROJECT}/regions/{c.region}"]
    with pytest.raises(NotOffered) as e:
        gcp.check(spec, c, compute=fake, project=PROJECT)
    assert e.value.placement == c.region and not isinstance(e.value, QuotaExceeded)
