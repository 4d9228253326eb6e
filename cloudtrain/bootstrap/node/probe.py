"""Runs ON the node with its system python3 (stdlib only): prints the node's facts as JSON.

Keys are the contract the planner and the GPU resolver read (see cloudtrain/bootstrap/probe.py).
The os-release path (CLOUDTRAIN_OS_RELEASE) and a prefix for the files read under /sys, /proc,
/usr/local, /usr/include and /etc/apt (CLOUDTRAIN_SYSROOT, as in the step scripts) can be
overridden so tests can stage a machine.

GPU facts beside gpus/driver/cuda_driver_max/cuda_toolkits/nvcc/cudnn/frameworks:
    nvidia_pci        a PCI device from NVIDIA (vendor 10de) is attached, driver or not
    driver_installed  version of the nvidia kernel module on disk (modinfo), loaded or not:
                      a first-boot install waiting for its reboot shows here, not in `driver`
    driver_modules    "open" | "proprietary" | None: the flavour of the driver's kernel module,
                      read from /proc/driver/nvidia/version when loaded, else modinfo's license
                      ("Dual MIT/GPL" is the open module, "NVIDIA" the proprietary one)
    driver_source     "ubuntu-signed" (Canonical's signed prebuilt modules and -server userspace)
                      | "nvidia-dkms" (NVIDIA's repository, module built by DKMS) | None: how
                      cloudtrain's nvidia-driver step installed the driver (/etc/cloudtrain/driver);
                      None for a driver cloudtrain did not install
    cudnn             version of a system cuDNN (headers in /usr/include, /usr/include/<triplet>,
                      or /usr/local/cuda*/include with its library beside it in lib64/lib),
                      else from ldconfig, else a pip nvidia-cudnn-cu12/13 this python3 sees
    cudnn_path        where that system cuDNN's header is (None for ldconfig / pip)
    nvidia_apt_repo   None, or {"file": ..., "keyring": bool}: a source file naming NVIDIA's CUDA
                      repository, and whether the cuda-keyring package is installed. With
                      keyring false the scripts use that repository as it is and add no second
                      entry (two Signed-By values for one repository make apt refuse updates).
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


def root():
    return os.environ.get("CLOUDTRAIN_SYSROOT", "")


def read(path):
    try:
        with open(root() + path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def nvidia_pci():
    """A PCI device from NVIDIA (vendor 0x10de) is attached, driver or not. sysfs first: minimal
    images lack lspci (pciutils)."""
    for vendor in glob.glob(f"{root()}/sys/bus/pci/devices/*/vendor"):
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


def driver_installed():
    out = sh("modinfo", "-F", "version", "nvidia")
    return out.strip() or None if out else None


def driver_modules():
    """open | proprietary | None. The loaded module says which it is in /proc; a module on disk
    but not loaded (before its reboot) by its license."""
    version = read("/proc/driver/nvidia/version") or ""
    if "Open Kernel Module" in version:
        return "open"
    if "Kernel Module" in version:
        return "proprietary"
    license_ = (sh("modinfo", "-F", "license", "nvidia") or "").strip()
    if license_ == "Dual MIT/GPL":
        return "open"
    if license_ == "NVIDIA":
        return "proprietary"
    return None


def driver_source():
    for line in (read("/etc/cloudtrain/driver") or "").splitlines():
        key, _, value = line.partition("=")
        if key == "source" and value:
            return value
    return None


def cuda_driver_max():
    out = sh("nvidia-smi") or ""
    m = re.search(r"CUDA Version:\s*([0-9.]+)", out)
    return m.group(1) if m else None


def nvcc():
    out = sh("nvcc", "--version") or ""
    m = re.search(r"release ([0-9]+\.[0-9]+)", out)
    return m.group(1) if m else None


def cudnn_header_version(text):
    parts = [re.search(rf"#define CUDNN_{k}\s+(\d+)", text) for k in ("MAJOR", "MINOR", "PATCHLEVEL")]
    return ".".join(p.group(1) for p in parts) if all(parts) else None


def system_cudnn():
    """(version, header path) of a cuDNN installed outside pip, or (None, None). The Debian
    packages put the header in /usr/include/<triplet>/cudnn_version_v9.h; NVIDIA's tarball and
    DL images under a toolkit's /usr/local/cuda-X.Y, which counts only with its library."""
    r = root()
    headers = sorted(glob.glob(f"{r}/usr/include/cudnn_version*.h") + glob.glob(f"{r}/usr/include/*-linux-gnu/cudnn_version*.h"))
    for home in sorted(glob.glob(f"{r}/usr/local/cuda*/"), reverse=True):
        libs = glob.glob(f"{home}lib64/libcudnn.so*") + glob.glob(f"{home}lib/libcudnn.so*") + glob.glob(f"{home}targets/*/lib/libcudnn.so*")
        if libs:
            headers += glob.glob(f"{home}include/cudnn_version*.h") + glob.glob(f"{home}targets/*/include/cudnn_version*.h")
    for header in headers:
        version = cudnn_header_version(read(header[len(r):]) or "")
        if version:
            return version, header[len(r):]
    return None, None


def cudnn():
    version, _ = system_cudnn()
    if version:
        return version
    out = sh("ldconfig", "-p") or ""
    m = re.search(r"libcudnn\.so\.([0-9]+)", out)
    if m:
        return m.group(1)
    # A framework's CUDA wheels bring cuDNN as a pip package; a deep-learning image may have no
    # other, and the jobs that reuse that framework load this one.
    return dist_version("nvidia-cudnn-cu13") or dist_version("nvidia-cudnn-cu12")


def nvidia_apt_repo():
    r = root()
    files = [f"{r}/etc/apt/sources.list"] + sorted(glob.glob(f"{r}/etc/apt/sources.list.d/*.list") + glob.glob(f"{r}/etc/apt/sources.list.d/*.sources"))
    for path in files:
        text = read(path[len(r):]) or ""
        if any("developer.download.nvidia.com/compute/cuda/repos" in line.split("#", 1)[0] for line in text.splitlines()):
            status = sh("dpkg-query", "-W", "-f=${Status}", "cuda-keyring") or ""
            return {"file": path[len(r):], "keyring": status.strip() == "install ok installed"}
    return None


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
        "driver_installed": driver_installed(),
        "driver_modules": driver_modules(),
        "driver_source": driver_source(),
        "cuda_toolkits": sorted(
            os.path.basename(p)[len("cuda-"):] for p in glob.glob(f"{root()}/usr/local/cuda-*") if re.match(r".*cuda-\d+\.\d+$", p)
        ),
        "nvcc": nvcc(),
        "cudnn": cudnn(),
        "cudnn_path": system_cudnn()[1],
        "nvidia_apt_repo": nvidia_apt_repo(),
        "frameworks": frameworks(),
        "is_root": os.geteuid() == 0,
        "has_sudo": shutil.which("sudo") is not None and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0 if os.geteuid() != 0 else True,
    }
    print(json.dumps(facts))


main()
