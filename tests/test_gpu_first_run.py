"""GPU nodes as a first real run meets them (issue 11): the step scripts, run for real with bash
in the sandbox of tests/gpu_sandbox.py, on the machines the review says would fail.

The driver step is built here with the env the resolver passes (CLOUDTRAIN_DRIVER_BRANCH,
_PACKAGE, _PIN, _KERNEL_MODULES, _MIN_DRIVER, _CUDA), so these scenarios test the scripts
whatever the resolver plans. Scenarios: Secure Boot with Canonical's signed modules available,
a newer kernel pending on 22.04, a GCP DL image whose first-boot installer runs without the
dpkg lock, a DL image with driver 550 kept for a CUDA 12 wheel, an HGX H100 on bare 22.04
(driver side, and verify naming Fabric Manager), CUDA errors named by layer, an NVIDIA
repository set up without cuda-keyring, and what the real probe reports.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cloudtrain.bootstrap import gpu
from cloudtrain.bootstrap.steps import Step, script

from gpu_sandbox import Sandbox

T4 = {"name": "Tesla T4", "memory_mb": 15360, "cc": "7.5"}
H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559, "cc": "9.0"}
KERNEL = "6.8.0-1015-aws"
KERNEL_PKGS = {f"linux-image-{KERNEL}": "1", f"linux-modules-{KERNEL}": "1", "linux-aws": "1", "linux-image-aws": "1"}
# What Ubuntu's jammy archive offers an aws kernel for R580 (package names as on
# packages.ubuntu.com: linux-modules-nvidia-580-server-open-aws and its per-kernel package,
# nvidia-utils-580-server, libnvidia-compute-580-server).
SIGNED_580 = {
    f"linux-modules-nvidia-580-server-open-{KERNEL}": "6.8.0-1015.16~22.04.1+1",
    "linux-modules-nvidia-580-server-open-aws": "6.8.0-1015.16~22.04.1+1",
    f"linux-modules-nvidia-580-server-{KERNEL}": "6.8.0-1015.16~22.04.1+1",
    "linux-modules-nvidia-580-server-aws": "6.8.0-1015.16~22.04.1+1",
    "nvidia-utils-580-server": "580.95.05-0ubuntu0.22.04.1",
    "libnvidia-compute-580-server": "580.95.05-0ubuntu0.22.04.1",
}
KEYRING = "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/cuda-keyring_1.1-1_all.deb"


def step(name: str, reboot_after: bool = False, **env: str) -> Step:
    base = {"CLOUDTRAIN_STEP": name, "CLOUDTRAIN_OS": "ubuntu-22.04", "CLOUDTRAIN_CUDA_KEYRING_URL": KEYRING}
    return Step(name, name, script=script(name), env={**base, **env}, reboot_after=reboot_after, sudo=True,
                explain=gpu.verify_failure if name == "verify" else None)


def driver_step(branch: str = "580", modules: str = "open", min_driver: str = "580.65.06", cuda: str = "13.0") -> Step:
    package = f"nvidia-open-{branch}" if modules == "open" else f"cuda-drivers-{branch}"
    return step("nvidia-driver", reboot_after=True, CLOUDTRAIN_DRIVER_BRANCH=branch, CLOUDTRAIN_DRIVER_PACKAGE=package,
                CLOUDTRAIN_DRIVER_PIN="", CLOUDTRAIN_KERNEL_MODULES=modules, CLOUDTRAIN_MIN_DRIVER=min_driver,
                CLOUDTRAIN_CUDA=cuda)


def verify_step(min_driver: str = "580.65.06", cuda: str = "13.0") -> Step:
    return step("verify", CLOUDTRAIN_FRAMEWORK="torch", CLOUDTRAIN_MIN_DRIVER=min_driver, CLOUDTRAIN_CUDA=cuda)


def report(output: str) -> dict:
    found = gpu.parse_verify(output)
    assert found is not None, output
    return found


def test_secure_boot_with_signed_modules_available_installs_them(tmp_path: Path) -> None:
    """Azure Trusted Launch and GCP Shielded VMs boot with Secure Boot on: Canonical's signed
    prebuilt modules load there, so they go in (no compiler, no DKMS) instead of a refusal."""
    box = Sandbox(tmp_path, gpu=T4, secure_boot=True, packages=KERNEL_PKGS, archive=SIGNED_580)
    ran = box.apply([driver_step(), verify_step()])
    assert [(r.step, r.returncode) for r in ran] == [("nvidia-driver", 0), ("verify", 0)], ran[0].output
    assert box.installs() == [f"linux-modules-nvidia-580-server-open-{KERNEL}", "linux-modules-nvidia-580-server-open-aws",
                              "nvidia-utils-580-server", "libnvidia-compute-580-server"]
    assert all("--no-install-recommends" in c for c in box.commands("apt-get") if "install" in c)
    assert box.commands("curl") == [] and "dkms" not in box.installs()  # no NVIDIA repo, nothing to compile
    assert box.load()["modules"] == "open" and box.load()["reboots"] == 1
    assert report(ran[1].output)["driver"] == "580.95.05"
    # The node records where its driver came from (the probe's driver_source).
    assert "source=ubuntu-signed\nbranch=580\nmodules=open\n" in (box.root / "etc/cloudtrain/driver").read_text()
    assert probe(box.root)["driver_source"] == "ubuntu-signed"
    # Held: the exact driver packages; not the meta package that brings each new kernel its
    # modules, nor any kernel package.
    held = set(box.load()["held"])
    assert held == {f"linux-modules-nvidia-580-server-open-{KERNEL}", "nvidia-utils-580-server",
                    "libnvidia-compute-580-server", "nvidia-kernel-common-580-server"}
    # The documented way to release them, run as the node would run it.
    release = box.root / "usr/local/sbin/cloudtrain-release-driver-holds"
    subprocess.run(["bash", str(release)], env=box.env(), check=True, timeout=60)
    assert box.load()["held"] == [] and not release.exists() and not (box.root / "etc/cloudtrain/driver-holds").exists()


def test_proprietary_modules_and_a_too_old_archive_driver(tmp_path: Path) -> None:
    # V100 takes the proprietary flavour: the signed package without "-open".
    box = Sandbox(tmp_path, gpu={"name": "Tesla V100-SXM2-16GB", "memory_mb": 16384, "cc": "7.0"}, packages=KERNEL_PKGS,
                  archive=SIGNED_580)
    assert box.run(driver_step(modules="proprietary", min_driver="525.60.13", cuda="12.6")).returncode == 0
    assert box.installs()[:2] == [f"linux-modules-nvidia-580-server-{KERNEL}", "linux-modules-nvidia-580-server-aws"]
    assert box.load()["modules"] == "proprietary"
    # Ubuntu's build of the branch older than the planned CUDA needs: NVIDIA's, with DKMS.
    old = Sandbox(tmp_path / "old", gpu=T4, packages=KERNEL_PKGS,
                  archive={**SIGNED_580, "nvidia-utils-580-server": "580.20.01-0ubuntu1"})
    ran = old.run(driver_step())
    assert ran.returncode == 0, ran.output
    assert "older than the 580.65.06 CUDA 13.0 needs" in ran.output
    assert old.installs()[:3] == ["dkms", "gcc-12", f"linux-headers-{KERNEL}"] and "nvidia-open-580" in old.installs()
    assert (old.root / "etc/cloudtrain/driver").read_text().startswith("source=nvidia-dkms\n")


def test_secure_boot_without_signed_modules_refuses_before_installing(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, gpu=T4, secure_boot=True, packages=KERNEL_PKGS)
    ran = box.run(driver_step())
    assert ran.returncode == 1 and box.installs() == []
    assert ran.output.strip().splitlines()[-1] == (
        f"nvidia-driver: error: Secure Boot is enabled and no signed prebuilt NVIDIA R580 module exists for kernel {KERNEL}, "
        "so a DKMS-built (unsigned) module would not load; disable Secure Boot for the VM or use a deep-learning image (--image dl)")


def test_a_newer_kernel_pending_gets_the_module_and_the_reboot_boots_it(tmp_path: Path) -> None:
    """22.04 running 6.5 (built with gcc-11) with 6.8 (built with gcc-12) installed by
    unattended-upgrades: the reboot boots 6.8, so DKMS builds for 6.8 with gcc-12, and the
    flavour's headers meta package keeps later kernels covered."""
    pending = "6.8.0-1020-aws"
    packages = {**KERNEL_PKGS, f"linux-image-{pending}": "1", "linux-headers-aws": "1"}
    box = Sandbox(tmp_path, gpu=T4, kernel="6.5.0-1024-aws", packages=packages, archive={"linux-headers-aws": "6.8.0.1020.20"},
                  proc_version="Linux version 6.5.0-1024-aws (buildd@lcy02-amd64-021) (x86_64-linux-gnu-gcc-11 "
                               "(Ubuntu 11.4.0-1ubuntu1~22.04) 11.4.0, GNU ld (GNU Binutils for Ubuntu) 2.38)\n")
    (box.root / "boot").mkdir()
    (box.root / f"boot/config-{pending}").write_text(
        'CONFIG_CC_VERSION_TEXT="x86_64-linux-gnu-gcc-12 (Ubuntu 12.3.0-1ubuntu1~22.04) 12.3.0"\nCONFIG_GCC_VERSION=120300\n')
    ran = box.run(driver_step())
    assert ran.returncode == 0, ran.output
    assert box.installs()[:4] == ["dkms", "gcc-12", f"linux-headers-{pending}", "linux-headers-aws"]
    # A generic HWE kernel: its headers meta package is the HWE one.
    hwe = Sandbox(tmp_path / "hwe", gpu=T4, kernel="6.8.0-45-generic", packages={"linux-image-6.8.0-45-generic": "1",
                  "linux-image-generic-hwe-22.04": "1"}, archive={"linux-headers-generic-hwe-22.04": "6.8.0.45.45~22.04.1",
                                                                  "linux-headers-generic": "5.15.0.125.125"})
    assert hwe.run(driver_step()).returncode == 0
    assert hwe.installs()[:4] == ["dkms", "gcc-12", "linux-headers-6.8.0-45-generic", "linux-headers-generic-hwe-22.04"]
    assert "linux-headers-6.5.0-1024-aws" not in box.installs()
    assert f"kernel {pending} is installed and boots next (running: 6.5.0-1024-aws)" in ran.output
    # No hold on any kernel package: security updates keep flowing, DKMS rebuilds for them.
    assert not [p for p in box.load()["held"] if p.startswith("linux-")]

    # With Canonical's modules for the pending kernel, those are the ones installed.
    signed = Sandbox(tmp_path / "signed", gpu=T4, kernel="6.5.0-1024-aws", packages=packages,
                     archive={f"linux-modules-nvidia-580-server-open-{pending}": "1", "nvidia-utils-580-server": "580.95.05-0ubuntu1",
                              "libnvidia-compute-580-server": "580.95.05-0ubuntu1"})
    assert signed.run(driver_step()).returncode == 0
    assert signed.installs() == [f"linux-modules-nvidia-580-server-open-{pending}", "nvidia-utils-580-server",
                                 "libnvidia-compute-580-server"]


def test_gcp_dl_image_first_boot_installer_is_waited_for_and_kept(tmp_path: Path) -> None:
    """A GCP DL image with install-nvidia-driver=True: Google's installer downloads and installs
    without holding the dpkg lock, and loads its driver. The probe ran before it finished (no
    driver seen), so the plan has a driver step: the step waits, then keeps that driver; no
    second driver, no reboot."""
    box = Sandbox(tmp_path, gpu=T4, packages=KERNEL_PKGS, archive=SIGNED_580)
    box.set(first_boot={"polls": 4, "driver": "580.82.07", "loads": True})
    ran = box.apply([driver_step(), verify_step()])
    assert [(r.step, r.returncode) for r in ran] == [("nvidia-driver", 0), ("verify", 0)], ran[0].output
    assert box.installs() == [] and box.load()["reboots"] == 0
    names = [c[0] for c in box.calls()]
    # cloud-init's final stage first, bounded by timeout; then the installer, polled until gone.
    assert ["status", "--wait"] in box.commands("cloud-init") and names.index("cloud-init") < names.index("pgrep")
    assert names.count("pgrep") == 4 and names.index("pgrep") < names.index("nvidia-smi")
    assert "waiting for the image's first-boot driver installer (process 4242) to finish" in ran[0].output
    assert "cloudtrain-reboot: not needed (driver 580.82.07 already loaded)" in ran[0].output
    assert report(ran[1].output)["driver"] == "580.82.07"


def test_a_first_boot_installer_that_never_finishes_is_bounded(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, gpu=T4, packages=KERNEL_PKGS)
    box.set(first_boot={"polls": 10**6, "driver": "580.82.07"})
    ran = box.run(driver_step(), CLOUDTRAIN_FIRST_BOOT_TIMEOUT="1", CLOUDTRAIN_FIRST_BOOT_POLL="0.2")
    assert ran.returncode == 1 and box.installs() == []
    assert ran.output.strip().splitlines()[-1] == (
        "nvidia-driver: error: the cloud's first-boot driver installer (process 4242) still runs after 1s; "
        "run bootstrap again once it has finished")


def test_the_installer_pattern_does_not_match_the_step_itself() -> None:
    """The step runs as `bash FILE` on the node, but wherever its text is on a command line
    (bash -c, as in the sandbox) pgrep -f must not find the step itself."""
    text = script("nvidia-driver")
    pattern = re.search(r"FIRST_BOOT_PROCESSES='([^']+)'", text).group(1)
    assert re.search(pattern, "python3 /opt/google/cuda-installer/cuda_installer.pyz install_driver")
    assert re.search(pattern, text) is None


def test_dl_image_with_driver_550_is_kept_for_a_cuda_12_wheel(tmp_path: Path) -> None:
    """A DL image with 550.90.07: a cu126 torch wheel runs on it (minor version compatibility:
    CUDA 12.x needs >= 525.60.13), so the driver step keeps it and verify accepts it although
    nvidia-smi says CUDA 12.4."""
    box = Sandbox(tmp_path, gpu=T4, loaded="550.90.07", packages={"nvidia-driver-550": "550.90.07"})
    box.fake_torch = {"version": "2.14.1+cu126", "cuda": "12.6"}
    ran = box.apply([driver_step(branch="550", min_driver="525.60.13", cuda="12.6"), verify_step("525.60.13", "12.6")])
    assert [(r.step, r.returncode) for r in ran] == [("nvidia-driver", 0), ("verify", 0)], ran[-1].output
    assert box.commands("apt-get") == [] and box.load()["reboots"] == 0 and box.load()["held"] == []
    assert report(ran[1].output) == {"ok": True, "device": "Tesla T4", "framework": "torch 2.14.1+cu126", "cuda": "12.6",
                                     "driver": "550.90.07"}


def test_hgx_h100_on_bare_22_04_driver_then_verify_names_fabric_manager(tmp_path: Path) -> None:
    """p5.48xlarge on bare Ubuntu 22.04: the signed R580 open modules go in; until Fabric
    Manager runs, CUDA fails with error 802 and verify names that layer, not the framework."""
    box = Sandbox(tmp_path, gpu=H100, packages=KERNEL_PKGS, archive=SIGNED_580)
    ran = box.apply([driver_step()])
    assert ran[0].returncode == 0 and box.load()["loaded"] == "580.95.05" and box.load()["modules"] == "open"
    # Held packages are exact versions of the driver; the fabric-manager step can still add
    # nvidia-fabricmanager-580 of that version (nothing of it is held).
    assert not [p for p in box.load()["held"] if "fabricmanager" in p or p.startswith("linux-image")]
    box.fake_torch = {"error": {"at": "init", "text": (
        "Unexpected error from cudaGetDeviceCount(). Did you run some cuda functions before calling NumCudaDevices() "
        "that might have already set an error? Error 802: system not yet initialized")}}
    checked = box.run(verify_step())
    err = gpu.verify_failure(checked.output, "node-0")
    assert checked.returncode == 3 and err is not None and err.layer == "fabric-manager", checked.output
    assert "CUDA error 802 (system not yet initialized)" in err.message and "node-0" in err.message
    assert err.hint == gpu.LAYERS["fabric-manager"] and "nvidia-fabricmanager" in err.hint
    assert "Traceback" not in checked.output


@pytest.mark.parametrize("at, text, layer, says", [
    ("init", "The NVIDIA driver on your system is too old (found version 12020). Please update your GPU driver",
     "driver-too-old", "CUDA error 35 (driver older than the CUDA runtime)"),
    ("init", "Unexpected error from cudaGetDeviceCount(). Error 803: system has unsupported display driver / cuda driver combination",
     "driver-too-old", "CUDA error 803 (display driver / CUDA driver mismatch)"),
    ("compute", "CUDA error: CUDA driver version is insufficient for CUDA runtime version",
     "driver-too-old", "CUDA error 35"),
    ("compute", "CUDA error: no CUDA-capable device is detected", "driver-not-loaded", "CUDA error 100"),
    ("compute", "CUDA error: an illegal memory access was encountered", "framework", "torch cannot use the GPU: RuntimeError: CUDA error"),
])
def test_cuda_errors_are_named_by_layer_without_a_traceback(tmp_path: Path, at: str, text: str, layer: str, says: str) -> None:
    box = Sandbox(tmp_path, gpu=T4, loaded="580.95.05")
    box.fake_torch = {"error": {"at": at, "text": text}}
    ran = box.run(verify_step())
    err = gpu.verify_failure(ran.output)
    assert ran.returncode == 3 and err is not None and err.layer == layer, ran.output
    assert says in err.message and "Traceback" not in ran.output
    assert ran.output.strip().splitlines()[-1].startswith("verify: error: ")
    if at == "compute":  # the framework's own traceback is kept in the step's log
        assert "Traceback" in (box.logs / "verify.log").read_text()


# A stand-in tensorflow whose GPU list comes back empty while its C++ side logs why on fd 2,
# as TensorFlow does when cuInit fails.
FAKE_TF = """
import os


class _Info(dict):
    pass


class sysconfig:
    @staticmethod
    def get_build_info():
        return {"cuda_version": "12.5.1"}


class test:
    @staticmethod
    def is_built_with_cuda():
        return True


class config:
    @staticmethod
    def list_physical_devices(kind):
        os.write(2, os.environ["FAKE_TF_STDERR"].encode() + b"\\n")
        return []


__version__ = "2.21.0"
"""


@pytest.mark.parametrize("logged, layer", [
    ("E external/xla/xla/stream_executor/cuda/cuda_driver.cc:152] failed call to cuInit: CUDA_ERROR_SYSTEM_NOT_READY: "
     "system not yet initialized", "fabric-manager"),
    ("I tensorflow/core/util/port.cc:153] oneDNN custom operations are on.", "framework"),
])
def test_tensorflow_cuda_init_errors_logged_natively_are_named(tmp_path: Path, logged: str, layer: str) -> None:
    box = Sandbox(tmp_path, gpu=H100, loaded="580.95.05")
    (box.path / "pyfake/tensorflow").mkdir()
    (box.path / "pyfake/tensorflow/__init__.py").write_text(FAKE_TF)
    ran = box.run(step("verify", CLOUDTRAIN_FRAMEWORK="tensorflow", CLOUDTRAIN_MIN_DRIVER="525.60.13", CLOUDTRAIN_CUDA="12.5"),
                  FAKE_TF_STDERR=logged)
    err = gpu.verify_failure(ran.output)
    assert ran.returncode == 3 and err is not None and err.layer == layer, ran.output
    assert logged in ran.output  # what TensorFlow said still reaches the log
    if layer == "framework":
        assert err.message.endswith("tensorflow 2.21.0 is a CUDA build but cannot use the GPU; see this log for its error")


def test_nvidia_repo_set_up_without_cuda_keyring_is_used_not_doubled(tmp_path: Path) -> None:
    """An image that configured NVIDIA's repository with its own key file: adding cuda-keyring
    beside it makes every apt-get update fail ("Conflicting values set for option Signed-By")."""
    box = Sandbox(tmp_path, gpu=T4, loaded="580.95.05")
    listed = box.root / "etc/apt/sources.list.d/cuda-ubuntu2204-x86_64.list"
    listed.parent.mkdir(parents=True)
    listed.write_text("deb [signed-by=/usr/share/keyrings/nvidia-cuda.gpg] "
                      "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/ /\n")
    box.set(nvidia_repo_file="/etc/apt/sources.list.d/cuda-ubuntu2204-x86_64.list")
    ran = box.run(step("cuda-toolkit", CLOUDTRAIN_CUDA="13.0", CLOUDTRAIN_CUDA_PACKAGE="cuda-toolkit-13-0"))
    assert ran.returncode == 0, ran.output
    assert box.commands("curl") == [] and box.installs() == ["cuda-toolkit-13-0"]
    assert "already configured in /etc/apt/sources.list.d/cuda-ubuntu2204-x86_64.list (without cuda-keyring): used as it is" in ran.output
    # A commented-out line names no repository: the keyring goes in as usual.
    listed.write_text("# deb https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/ /\n")
    box.set(nvidia_repo_file=None)
    assert box.run(step("cudnn", CLOUDTRAIN_CUDNN_PACKAGE="cudnn9-cuda-13")).returncode == 0
    assert len(box.commands("curl")) == 1 and box.installs()[-1] == "cudnn9-cuda-13"


def probe(tmp_path: Path, **env: str) -> dict:
    from cloudtrain.bootstrap.node import probe as node_probe

    run = subprocess.run([sys.executable, node_probe.__file__], capture_output=True, text=True, check=True, timeout=120,
                         env={**os.environ, "CLOUDTRAIN_SYSROOT": str(tmp_path), **env})
    return json.loads(run.stdout)


def test_probe_reports_the_module_flavour_of_a_preinstalled_driver(tmp_path: Path) -> None:
    version = tmp_path / "proc/driver/nvidia/version"
    version.parent.mkdir(parents=True)
    version.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (dvs-builder@U16-I3-B03-4-3)\n")
    assert probe(tmp_path)["driver_modules"] == "open"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.90.07  Fri May 31 09:35:42 UTC 2024\n")
    assert probe(tmp_path)["driver_modules"] == "proprietary"
    # Not loaded yet (before its reboot): modinfo's license tells, and its version is reported.
    version.unlink()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "modinfo"
    fake.write_text('#!/bin/sh\ncase "$2" in license) echo "Dual MIT/GPL" ;; version) echo 580.82.07 ;; esac\n')
    fake.chmod(0o755)
    facts = probe(tmp_path, PATH=f"{bin_dir}:/usr/bin:/bin")
    assert (facts["driver_modules"], facts["driver_installed"], facts["driver"]) == ("open", "580.82.07", None)
    fake.write_text('#!/bin/sh\ncase "$2" in license) echo NVIDIA ;; version) echo 535.247.01 ;; esac\n')
    assert probe(tmp_path, PATH=f"{bin_dir}:/usr/bin:/bin")["driver_modules"] == "proprietary"


def test_probe_finds_cudnn_under_a_toolkit_and_an_nvidia_repo_without_keyring(tmp_path: Path) -> None:
    if Path("/usr/include/cudnn_version.h").exists():
        pytest.skip("this machine has a system cuDNN of its own")
    home = tmp_path / "usr/local/cuda-12.9"
    (home / "include").mkdir(parents=True)
    (home / "include/cudnn_version.h").write_text("#define CUDNN_MAJOR 9\n#define CUDNN_MINOR 10\n#define CUDNN_PATCHLEVEL 2\n")
    # A header without its library is not a cuDNN.
    facts = probe(tmp_path)
    assert facts["cudnn_path"] is None and facts["cuda_toolkits"] == ["12.9"]
    (home / "lib64").mkdir()
    (home / "lib64/libcudnn.so.9").write_text("")
    facts = probe(tmp_path)
    assert (facts["cudnn"], facts["cudnn_path"]) == ("9.10.2", "/usr/local/cuda-12.9/include/cudnn_version.h")
    assert facts["nvidia_apt_repo"] is None
    sources = tmp_path / "etc/apt/sources.list.d/cuda.sources"
    sources.parent.mkdir(parents=True)
    sources.write_text("Types: deb\nURIs: https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/\n"
                       "Suites: /\nSigned-By: /usr/share/keyrings/nvidia.gpg\n")
    assert probe(tmp_path)["nvidia_apt_repo"] == {"file": "/etc/apt/sources.list.d/cuda.sources", "keyring": False}


def test_the_sandbox_plays_every_fact_the_real_probe_reports(tmp_path: Path) -> None:
    """Plans in these tests come from Sandbox.facts(): it must answer what the probe answers."""
    assert set(Sandbox(tmp_path / "box").facts()) == set(probe(tmp_path))
