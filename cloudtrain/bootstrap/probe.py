"""Ask a node what it is: OS, CPUs, memory, disk, GPUs, driver, CUDA, cuDNN, Python, frameworks.

The probe is a stdlib-only script (node/probe.py) fed to the node's python3 on stdin, so nothing
needs installing first. Its JSON keys are the contract that plan and the GPU resolver read.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from cloudtrain.errors import BootstrapError, CommandFailed
from cloudtrain.remote import SshRemote

FACT_KEYS = (
    "os_id", "os_version", "arch", "cpus", "mem_mb", "disk_free_gb", "python", "python_version",
    "python_venv", "gpus", "nvidia_pci", "driver", "cuda_driver_max", "cuda_toolkits", "nvcc",
    "cudnn", "frameworks", "is_root", "has_sudo",
)


def probe_script() -> bytes:
    return resources.files("cloudtrain.bootstrap").joinpath("node/probe.py").read_bytes()


def probe(remote: SshRemote) -> dict[str, Any]:
    try:
        result = remote.run("python3 -", stdin=probe_script())
    except CommandFailed as e:
        if e.result.exit_code == 127:
            raise BootstrapError(f"node {remote.node.name} has no python3", "use an image with Python 3 (Ubuntu LTS has it)", layer="python") from e
        raise BootstrapError(f"probing node {remote.node.name} failed: {e.message}", "see the error above", layer="probe") from e
    try:
        facts = json.loads(result.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError) as e:
        raise BootstrapError(f"node {remote.node.name} gave an unreadable probe answer", "check the node's python3") from e
    missing = [k for k in FACT_KEYS if k not in facts]
    if missing:
        raise BootstrapError(f"probe of {remote.node.name} lacks {', '.join(missing)}", "report this as a bug")
    return facts


def summary(facts: dict[str, Any]) -> str:
    gpus = facts.get("gpus") or []
    gpu = f"{len(gpus)}x {gpus[0]['name']}" if gpus else "no NVIDIA GPU"
    return (
        f"{facts['os_id']} {facts['os_version']} {facts['arch']}, {facts['cpus']} CPUs, "
        f"{(facts['mem_mb'] or 0) / 1024:.1f} GiB, {facts['disk_free_gb']} GB free, {gpu}, "
        f"Python {facts['python_version']}"
    )
