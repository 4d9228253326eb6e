"""Runs ON the node with its system python3 (stdlib only): prints the node's facts as JSON.

Keys are the contract the planner and the GPU resolver read (see cloudtrain/bootstrap/probe.py).
The os-release path (CLOUDTRAIN_OS_RELEASE) and a prefix for /sys (CLOUDTRAIN_SYSROOT, as in
the step scripts) can be overridden so tests can stage a machine.
"""

import glob
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys


def sh(*cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def os_release():
    data = {}
    try:
        with open(os.environ.get("CLOUDTRAIN_OS_RELEASE", "/etc/os-release")) as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                data[key] = value.strip('"')
    except OSError:
        pass
    return data.get("ID", "unknown"), data.get("VERSION_ID", "")


def mem_mb():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def gpus():
    out = sh("nvidia-smi", "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits")
    found = []
    for line in (out or "").strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            found.append({"name": parts[0], "memory_mb": int(float(parts[1])) if parts[1].replace(".", "").isdigit() else None, "compute_cap": parts[2]})
    return found


def nvidia_pci():
    """A PCI device from NVIDIA (vendor 0x10de) is attached, driver or not. sysfs first: minimal
    images lack lspci (pciutils)."""
    root = os.environ.get("CLOUDTRAIN_SYSROOT", "")
    for vendor in glob.glob(f"{root}/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor) as f:
                if f.read().strip() == "0x10de":
                    return True
        except OSError:
            continue
    return "10de:" in (sh("lspci", "-n") or "")


def driver():
    out = sh("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
    return out.strip().splitlines()[0].strip() if out and out.strip() else None


def cuda_driver_max():
    out = sh("nvidia-smi") or ""
    m = re.search(r"CUDA Version:\s*([0-9.]+)", out)
    return m.group(1) if m else None


def nvcc():
    out = sh("nvcc", "--version") or ""
    m = re.search(r"release ([0-9]+\.[0-9]+)", out)
    return m.group(1) if m else None


def cudnn():
    out = sh("ldconfig", "-p") or ""
    m = re.search(r"libcudnn\.so\.([0-9]+)", out)
    header = "/usr/include/cudnn_version.h"
    if os.path.exists(header):
        text = open(header).read()
        parts = [re.search(rf"#define CUDNN_{k}\s+(\d+)", text) for k in ("MAJOR", "MINOR", "PATCHLEVEL")]
        if all(parts):
            return ".".join(p.group(1) for p in parts)
    if m:
        return m.group(1)
    # A framework's CUDA wheels bring cuDNN as a pip package; a deep-learning image may have no
    # other, and the jobs that reuse that framework load this one.
    return dist_version("nvidia-cudnn-cu13") or dist_version("nvidia-cudnn-cu12")


def dist_version(name):
    """The installed version of a distribution this python3 sees (metadata only: nothing is
    imported, so a broken or heavy package costs nothing), or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def frameworks():
    found = {}
    for name in ("torch", "tensorflow", "jax"):
        version = dist_version(name)
        if version:
            found[name] = version
    return found


def main():
    os_id, os_version = os_release()
    disk = shutil.disk_usage(os.path.expanduser("~"))
    facts = {
        "os_id": os_id,
        "os_version": os_version,
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "mem_mb": mem_mb(),
        "disk_free_gb": round(disk.free / 2**30, 1),
        "python": sys.executable,
        "python_version": platform.python_version(),
        # Debian/Ubuntu ship venv's ensurepip separately (python3-venv); bootstrap installs it if absent.
        "python_venv": sh(sys.executable, "-c", "import ensurepip, venv") is not None,
        "gpus": gpus(),
        "nvidia_pci": nvidia_pci(),
        "driver": driver(),
        "cuda_driver_max": cuda_driver_max(),
        "cuda_toolkits": sorted(
            os.path.basename(p)[len("cuda-"):] for p in glob.glob("/usr/local/cuda-*") if re.match(r".*cuda-\d+\.\d+$", p)
        ),
        "nvcc": nvcc(),
        "cudnn": cudnn(),
        "frameworks": frameworks(),
        "is_root": os.geteuid() == 0,
        "has_sudo": shutil.which("sudo") is not None and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0 if os.geteuid() != 0 else True,
    }
    print(json.dumps(facts))


main()
