"""The GPU step scripts, run for real with bash in a sandbox whose system commands are stand-ins.

See tests/gpu_sandbox.py for what is stood in and how. Scenarios: bare T4 on Ubuntu 22.04,
bare V100 on 24.04, a deep-learning image with driver 580 and CUDA 12.9, a driver too old for
the requested CUDA, and no GPU; plus lock waiting, a driver installed at first boot by the
image, reboot-and-resume and idempotence.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloudtrain.bootstrap import gpu, uv
from cloudtrain.bootstrap.gpu import Request
from cloudtrain.bootstrap.plan import plan as plan_steps
from cloudtrain.errors import BadInput, BootstrapError
from cloudtrain.spec import FrameworkSpec

from gpu_sandbox import Sandbox

T4 = {"name": "Tesla T4", "memory_mb": 15360, "cc": "7.5"}
V100 = {"name": "Tesla V100-SXM2-16GB", "memory_mb": 16384, "cc": "7.0"}
KERNEL_PKGS = {"linux-image-6.8.0-1015-aws": "1", "linux-modules-6.8.0-1015-aws": "1", "linux-aws": "1", "linux-image-aws": "1"}


def plan(box: Sandbox, request: Request):
    facts = box.facts()
    return gpu.gpu_steps(facts, request) + [gpu.verify_step(facts, request)]


def report(output: str) -> dict:
    found = gpu.parse_verify(output)
    assert found is not None, output
    return found


def test_bare_t4_on_22_04_installs_in_order_reboots_and_verifies(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, os_version="22.04", gpu=T4, packages=KERNEL_PKGS)
    request = Request(FrameworkSpec("torch"), gpu="t4", cuda_toolkit=True)
    steps = plan(box, request)
    assert [s.name for s in steps] == ["nvidia-driver", "cuda-toolkit", "cudnn", "verify"]
    assert steps[0].plan_line().startswith("nvidia-driver: install NVIDIA driver R580 with open kernel modules (nvidia-open-580)")
    assert steps[0].reboot_after and steps[0].sudo and not steps[1].reboot_after
    install = gpu.framework_install(box.facts(), request)
    assert install.requirements == ("torch==2.14.1",) and install.index_url == "https://download.pytorch.org/whl/cu130"

    ran = box.apply(steps)
    assert [(r.step, r.returncode) for r in ran] == [(s.name, 0) for s in steps], ran[-1].output

    # No signed modules in this archive, so DKMS: the kernel's own compiler (gcc-12, from
    # /proc/version) and headers before the driver, repository before anything from it, hold
    # after the driver, the reboot before the toolkit, and the toolkit for the planned CUDA.
    names = [c[0] for c in box.calls()]
    installs = box.installs()
    assert installs[:3] == ["dkms", "gcc-12", "linux-headers-6.8.0-1015-aws"]
    assert installs[3].endswith("/cuda-keyring.deb")
    assert installs[4:] == ["nvidia-open-580", "cuda-toolkit-13-0", "cudnn9-cuda-13"]
    # Compute only: the driver comes without its recommends (X and desktop libraries).
    assert all("--no-install-recommends" in c for c in box.commands("apt-get") if "nvidia-open-580" in c)
    assert names.index("curl") < names.index("apt-mark") < names.index("reboot")
    reboot_at = names.index("reboot")
    assert box.commands("curl")[0][-1] == "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/cuda-keyring_1.1-1_all.deb"
    assert box.commands("update-initramfs") == [["-u"]]
    assert (box.root / "etc/modprobe.d/blacklist-nouveau.conf").read_text().startswith("blacklist nouveau")
    toolkit_call = next(i for i, c in enumerate(box.calls()) if "cuda-toolkit-13-0" in c)
    assert toolkit_call > reboot_at
    # The driver's own packages are held, the kernel's are not (security updates keep flowing),
    # and the node has a command that releases the holds.
    held = set(box.load()["held"])
    assert {"nvidia-open-580", "nvidia-driver-580-open", "libnvidia-compute-580"} <= held
    assert not [p for p in held if p.startswith("linux-")]
    assert (box.root / "etc/cloudtrain/driver-holds").read_text().split() == sorted(held) or \
        set((box.root / "etc/cloudtrain/driver-holds").read_text().split()) == held
    assert "apt-mark unhold" in (box.root / "usr/local/sbin/cloudtrain-release-driver-holds").read_text()
    assert box.load()["reboots"] == 1

    assert report(ran[-1].output) == {"ok": True, "device": "Tesla T4", "framework": "torch 2.14.1+cu130", "cuda": "13.0", "driver": "580.95.05"}
    assert gpu.verify_failure(ran[-1].output) is None
    # Every step logged into CLOUDTRAIN_LOG_DIR, which comes home with the cluster's records.
    for step in ("nvidia-driver", "cuda-toolkit", "cudnn", "verify"):
        assert (box.logs / f"{step}.log").read_text().strip()
    assert "+ apt-get" in (box.logs / "nvidia-driver.log").read_text()


def test_bare_t4_second_bootstrap_changes_nothing(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, gpu=T4, packages=KERNEL_PKGS)
    request = Request(FrameworkSpec("torch"), gpu="t4", cuda_toolkit=True)
    steps = plan(box, request)
    assert all(r.returncode == 0 for r in box.apply(steps))
    box.clear_calls()
    # Same plan: every fingerprint is recorded, so nothing runs.
    assert box.apply(steps) == [] and box.calls() == []
    # Re-planned from what the probe now sees: driver, toolkit and cuDNN are kept.
    again = plan(box, request)
    assert [s.plan_line() for s in again[:3]] == [
        "nvidia-driver: kept: driver 580.95.05 already loaded (the CUDA 13.0 toolkit needs >= 580.65.06)",
        "cuda-toolkit: kept: CUDA 13.0 already at /usr/local/cuda-13.0",
        "cudnn: kept: cuDNN 9.10.2 already installed",
    ]
    # The scripts themselves are idempotent too (a lost record reruns them): nothing installed,
    # and no second reboot (the driver step says none is needed).
    box.fingerprints.clear()
    ran = box.apply(steps)
    assert all(r.returncode == 0 for r in ran) and box.installs() == [] and box.load()["reboots"] == 1
    assert "cloudtrain-reboot: not needed (driver 580.95.05 already loaded)" in ran[0].output
    assert "already loaded" in ran[0].output and "kept" in ran[1].output and "kept" in ran[2].output


def test_bare_v100_on_24_04_gets_proprietary_modules_and_cuda_12(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, os_version="24.04", gpu=V100, packages=KERNEL_PKGS)
    request = Request(FrameworkSpec("torch"), gpu="v100", cuda_toolkit=True)
    steps = plan(box, request)
    assert "proprietary kernel modules (cuda-drivers-580)" in steps[0].summary
    assert steps[1].env["CLOUDTRAIN_CUDA_PACKAGE"] == "cuda-toolkit-12-6"
    assert steps[0].env["CLOUDTRAIN_CUDA_KEYRING_URL"].endswith("/repos/ubuntu2404/x86_64/cuda-keyring_1.1-1_all.deb")
    install = gpu.framework_install(box.facts(), request)
    assert install.index_url == "https://download.pytorch.org/whl/cu126"
    box.fake_torch = {"version": "2.14.1+cu126", "cuda": "12.6"}
    ran = box.apply(steps)
    assert all(r.returncode == 0 for r in ran), ran[-1].output
    assert [i for i in box.installs() if not i.endswith(".deb")][3:] == ["cuda-drivers-580", "cuda-toolkit-12-6", "cudnn9-cuda-12"]
    assert "nvidia-open-580" not in box.installs()
    assert report(ran[-1].output)["device"] == "Tesla V100-SXM2-16GB"
    # Asking for CUDA 13 on a V100 is refused before anything runs, with a way out.
    with pytest.raises(BadInput, match="V100 .* is not supported by CUDA 13.0") as e:
        plan(box, Request(FrameworkSpec("torch"), cuda="13.0", gpu="v100"))
    assert e.value.hint == "use --cuda 12.6"


def test_r590_and_later_pin_the_branch_before_the_unbranched_driver(tmp_path: Path) -> None:
    """From R590 NVIDIA's Ubuntu packages drop the branch from their names (nvidia-open, not
    nvidia-open-595): the branch CUDA 13.2 needs is chosen by installing its pinning package
    first; without it apt would take whatever branch is newest."""
    box = Sandbox(tmp_path, os_version="24.04", gpu=T4, packages=KERNEL_PKGS)
    request = Request(FrameworkSpec("torch"), cuda="13.2", gpu="t4", cuda_toolkit=True)
    steps = plan(box, request)
    assert "R595 with open kernel modules (nvidia-driver-pinning-595 then nvidia-open)" in steps[0].summary
    install = gpu.framework_install(box.facts(), request)
    assert install.index_url == "https://download.pytorch.org/whl/cu132"
    box.fake_torch = {"version": install.requirements[0].split("==")[1] + "+cu132", "cuda": "13.2"}
    ran = box.apply(steps)
    assert all(r.returncode == 0 for r in ran), ran[-1].output
    assert [i for i in box.installs() if not i.endswith(".deb")][3:] == [
        "nvidia-driver-pinning-595", "nvidia-open", "cuda-toolkit-13-2", "cudnn9-cuda-13"]
    assert {"nvidia-driver-pinning-595", "nvidia-open", "libnvidia-compute"} <= set(box.load()["held"])
    assert report(ran[-1].output)["driver"] == "595.58.03"  # the pinned branch, not the newest (610)


def test_reboot_and_resume_after_an_interrupted_driver_step(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, gpu=T4)
    request = Request(FrameworkSpec("torch"), gpu="t4")
    driver, toolkit, cudnn, verify = plan(box, request)
    # The driver step ran but the connection dropped before its reboot was recorded.
    assert box.run(driver).returncode == 0 and box.load()["loaded"] is None
    # Without the reboot the GPU layer is broken, and verify says which layer.
    failed = box.run(verify)
    assert failed.returncode == 3 and report(failed.output)["layer"] == "driver-not-loaded"
    err = gpu.verify_failure(failed.output, "node-0")
    assert isinstance(err, BootstrapError) and err.layer == "driver-not-loaded" and "node-0" in err.message
    # Rerunning the step doesn't reinstall; the reboot then loads the driver and the rest resumes.
    box.clear_calls()
    again = box.run(driver)
    assert again.returncode == 0 and "not loaded yet; the reboot that follows loads it" in again.output
    assert box.installs() == []
    box.reboot()
    assert [box.run(s).returncode for s in (toolkit, cudnn, verify)] == [0, 0, 0]
    assert box.load()["loaded"] == "580.95.05"


def test_a_first_boot_driver_install_is_waited_for_and_kept_not_doubled(tmp_path: Path) -> None:
    # A deep-learning image whose own installer (GCP's install-nvidia-driver) still holds the
    # dpkg lock when cloudtrain probes, and leaves its driver installed but not yet loaded.
    box = Sandbox(tmp_path, gpu=T4, lock_busy=2, packages={"nvidia-driver-580-open": "580.82.07"})
    request = Request(FrameworkSpec("torch"), gpu="t4")
    driver, toolkit, cudnn, verify = plan(box, request)
    assert driver.needed  # the probe saw no driver loaded
    box.set(installed_driver="580.82.07")
    ran = box.run(driver)
    assert ran.returncode == 0, ran.output
    # It waited for the lock before deciding, then installed nothing beside the image's driver.
    names = [c[0] for c in box.calls()]
    assert names.index("fuser") < names.index("modinfo") and len(box.commands("fuser")) >= 3 and box.installs() == []
    assert "driver 580.82.07 is installed but not loaded yet; the reboot that follows loads it" in ran.output
    box.reboot()
    assert [box.run(s).returncode for s in (toolkit, cudnn, verify)] == [0, 0, 0]
    assert box.load()["loaded"] == "580.82.07"

    # An image driver too old for the planned CUDA is refused before any reboot, not replaced.
    old = Sandbox(tmp_path / "old", gpu=T4, packages={"nvidia-driver-535": "535.247.01"})
    driver = plan(old, request)[0]
    old.set(installed_driver="535.247.01")
    refused = old.run(driver)
    assert refused.returncode == 1 and old.installs() == []
    assert refused.output.strip().splitlines()[-1].startswith(
        "nvidia-driver: error: driver 535.247.01 is installed (not yet loaded) but CUDA 13.0 needs >= 580.65.06; "
        "cloudtrain never replaces a driver it did not install")


def test_waits_for_the_dpkg_lock_held_by_unattended_upgrades(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, gpu=T4, lock_busy=3)
    driver = plan(box, Request(FrameworkSpec("torch"), gpu="t4"))[0]
    ran = box.run(driver)
    # The apt-get stand-in fails if it is called while the lock is held: it never was.
    assert ran.returncode == 0, ran.output
    assert "waiting for the apt/dpkg lock (unattended-upgrades runs at first boot)" in ran.output
    names = [c[0] for c in box.calls()]
    assert names.count("fuser") >= 4 and names.index("apt-get") > 3
    assert "apt/dpkg lock free after" in (box.logs / "nvidia-driver.log").read_text()


def test_python_venv_waits_for_the_lock_too(tmp_path: Path) -> None:
    # Often the first apt use on a fresh VM: it waits for unattended-upgrades like the GPU steps.
    box = Sandbox(tmp_path, gpu=T4, lock_busy=2)
    step = plan_steps({**box.facts(), "python_venv": False}, Request(FrameworkSpec("torch"), gpu="t4"))[0]
    assert step.name == "python-venv" and step.sudo
    ran = box.run(step)
    assert ran.returncode == 0, ran.output
    assert "waiting for the apt/dpkg lock" in ran.output and box.installs() == ["python3-venv"]
    assert "+ apt-get" in (box.logs / "python-venv.log").read_text()


def test_gives_up_on_a_lock_that_stays_held(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, gpu=T4, lock_busy=10**6)
    driver = plan(box, Request(FrameworkSpec("torch"), gpu="t4"))[0]
    ran = box.run(driver, CLOUDTRAIN_APT_LOCK_TIMEOUT="1", CLOUDTRAIN_APT_LOCK_POLL="0.2")
    assert ran.returncode == 1 and box.installs() == []
    assert ran.output.strip().splitlines()[-1] == (
        "nvidia-driver: error: the apt/dpkg lock is still held after 1s (unattended-upgrades?); run bootstrap again once it is free"
    )


def test_dl_image_with_driver_580_and_cuda_12_9_keeps_them(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, gpu=T4, loaded="580.95.05", toolkits=("12.9",), packages={"cuda-keyring": "1.1-1", "cudnn9-cuda-12": "9.10.2"})
    request = Request(FrameworkSpec("torch"), gpu="t4", cuda_toolkit=True)
    steps = plan(box, request)
    assert [s.plan_line() for s in steps[:3]] == [
        "nvidia-driver: kept: driver 580.95.05 already loaded (the CUDA 12.9 toolkit needs >= 575.51.03)",
        "cuda-toolkit: kept: CUDA 12.9 already at /usr/local/cuda-12.9",
        "cudnn: kept: cuDNN 9.10.2 already installed",
    ]
    install = gpu.framework_install(box.facts(), request)
    assert install.index_url == "https://download.pytorch.org/whl/cu126" and not install.system_site_packages
    box.fake_torch = {"version": "2.14.1+cu126", "cuda": "12.6"}
    ran = box.apply(steps)
    assert [r.step for r in ran] == ["verify"] and ran[0].returncode == 0
    assert box.commands("apt-get") == [] and box.load()["reboots"] == 0
    assert report(ran[0].output)["driver"] == "580.95.05"
    # A preinstalled CUDA build of torch is reused through --system-site-packages, not downloaded.
    facts = dict(box.facts(), frameworks={"torch": "2.9.0+cu129"})
    reuse = gpu.framework_install(facts, request)
    assert reuse.system_site_packages and reuse.requirements == ()
    assert reuse.summary == "reusing the preinstalled torch 2.9.0+cu129 (a CUDA 12.9 build)"


def test_driver_too_old_for_the_requested_cuda(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, gpu=T4, loaded="535.183.01")
    with pytest.raises(BadInput) as e:
        plan(box, Request(FrameworkSpec("torch"), cuda="12.9", gpu="t4", cuda_toolkit=True))
    assert e.value.line() == (
        "the node's NVIDIA driver 535.183.01 is too old for a CUDA 12.9 system toolkit, which needs 575.51.03 or newer. "
        "Use --cuda 12.1"
    )
    # Should a plan for a newer driver meet this node anyway (stale facts), the driver step
    # refuses to replace a driver it didn't install, and verify names the layer.
    fresh = Sandbox(tmp_path / "fresh", gpu=T4)
    driver, *_, verify = plan(fresh, Request(FrameworkSpec("torch"), cuda="12.9", gpu="t4", cuda_toolkit=True))
    ran = box.run(driver)
    assert ran.returncode == 1 and box.installs() == []
    assert ran.output.strip().splitlines()[-1].startswith(
        "nvidia-driver: error: driver 535.183.01 is loaded but CUDA 12.9 needs >= 575.51.03; cloudtrain never replaces a driver it did not install")
    checked = box.run(verify)
    assert checked.returncode == 3
    err = gpu.verify_failure(checked.output)
    assert err is not None and err.layer == "driver-too-old"
    assert "driver 535.183.01 is too old for CUDA 12.9, which needs 575.51.03 or newer" in err.message


def test_framework_built_for_a_newer_cuda_than_the_driver_runs(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, gpu=T4, loaded="575.64.05", toolkits=("12.9",))
    steps = plan(box, Request(FrameworkSpec("torch"), gpu="t4"))
    box.fake_torch = {"version": "2.14.1+cu130", "cuda": "13.0", "available": False}
    ran = box.run(steps[-1])
    found = report(ran.output)
    assert ran.returncode == 3 and found["layer"] == "driver-too-old"
    assert found["message"] == "torch 2.14.1+cu130 is built for CUDA 13.0 but driver 575.64.05 runs CUDA 12.9 at most"


def test_framework_without_cuda_is_named(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, gpu=T4, loaded="580.95.05", toolkits=("13.0",))
    verify = plan(box, Request(FrameworkSpec("torch"), gpu="t4"))[-1]
    box.fake_torch = {"version": "2.14.1+cpu", "cuda": None}
    ran = box.run(verify)
    err = gpu.verify_failure(ran.output)
    assert ran.returncode == 3 and err is not None and err.layer == "framework-without-cuda"
    assert "torch 2.14.1+cpu is built without CUDA" in err.message
    assert ran.output.strip().splitlines()[-1].startswith("verify: error: torch 2.14.1+cpu is built without CUDA")


def test_no_gpu(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, pci=False)
    # A GPU was rented but none is attached: planning says so, naming the layer.
    with pytest.raises(BootstrapError) as e:
        plan(box, Request(FrameworkSpec("torch"), gpu="t4"))
    assert e.value.layer == "no-gpu" and "no PCI device from NVIDIA (vendor 10de)" in e.value.message
    # The scripts check for themselves too.
    steps = plan(Sandbox(tmp_path / "gpu", gpu=T4), Request(FrameworkSpec("torch"), gpu="t4"))
    ran = box.run(steps[0])
    assert ran.returncode == 1 and box.installs() == []
    assert ran.output.strip().splitlines()[-1] == (
        "nvidia-driver: error: no NVIDIA GPU visible: no PCI device from NVIDIA (vendor 10de) is attached (is a GPU attached to this VM?)"
    )
    checked = box.run(steps[-1])
    err = gpu.verify_failure(checked.output)
    assert checked.returncode == 3 and err is not None and err.layer == "no-gpu"
    # A GPU that only sysfs shows (a minimal image has no lspci) is seen: the driver goes in.
    vendor = box.root / "sys/bus/pci/devices/0000:00:1e.0/vendor"
    vendor.parent.mkdir(parents=True)
    vendor.write_text("0x10de\n")
    assert box.run(steps[0]).returncode == 0 and "nvidia-open-580" in box.installs()
    # Without a GPU asked for, it is a CPU node and nothing GPU-related is planned.
    facts = box.facts()
    cpu = Request(FrameworkSpec("torch"))
    assert [s.plan_line() for s in gpu.gpu_steps(facts, cpu)] == [
        "nvidia-driver: not needed: no NVIDIA GPU", "cuda-toolkit: not needed: no NVIDIA GPU", "cudnn: not needed: no NVIDIA GPU",
    ]
    assert gpu.framework_install(facts, cpu).index_url == gpu.TORCH_CPU_INDEX
    assert "on the CPU" in gpu.verify_step(facts, cpu).summary


def test_secure_boot_stops_before_installing(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, gpu=T4, secure_boot=True)
    ran = box.run(plan(box, Request(FrameworkSpec("torch"), gpu="t4"))[0])
    assert ran.returncode == 1 and box.installs() == []
    assert "Secure Boot is enabled" in ran.output.strip().splitlines()[-1]


def test_os_differs_from_the_plan(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, os_version="22.04", gpu=T4)
    steps = plan(box, Request(FrameworkSpec("torch"), gpu="t4", cuda_toolkit=True))
    (box.root / "etc/os-release").write_text('ID=ubuntu\nVERSION_ID="24.04"\n')
    ran = box.run(steps[1])
    assert ran.returncode == 1 and box.calls() == []
    assert "planned for ubuntu-22.04 but the node runs ubuntu-24.04" in ran.output


@pytest.mark.parametrize("framework, requirement", [("tensorflow", "tensorflow[and-cuda]==2.21.0"), ("jax", "jax[cuda12]==0.6.2")])  # the node's Python 3.10
def test_other_frameworks_plan_their_cuda_wheels(tmp_path: Path, framework: str, requirement: str) -> None:
    box = Sandbox(tmp_path, gpu=T4)
    request = Request(FrameworkSpec(framework), gpu="t4")
    install = gpu.framework_install(box.facts(), request)
    assert install.requirements == (requirement,) and install.index_url is None
    verify = gpu.verify_step(box.facts(), request)
    assert verify.env["CLOUDTRAIN_FRAMEWORK"] == framework and "cloudtrain-verify" in verify.script


def test_verify_output_mapping() -> None:
    ok = 'noise\ncloudtrain-verify {"ok": true, "device": "NVIDIA L4"}\n'
    assert gpu.parse_verify(ok) == {"ok": True, "device": "NVIDIA L4"} and gpu.verify_failure(ok) is None
    for layer in gpu.LAYERS:
        line = "cloudtrain-verify " + json.dumps({"ok": False, "layer": layer, "message": "m"})
        err = gpu.verify_failure(f"x\n{line}\nverify: error: m")
        assert err is not None and err.layer == layer and err.hint == gpu.LAYERS[layer]
    assert gpu.parse_verify("cloudtrain-verify {broken") is None and gpu.verify_failure("") is None


@pytest.fixture(scope="module")
def cpu_frameworks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One venv with real CPU builds of all three frameworks, put in by a node's installer (uv
    when it can be had, else pip: bootstrap/uv.py), with the session's uv cache, where the
    local nodes' torch installs have already unpacked torch."""
    base = tmp_path_factory.mktemp("cpu-frameworks")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "CLOUDTRAIN_VENV": str(venv), "CLOUDTRAIN_NODE_ROOT": str(base / "root")}
    # torch pinned: unpinned, the index would give the multi-GB CUDA build.
    script = "set -euo pipefail\n" + uv.chooser() + 'install "$@"\n'
    proc = subprocess.run(["bash", "-c", script, "install", "torch==2.13.0", "jax", "tensorflow-cpu"],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return venv


@pytest.mark.slow
@pytest.mark.parametrize("framework, message", [
    ("torch", "torch 2.13.0+cpu is built without CUDA (a CPU wheel)"),
    ("tensorflow", "is built without CUDA (tensorflow-cpu?); install tensorflow[and-cuda]"),
    ("jax", "has no CUDA plugin; install jax[cuda12] or jax[cuda13]"),
])
def test_verify_names_a_real_cpu_build_of_each_framework(cpu_frameworks: Path, tmp_path: Path, framework: str, message: str) -> None:
    """The verify script's framework checks against the real frameworks, not the stand-in torch:
    each CPU build is named as such, with the layer, and nothing crashes on an API it calls."""
    box = Sandbox(tmp_path, gpu=T4, loaded="580.95.05", toolkits=("12.5",))
    verify = gpu.verify_step(box.facts(), Request(FrameworkSpec(framework), gpu="t4"))
    ran = box.run(verify, CLOUDTRAIN_VENV=str(cpu_frameworks), PYTHONPATH="")
    err = gpu.verify_failure(ran.output, "node-0")
    assert ran.returncode == 3 and err is not None and err.layer == "framework-without-cuda", ran.output[-2000:]
    assert message in err.message and "node-0" in err.message and "Traceback" not in ran.output


def test_the_real_probe_sees_an_nvidia_pci_device_in_sysfs(tmp_path: Path) -> None:
    """The probe finds a GPU with no driver through sysfs, without lspci, as on a minimal image."""
    from cloudtrain.bootstrap.node import probe as node_probe

    def probe(**env: str) -> dict:
        run = subprocess.run([sys.executable, node_probe.__file__], capture_output=True, text=True, check=True,
                             env={**os.environ, "PATH": "/usr/bin:/bin", **env})
        return json.loads(run.stdout)

    devices = tmp_path / "sys/bus/pci/devices"
    for slot, vendor in (("0000:00:00.0", "0x8086"), ("0000:00:04.0", "0x1af4")):
        (devices / slot).mkdir(parents=True)
        (devices / slot / "vendor").write_text(vendor + "\n")
    if probe()["nvidia_pci"]:
        pytest.skip("this machine has an NVIDIA device of its own")
    assert probe(CLOUDTRAIN_SYSROOT=str(tmp_path))["nvidia_pci"] is False
    (devices / "0000:00:1e.0").mkdir()
    (devices / "0000:00:1e.0/vendor").write_text("0x10de\n")
    assert probe(CLOUDTRAIN_SYSROOT=str(tmp_path))["nvidia_pci"] is True


def test_cudnn_that_came_with_a_preinstalled_framework_is_kept(tmp_path: Path) -> None:
    """An image whose only cuDNN is the pip package its torch brought (nvidia-cudnn-cu13):
    the real probe, in a real venv, reports it, and the plan keeps it instead of reaching
    for apt (which an offline image cannot)."""
    from cloudtrain.bootstrap.node import probe as node_probe

    venv = tmp_path / "opt-torch"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    dist = Path(purelib, "nvidia_cudnn_cu13-9.10.2.21.dist-info")
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nvidia-cudnn-cu13\nVersion: 9.10.2.21\n")
    facts = json.loads(subprocess.run([str(venv / "bin/python"), node_probe.__file__], capture_output=True, text=True, check=True).stdout)
    if Path("/usr/include/cudnn_version.h").exists() or "libcudnn" in subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout:
        pytest.skip("this machine has a system cuDNN, which the probe rightly reports first")
    assert facts["cudnn"] == "9.10.2.21"

    box = Sandbox(tmp_path / "box", os_version="24.04", gpu={"name": "NVIDIA H200", "memory_mb": 143771, "cc": "9.0"},
                  loaded="580.159.04", toolkits=("13.0",))
    image = {**box.facts(), "cudnn": facts["cudnn"], "frameworks": {"torch": "2.11.0+cu130"}}
    steps = gpu.gpu_steps(image, Request(FrameworkSpec("torch"), cuda_toolkit=True))
    assert [s.skip_reason is not None for s in steps] == [True, True, True], [s.plan_line() for s in steps]
    assert "cuDNN 9.10.2.21" in steps[2].plan_line()
    assert gpu.framework_install(image, Request(FrameworkSpec("torch"))).requirements == ()  # torch reused, nothing fetched
