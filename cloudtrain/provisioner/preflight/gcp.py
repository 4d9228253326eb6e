"""GCP pre-flight: application default credentials and a project, then the live answer for
this zone: the machine type (and, on N1, the attached accelerator type) is offered there, the
GPU quotas cover the request, and the image family exists. Compute Engine REST v1, read-only.

Every call is a GET of one resource, cheap enough to repeat per placement attempt; the
credentials are loaded once per process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from cloudtrain.catalog import Choice
from cloudtrain.errors import MissingTool, NotOffered, PreflightError, QuotaExceeded
from cloudtrain.provisioner import rest as _rest
from cloudtrain.provisioner.rest import ApiError, Rest, Unreachable
from cloudtrain.spec import ClusterSpec

API = "https://compute.googleapis.com/compute/v1"
_ADC_HINT = "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a key file"
_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_ENV = ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "CLOUDSDK_CONFIG")
_loaded: dict[tuple, tuple[Any, str]] = {}

# The regional quota metric per accelerator type (regions.get -> quotas[].metric). The metric
# names the GPU model, not the machine family: the metric names are Compute v1's Quota.Metric
# enum (https://cloud.google.com/compute/docs/reference/rest/v1/regions, "quotas[].metric";
# e.g. NVIDIA_A100_80GB_GPUS, NVIDIA_L4_GPUS, GPUS_ALL_REGIONS), and which GPU each family
# carries is "About GPUs" (https://cloud.google.com/compute/docs/gpus: A2 Standard
# nvidia-tesla-a100, A2 Ultra nvidia-a100-80gb, G2 nvidia-l4, A3 High/Edge nvidia-h100-80gb,
# A3 Mega nvidia-h100-mega-80gb, A3 Ultra nvidia-h200-141gb, A4 nvidia-b200). A2/A3/G2 name
# their GPU in the machine type's own `accelerators`, so the live answer picks the row. Spot
# VMs draw on the PREEMPTIBLE_ twin (https://cloud.google.com/compute/resource-usage, GPU
# quota); every GPU also counts against the project-wide GPUS_ALL_REGIONS.
_METRICS = {
    "nvidia-tesla-t4": "NVIDIA_T4_GPUS",
    "nvidia-tesla-v100": "NVIDIA_V100_GPUS",
    "nvidia-tesla-a100": "NVIDIA_A100_GPUS",
    "nvidia-a100-80gb": "NVIDIA_A100_80GB_GPUS",
    "nvidia-l4": "NVIDIA_L4_GPUS",
    "nvidia-h100-80gb": "NVIDIA_H100_GPUS",
    "nvidia-h100-mega-80gb": "NVIDIA_H100_MEGA_GPUS",
    "nvidia-h200-141gb": "NVIDIA_H200_GPUS",
    "nvidia-b200": "NVIDIA_B200_GPUS",
}
# regions.get does not list these metrics (they live only in the Cloud Quotas API); dstack, which
# reads the same list, skips them for that reason (dstackai/dstack
# src/dstack/_internal/core/backends/gcp/compute.py, _has_gpu_quota). Absent, they are not
# checked here; the others, absent, mean 0 (new projects list them at 0 or not at all).
_UNLISTED = {"NVIDIA_H100_GPUS", "NVIDIA_H100_MEGA_GPUS", "NVIDIA_H200_GPUS", "NVIDIA_B200_GPUS"}


def project_and_credentials() -> tuple[Any, str]:
    """The ADC and the project the cluster goes into, loaded once per process; refuses when ADC
    are missing or name no project."""
    key = tuple(os.environ.get(v) for v in _ENV)
    if key in _loaded:
        return _loaded[key]
    try:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError
    except ImportError as e:
        raise MissingTool("google-auth is not installed", "install the cloud extra: pip install 'cloudtrain[cloud]'") from e
    try:
        creds, adc_project = google.auth.default(scopes=_SCOPES)
    except DefaultCredentialsError as e:
        raise PreflightError("no usable Google application default credentials", _ADC_HINT) from e
    except GoogleAuthError as e:
        raise PreflightError(f"Google credentials are unusable: {e}", _ADC_HINT) from e
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT") or adc_project
    if not project:
        raise PreflightError("no GCP project is set", "run `gcloud config set project PROJECT_ID` or set GOOGLE_CLOUD_PROJECT")
    _loaded[key] = (creds, project)
    return creds, project


@dataclass(frozen=True)
class _Api:
    """One project's Compute API, translating HTTP failures into one actionable line each."""

    rest: Rest
    project: str

    def get(self, path: str, permission: str, not_found: PreflightError) -> dict:
        try:
            return self.rest.get(f"{API}/{path}")
        except Unreachable as e:
            raise PreflightError(f"cannot reach the Compute Engine API: {e}", "check the network") from e
        except ApiError as e:
            if e.status == 404:
                raise not_found from e
            if e.code == "accessNotConfigured":
                raise PreflightError(
                    f"the Compute Engine API is not enabled in project {self.project}",
                    f"run `gcloud services enable compute.googleapis.com --project {self.project}`",
                ) from e
            if e.status == 401:
                raise PreflightError(f"Google rejected the credentials ({e.code})", _ADC_HINT) from e
            if e.status == 403:
                raise PreflightError(
                    f"GCP refused {permission} in project {self.project} ({e.code})",
                    "grant it (e.g. roles/compute.viewer) to the account behind your credentials",
                ) from e
            raise PreflightError(f"the Compute Engine API failed on {permission}: {e}", "try again, or check status.cloud.google.com") from e


def _others(choice: Choice) -> str:
    return ", ".join(z for z in choice.offer.locations if z != choice.zone) or "none listed"


def machine_gpus(api: _Api, choice: Choice) -> tuple[str, int] | None:
    """The zone offers the machine type and its GPUs; returns (accelerator type, per-node count)."""
    offer, zone = choice.offer, choice.zone
    where = f"{offer.instance_type}" + (f" + {offer.accelerator}" if offer.accelerator else "")
    missing = NotOffered(f"{offer.instance_type} is not offered in zone {zone}", f"other zones listed for {where}: {_others(choice)}", placement=zone)
    machine = api.get(f"projects/{api.project}/zones/{zone}/machineTypes/{offer.instance_type}", "compute.machineTypes.get", missing)
    if (machine.get("deprecated") or {}).get("state") in ("OBSOLETE", "DELETED"):
        raise missing
    if offer.accelerator:  # N1: the GPU is attached, and its type must exist in this zone
        api.get(
            f"projects/{api.project}/zones/{zone}/acceleratorTypes/{offer.accelerator}",
            "compute.acceleratorTypes.get",
            NotOffered(f"{offer.accelerator} GPUs are not offered in zone {zone}", f"other zones listed for {where}: {_others(choice)}", placement=zone),
        )
        return offer.accelerator, offer.count
    carried = machine.get("accelerators") or []  # A2/A3/G2 carry their GPUs: the live answer names them
    if not carried:
        return None
    return carried[0]["guestAcceleratorType"], int(carried[0].get("guestAcceleratorCount", offer.count))


def _quota(quotas: list[dict], metric: str) -> tuple[float, float] | None:
    for q in quotas or []:
        if q.get("metric") == metric:
            return float(q.get("limit", 0.0)), float(q.get("usage", 0.0))
    return None


def _short(project: str, metric: str, where: str, limit: float, usage: float, need: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"the GCP quota {metric} in {where} has {limit - usage:g} of {limit:g} GPUs free but the cluster needs {need}",
        f"request {need + usage:g} or more at https://console.cloud.google.com/iam-admin/quotas?project={project} "
        f"(filter: compute.googleapis.com/{metric.lower()}{'' if where == 'all regions' else ', region ' + where})",
    )


def check_quota(api: _Api, region: str, accelerator: str, need: int, spot: bool) -> None:
    """The regional GPU quota (PREEMPTIBLE_ for spot) and the global GPUS_ALL_REGIONS cover `need`."""
    base = _METRICS.get(accelerator)
    if base is None:
        raise PreflightError(f"no known GCP quota metric for {accelerator}", "report this; the catalog has a new GPU")
    metric = f"PREEMPTIBLE_{base}" if spot else base
    regional = api.get(
        f"projects/{api.project}/regions/{region}", "compute.regions.get",
        NotOffered(f"GCP region {region} is not available to project {api.project}", "try another --region", placement=region),
    )
    found = _quota(regional.get("quotas", []), metric)
    if found is None and base not in _UNLISTED:
        found = (0.0, 0.0)
    if found is not None and found[0] - found[1] < need:
        raise _short(api.project, metric, region, *found, need)
    project = api.get(
        f"projects/{api.project}", "compute.projects.get",
        PreflightError(f"GCP project {api.project} was not found", "check `gcloud config get project` or GOOGLE_CLOUD_PROJECT"),
    )
    found = _quota(project.get("quotas", []), "GPUS_ALL_REGIONS") or (0.0, 0.0)
    if found[0] - found[1] < need:
        raise _short(api.project, "GPUS_ALL_REGIONS", "all regions", *found, need)


def check_image(api: _Api, ref: str) -> str:
    """images.csv holds 'project/family'; the family must have a current image. Returns its name."""
    image_project, family = ref.split("/", 1)
    image = api.get(
        f"projects/{image_project}/global/images/family/{family}",
        "compute.images.getFromFamily",
        PreflightError(f"GCP image family {family!r} has no image in project {image_project}", "pass --image ubuntu, or report the retired family"),
    )
    return image.get("name", family)


def check(spec: ClusterSpec, choice: Choice, compute: Rest | None = None, project: str | None = None) -> tuple[Choice, dict[str, str]]:
    """Run every GCP check for this zone; return the choice unchanged and the stack's project.

    `compute` (anything with `get(url) -> JSON`) and `project` default to the ADC's; tests pass theirs.
    """
    if compute is None or project is None:
        creds, adc_project = project_and_credentials()
        project = project or adc_project
        compute = compute or _rest.google(creds)
    api = _Api(compute, project)
    gpus = machine_gpus(api, choice)
    if gpus is not None:
        check_quota(api, choice.region, gpus[0], gpus[1] * spec.nodes, spec.spot)
    check_image(api, choice.image.ref)
    return choice, {"gcp:project": project}
