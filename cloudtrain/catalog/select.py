"""Which source rows become catalog rows: GPU names, and the machines GCP pairs with each GPU.

These are the generator's rules, kept apart from the data so `extract` can keep only the rows
`build` reads. Facts about the clouds live in `sources/`; what is here is how cloudtrain names
and chooses among them.
"""

from __future__ import annotations

# AWS DescribeInstanceTypes GPU name (and per-GPU memory, which splits the two A100s) -> ours.
_AWS = {"T4": "t4", "A10G": "a10g", "L4": "l4", "L40S": "l40s", "H100": "h100", "H200": "h200", "B200": "b200"}


def aws_gpu(name: str, mem_mib: int) -> str | None:
    if name == "A100":
        return "a100-80gb" if mem_mib >= 80 * 1024 else "a100"
    return _AWS.get(name)


# skypilot-catalog's AcceleratorName on Azure -> ours. V100 stays out: retired (overrides.csv).
AZURE_GPUS = {"T4": "t4", "A10": "a10", "A100": "a100", "A100-80GB": "a100-80gb", "H100": "h100"}
# Per-GPU memory in GB where the Azure source gives only a name (NVIDIA's data sheets; the
# NC H100 v5 part differs and is set in overrides.csv).
AZURE_GPU_MEM = {"t4": 16, "a10": 24, "a100": 40, "a100-80gb": 80, "h100": 80}

# GCP: the accelerator rows are named like this; the API wants the `nvidia-*` accelerator type.
GCP_GPUS = {
    "T4": ("t4", "nvidia-tesla-t4"),
    "V100": ("v100", "nvidia-tesla-v100"),
    "L4": ("l4", "nvidia-l4"),
    "A100": ("a100", "nvidia-tesla-a100"),
    "A100-80GB": ("a100-80gb", "nvidia-a100-80gb"),
    "H100": ("h100", "nvidia-h100-80gb"),
    "H200": ("h200", "nvidia-h200-141gb"),
}

# GCP machines that carry their GPUs (machine type -> source accelerator name, count), from
# GCP's GPU machine types page (cloud.google.com/compute/docs/gpus): A2 Standard/Ultra, A3
# High/Ultra, G2. One machine per count: the smallest G2 for each L4 count.
GCP_BUNDLED = {
    "g2-standard-4": ("L4", 1),
    "g2-standard-24": ("L4", 2),
    "g2-standard-48": ("L4", 4),
    "g2-standard-96": ("L4", 8),
    "a2-highgpu-1g": ("A100", 1),
    "a2-highgpu-2g": ("A100", 2),
    "a2-highgpu-4g": ("A100", 4),
    "a2-highgpu-8g": ("A100", 8),
    "a2-megagpu-16g": ("A100", 16),
    "a2-ultragpu-1g": ("A100-80GB", 1),
    "a2-ultragpu-2g": ("A100-80GB", 2),
    "a2-ultragpu-4g": ("A100-80GB", 4),
    "a2-ultragpu-8g": ("A100-80GB", 8),
    "a3-highgpu-1g": ("H100", 1),
    "a3-highgpu-2g": ("H100", 2),
    "a3-highgpu-4g": ("H100", 4),
    "a3-highgpu-8g": ("H100", 8),
    "a3-ultragpu-8g": ("H200", 8),
}

# GCP N1 hosts for attached GPUs: (source accelerator, count) -> machine type. cloudtrain's
# choice, within GCP's per-count vCPU limits (T4: 24/48/96 vCPUs for 1/2/4; V100: 12/24/48/96).
GCP_N1 = {
    ("T4", 1): "n1-standard-4",
    ("T4", 2): "n1-standard-8",
    ("T4", 4): "n1-standard-16",
    ("V100", 1): "n1-standard-8",
    ("V100", 2): "n1-standard-16",
    ("V100", 4): "n1-standard-32",
    ("V100", 8): "n1-standard-32",
}


def gcp_row_wanted(row: dict[str, str]) -> bool:
    """A skypilot GCP row the build reads: a chosen host machine, or a GPU it pairs with."""
    if row["InstanceType"]:
        return row["InstanceType"] in GCP_BUNDLED or row["InstanceType"] in set(GCP_N1.values())
    return row["AcceleratorName"] in GCP_GPUS


# Where a cloud's default placement goes when its sources offer the machine there; else the
# cheapest region. Regions nearest most users and with the widest GPU offer in the sources.
HOME_REGION = {"aws": "us-east-1", "gcp": "us-central1", "azure": "eastus2"}


def aws_pick(types: list[dict[str, str]], zones: dict[str, list[str]]) -> list[dict[str, str]]:
    """One AWS type per (GPU, count): the fewest vCPUs (the cheapest size), then the most zones
    offered (p5en before p5e), then the name."""
    best: dict[tuple[str, int], dict[str, str]] = {}
    for t in types:
        key = (str(aws_gpu(t["gpu_name"], int(t["gpu_mem_mib"]))), int(t["gpu_count"]))
        rank = (int(t["vcpus"]), -len(zones.get(t["instance_type"], [])), t["instance_type"])
        if key not in best or rank < (int(best[key]["vcpus"]), -len(zones.get(best[key]["instance_type"], [])), best[key]["instance_type"]):
            best[key] = t
    return [best[k] for k in sorted(best)]
