"""A sandbox where the GPU step scripts run for real with bash, against stand-in system commands.

This machine has no NVIDIA GPU, so nvidia-smi, lspci, apt-get, apt-cache, apt-mark, dpkg-query,
fuser, modprobe, modinfo, reboot, update-initramfs, uname, curl, mokutil, pgrep, systemctl and
cloud-init are stand-ins: one Python program (tests/gpu_standin.py) under each name, first on PATH.
They record every call and answer from a state file that plays the machine: which packages are
installed and which the Ubuntu archive offers (`archive`: name -> version, for apt-cache policy),
whether a driver module is loaded (only after a reboot following its install), whether
unattended-upgrades holds the dpkg lock, whether a cloud's first-boot driver installer still
runs (`first_boot`: it runs for a number of polls, then leaves its driver installed or loaded),
which kernel runs (`kernel`). PATH holds nothing else but links to harmless coreutils, so a command the
scripts call without a stand-in fails the test instead of touching this machine.

`apply()` mirrors cloudtrain.bootstrap.apply: needed steps in order, fingerprints recorded so
a second apply runs nothing, and a reboot after a step with reboot_after before resuming.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudtrain.bootstrap.steps import Step

STANDINS = (
    "nvidia-smi", "lspci", "apt-get", "apt-cache", "apt-mark", "dpkg-query", "fuser", "modprobe", "reboot",
    "update-initramfs", "uname", "curl", "mokutil", "modinfo", "pgrep", "systemctl", "cloud-init",
)
REAL_TOOLS = ("bash", "cat", "date", "tee", "sort", "head", "tail", "mkdir", "mktemp", "rm", "dirname", "sleep", "env",
              "grep", "timeout", "chmod")

# What each driver branch reports as its newest CUDA in the nvidia-smi header.
DRIVER_CUDA = {"535": "12.2", "550": "12.4", "570": "12.8", "575": "12.9", "580": "13.0", "590": "13.1", "595": "13.2"}

# The stand-in program, linked under every name in STANDINS.
STANDIN = (Path(__file__).parent / "gpu_standin.py").read_text()

# A stand-in torch with the few calls verify makes, its behaviour set by FAKE_TORCH (JSON).
# {"error": {"at": "init", "text": ...}} plays torch's way with a failed cudaGetDeviceCount (a
# UserWarning and is_available() False); "at": "compute" a RuntimeError from the first CUDA op.
FAKE_TORCH = r'''
import json, os, warnings
from pathlib import Path
_cfg = json.loads(os.environ.get("FAKE_TORCH", "{}"))
_err = _cfg.get("error") or {}
__version__ = _cfg.get("version", "2.14.1+cu130")


class version:
    cuda = _cfg.get("cuda", "13.0")


class _Scalar:
    def __init__(self, v):
        self.v = v

    def item(self):
        return self.v


class _Matrix:
    def __init__(self, n, value=1.0):
        self.n, self.value = n, value

    def __matmul__(self, other):
        return _Matrix(self.n, self.value * other.value * self.n)

    def sum(self):
        return _Scalar(self.value * self.n * self.n)


def ones(n, m, device=None):
    if device == "cuda" and _err.get("at") == "compute":
        raise RuntimeError(_err["text"])
    return _Matrix(n)


class cuda:
    @staticmethod
    def is_available():
        if _err.get("at") == "init":
            warnings.warn("CUDA initialization: " + _err["text"])
            return False
        state = json.loads((Path(os.environ["SANDBOX"]) / "state.json").read_text())
        return bool(state.get("loaded")) and _cfg.get("available", True)

    @staticmethod
    def get_device_name(i):
        return json.loads((Path(os.environ["SANDBOX"]) / "state.json").read_text())["gpu"]["name"]
'''

REBOOT_NOT_NEEDED = "cloudtrain-reboot: not needed"
OS_RELEASE = 'NAME="Ubuntu"\nID={id}\nVERSION_ID="{version}"\nPRETTY_NAME="Ubuntu {version} LTS"\n'


@dataclass
class Ran:
    step: str
    returncode: int
    output: str


class Sandbox:
    def __init__(self, path: Path, *, os_version: str = "22.04", pci: bool = True,
                 gpu: dict[str, Any] | None = None, loaded: str | None = None,
                 packages: dict[str, str] | None = None, toolkits: tuple[str, ...] = (),
                 lock_busy: int = 0, secure_boot: bool = False, kernel: str = "6.8.0-1015-aws",
                 archive: dict[str, str] | None = None, proc_version: str | None = None) -> None:
        self.path = path
        self.bin, self.safe, self.root, self.logs = (path / n for n in ("bin", "safebin", "root", "logs"))
        for d in (self.bin, self.safe, self.root / "etc", self.logs, path / "venv/bin", path / "pyfake/torch"):
            d.mkdir(parents=True, exist_ok=True)
        standin = path / "standin.py"
        standin.write_text(f"#!{sys.executable}\n{STANDIN}")
        standin.chmod(0o755)
        for name in STANDINS:
            (self.bin / name).symlink_to(standin)
        for tool in REAL_TOOLS:
            where = shutil.which(tool)
            assert where, f"{tool} is needed to run the sandbox"
            (self.safe / tool).symlink_to(where)
        (path / "venv/bin/python").symlink_to(sys.executable)
        (path / "pyfake/torch/__init__.py").write_text(FAKE_TORCH)
        (self.root / "etc/os-release").write_text(OS_RELEASE.format(id="ubuntu", version=os_version))
        self.os_version = os_version
        for t in toolkits:
            nvcc = self.root / f"usr/local/cuda-{t}/bin/nvcc"
            nvcc.parent.mkdir(parents=True)
            nvcc.write_text("#!/bin/sh\n")
            nvcc.chmod(0o755)
        self.state = {
            "pci": pci,
            "gpu": gpu or {"name": "Tesla T4", "memory_mb": 15360, "cc": "7.5"},
            "loaded": loaded,
            "installed_driver": loaded,
            "packages": dict(packages or {}),
            "held": [],
            "lock_busy": lock_busy,
            "secure_boot": secure_boot,
            "kernel": kernel,
            # What Ubuntu's archive offers (apt-cache policy answers from it): none of Canonical's
            # signed NVIDIA modules unless a test adds them.
            "archive": dict(archive or {}),
            "reboots": 0,
            # What installing each driver package from NVIDIA's repository gives.
            # From R590 the names carry no branch: what comes depends on the pinning package.
            "driver_packages": {"nvidia-open-580": "580.95.05", "cuda-drivers-580": "580.95.05",
                                "nvidia-open": {"590": "590.48.01", "595": "595.58.03", "610": "610.12"}},
            "driver_cuda": DRIVER_CUDA,
        }
        # The running kernel's banner (compiler included), as /proc/version shows it.
        (self.root / "proc").mkdir(parents=True, exist_ok=True)
        (self.root / "proc/version").write_text(proc_version or (
            f"Linux version {kernel} (buildd@lcy02-amd64-080) (x86_64-linux-gnu-gcc-12 (Ubuntu 12.3.0-1ubuntu1~22.04) "
            "12.3.0, GNU ld (GNU Binutils for Ubuntu) 2.38) #16~22.04.1-Ubuntu SMP\n"))
        self.save()
        self.fingerprints: dict[str, str] = {}
        self.fake_torch: dict[str, Any] = {}

    # --- state -----------------------------------------------------------------------------

    def save(self) -> None:
        (self.path / "state.json").write_text(json.dumps(self.state, indent=1))

    def load(self) -> dict[str, Any]:
        self.state = json.loads((self.path / "state.json").read_text())
        return self.state

    def set(self, **changes: Any) -> None:
        self.load()
        self.state.update(changes)
        self.save()

    def calls(self) -> list[list[str]]:
        f = self.path / "calls.jsonl"
        return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []

    def clear_calls(self) -> None:
        (self.path / "calls.jsonl").unlink(missing_ok=True)

    def commands(self, name: str) -> list[list[str]]:
        return [c[1:] for c in self.calls() if c[0] == name]

    def installs(self) -> list[str]:
        """Packages named in `apt-get install` calls, in order."""
        out = []
        for args in self.commands("apt-get"):
            words = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] != "-o")]
            if words and words[0] == "install":
                out += words[1:]
        return out

    def facts(self) -> dict[str, Any]:
        """What the probe would report for the machine as it is now."""
        s = self.load()
        loaded = s.get("loaded")
        toolkits = sorted(p.name[len("cuda-"):] for p in (self.root / "usr/local").glob("cuda-*"))
        cudnn = next((p for p in s["packages"] if p.startswith("cudnn9")), None)
        return {
            "os_id": "ubuntu", "os_version": self.os_version, "arch": "x86_64", "cpus": 4, "mem_mb": 16000,
            "disk_free_gb": 80.0, "python": "/usr/bin/python3", "python_version": "3.10.12", "python_venv": True,
            "gpus": [{"name": s["gpu"]["name"], "memory_mb": s["gpu"]["memory_mb"], "compute_cap": s["gpu"]["cc"]}] if loaded else [],
            "nvidia_pci": s["pci"], "driver": loaded,
            "cuda_driver_max": DRIVER_CUDA[loaded.split(".")[0]] if loaded else None,
            "cuda_toolkits": toolkits, "nvcc": toolkits[-1] if toolkits else None,
            "cudnn": "9.10.2" if cudnn else None, "frameworks": {}, "is_root": True, "has_sudo": True,
            # The probe's driver and repository facts (cloudtrain/bootstrap/node/probe.py).
            "driver_installed": s.get("installed_driver"),
            "driver_modules": s.get("modules", "open") if s.get("installed_driver") else None,
            "driver_source": next((line.split("=", 1)[1] for line in self._read("etc/cloudtrain/driver").splitlines()
                                   if line.startswith("source=")), None),
            "cudnn_path": None,
            "nvidia_apt_repo": ({"file": s["nvidia_repo_file"], "keyring": "cuda-keyring" in s["packages"]}
                                if s.get("nvidia_repo_file") else
                                {"file": "/etc/apt/sources.list.d/cuda-ubuntu2204-x86_64.list", "keyring": True}
                                if "cuda-keyring" in s["packages"] else None),
        }

    def _read(self, path: str) -> str:
        f = self.root / path
        return f.read_text() if f.exists() else ""

    # --- running ---------------------------------------------------------------------------

    def env(self, step: Step | None = None, **extra: str) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin}:{self.safe}",
            "HOME": str(self.path),
            "LANG": "C.UTF-8",
            "SANDBOX": str(self.path),
            "CLOUDTRAIN_SYSROOT": str(self.root),
            "CLOUDTRAIN_OS_RELEASE": str(self.root / "etc/os-release"),
            "CLOUDTRAIN_LOG_DIR": str(self.logs),
            "CLOUDTRAIN_NODE_ROOT": str(self.path / "node"),
            "CLOUDTRAIN_VENV": str(self.path / "venv"),
            "CLOUDTRAIN_APT_LOCK_POLL": "0.01",
            "PYTHONPATH": str(self.path / "pyfake"),
            "TMPDIR": str(self.path),
            "FAKE_TORCH": json.dumps(self.fake_torch),
        }
        if step is not None:
            env.update(step.env)
        env.update(extra)
        return env

    def run(self, step: Step, **extra: str) -> Ran:
        proc = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + step.script], env=self.env(step, **extra),
            capture_output=True, text=True, timeout=120,
        )
        return Ran(step.name, proc.returncode, proc.stdout + proc.stderr)

    def reboot(self) -> None:
        subprocess.run([str(self.bin / "reboot")], env=self.env(), check=True, timeout=60)

    def apply(self, steps: list[Step], **extra: str) -> list[Ran]:
        """Like bootstrap.apply: stop at the first failure, reboot where a step asks, skip done steps."""
        ran = []
        for step in steps:
            if not step.needed or self.fingerprints.get(step.name) == step.fingerprint:
                continue
            result = self.run(step, **extra)
            ran.append(result)
            if result.returncode != 0:
                break
            # A step that changed nothing needing one says so, as bootstrap.apply reads it.
            if step.reboot_after and REBOOT_NOT_NEEDED not in result.output:
                self.reboot()
            self.fingerprints[step.name] = step.fingerprint
        return ran


def bash_env_ok() -> bool:
    return shutil.which("bash") is not None and os.name == "posix"
