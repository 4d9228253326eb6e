"""Fabric Manager on 8-GPU NVSwitch boards, planned by bootstrap/gpu.py and run for real with bash.

The sandbox (tests/gpu_sandbox.py) stands in for apt-get, dpkg-query, nvidia-smi and friends;
this file adds stand-ins for the two commands only this step uses, apt-cache (madison: which
versions NVIDIA's repository carries) and systemctl (enable/start/is-active), and a dpkg-query
that also answers ${Version}; all read and write the sandbox's state file. Last, the driver-only
plan of a deep-learning image whose driver (550) is kept for torch's CUDA 12 wheels.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cloudtrain.bootstrap import gpu
from cloudtrain.bootstrap.gpu import Request
from cloudtrain.spec import FrameworkSpec

from gpu_sandbox import Sandbox

H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559, "cc": "9.0"}
KERNEL_PKGS = {"linux-image-6.8.0-1015-aws": "1", "linux-aws": "1"}
FM = "nvidia-fabricmanager-580"

EXTRA = r'''
import json, os, sys
from pathlib import Path
box = Path(os.environ["SANDBOX"])
name, args = Path(sys.argv[0]).name, sys.argv[1:]
mine = (name == "apt-cache" and args[:1] == ["madison"]) or name == "dpkg-query" or (
    name == "systemctl" and "fabricmanager" in (args[-1] if args else ""))
if not mine:
    # Everything else is the shared sandbox's own stand-in (apt-cache policy, other units).
    standin = str(box / "standin" / name)
    os.execv(standin, [standin, *args])
state = json.loads((box / "state.json").read_text())
with open(box / "calls.jsonl", "a") as f:
    f.write(json.dumps([name, *args]) + "\n")
if name == "apt-cache" and args[0] == "madison":
    for v in state.get("repo_versions", {}).get(args[1], []):
        print(f" {args[1]} | {v} | https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64  Packages")
elif name == "dpkg-query":
    import fnmatch
    fmt = next((a[3:] for a in args if a.startswith("-f=")), "")
    patterns = [a for a in args if not a.startswith("-")]
    found = [p for p in state["packages"] if any(fnmatch.fnmatch(p, pat) for pat in patterns)]
    if not found:
        sys.exit(1)
    for p in sorted(found):
        sys.stdout.write(fmt.replace("${Package}", p).replace("${Status}", "install ok installed")
                         .replace("${Version}", str(state["packages"][p])).replace("\\n", "\n"))
elif name == "systemctl":
    units = state.setdefault("units", {})
    if args[0] in ("enable", "start"):
        units.setdefault(args[-1], []).append(args[0])
        # The service only comes up when its package matches the driver that runs.
        versions = [p.split("=", 1)[1] if "=" in p else str(v) for p, v in state["packages"].items() if p.startswith("nvidia-fabricmanager-")]
        state["fm_active"] = any(v.startswith((state.get("loaded") or "?") + "-") for v in versions)
        (box / "state.json").write_text(json.dumps(state, indent=1))
    elif args[0] == "is-active":
        sys.exit(0 if state.get("fm_active") else 3)
'''


def installs(box: Sandbox) -> list[str]:
    """apt installs other than NVIDIA's repository keyring."""
    return [p for p in box.installs() if not p.endswith(".deb")]


def record_install(box: Sandbox) -> None:
    # The sandbox's apt-get records "pkg=version" as the name; dpkg knows it as pkg at version.
    state = box.load()
    for p in list(state["packages"]):
        if p.startswith("nvidia-fabricmanager-") and "=" in p:
            name, version = p.split("=", 1)
            state["packages"][name] = version
            del state["packages"][p]
    box.set(packages=state["packages"])


def sandbox(path: Path, **kw) -> Sandbox:
    box = Sandbox(path, gpu=H100, packages=KERNEL_PKGS, **kw)
    extra = path / "extra.py"
    extra.write_text(f"#!{sys.executable}\n{EXTRA}")
    extra.chmod(0o755)
    # The shared stand-in, under each name this one takes over, for the calls it passes on.
    standin = (box.bin / "nvidia-smi").resolve()
    (path / "standin").mkdir()
    for name in ("apt-cache", "systemctl", "dpkg-query"):
        target = box.bin / name
        if target.exists() or target.is_symlink():
            target.unlink()
        (path / "standin" / name).symlink_to(standin)
        target.symlink_to(extra)
    box.set(repo_versions={FM: ["580.105.08-1", "580.95.05-1", "580.82.07-1"]})
    return box


def test_bare_hgx_h100_gets_fabric_manager_matching_the_driver(tmp_path: Path) -> None:
    box = sandbox(tmp_path)
    request = Request(FrameworkSpec("torch"), gpu="h100", gpu_count=8)  # no driver yet: the count comes from the request
    steps = gpu.gpu_steps(box.facts(), request)
    assert [s.name for s in steps] == ["nvidia-driver", "fabric-manager", "cuda-toolkit", "cudnn"]
    driver, fm = steps[0], steps[1]
    assert driver.env["CLOUDTRAIN_DRIVER_BRANCH"] == "580"
    assert fm.env["CLOUDTRAIN_DRIVER_BRANCH"] == "580" and fm.env["CLOUDTRAIN_FABRICMANAGER_PACKAGE"] == FM
    assert fm.env["CLOUDTRAIN_DRIVER_VERSION"] == ""  # installed by this bootstrap: the module says which
    assert fm.plan_line().startswith(f"fabric-manager: install {FM} matching driver R580 for 8x h100 on NVSwitch")
    assert not (steps[2].needed or steps[3].needed)  # the wheels bring CUDA and cuDNN

    ran = box.apply(steps)
    assert [(r.step, r.returncode) for r in ran] == [("nvidia-driver", 0), ("fabric-manager", 0)], ran[-1].output
    # The repository's newest (580.105.08) is not what the driver is: the driver's own version is installed.
    assert installs(box)[-1] == f"{FM}=580.95.05-1"
    assert [c for c in box.commands("systemctl") if "fabricmanager" in c[-1]][:2] == [["enable", "nvidia-fabricmanager"], ["start", "nvidia-fabricmanager"]]
    assert box.load()["fm_active"]
    assert "nvidia-fabricmanager is running (driver 580.95.05)" in (box.logs / "fabric-manager.log").read_text()


def test_kept_driver_gets_fabric_manager_of_its_exact_version_and_a_second_run_installs_nothing(tmp_path: Path) -> None:
    box = sandbox(tmp_path, loaded="580.82.07")
    facts = {**box.facts(), "gpus": box.facts()["gpus"] * 8}  # nvidia-smi lists all eight
    steps = gpu.gpu_steps(facts, Request(FrameworkSpec("torch")))
    fm = next(s for s in steps if s.name == "fabric-manager")
    assert fm.env["CLOUDTRAIN_DRIVER_VERSION"] == "580.82.07" and not steps[0].needed
    ran = box.run(fm)
    assert ran.returncode == 0, ran.output
    assert installs(box) == [f"{FM}=580.82.07-1"]
    record_install(box)
    assert box.load()["packages"][FM] == "580.82.07-1"
    # Installed and matching: a rerun enables and starts the service again, installs nothing.
    box.clear_calls()
    again = box.run(fm)
    assert again.returncode == 0, again.output
    assert box.installs() == [] and f"{FM} 580.82.07-1 already matches driver 580.82.07: kept" in again.output
    assert ["start", "nvidia-fabricmanager"] in box.commands("systemctl")


def test_no_matching_fabric_manager_is_refused_with_the_reason(tmp_path: Path) -> None:
    box = sandbox(tmp_path, loaded="580.76.05")
    facts = {**box.facts(), "gpus": box.facts()["gpus"] * 8}
    fm = next(s for s in gpu.gpu_steps(facts, Request(FrameworkSpec("torch"))) if s.name == "fabric-manager")
    ran = box.run(fm)
    assert ran.returncode == 1 and installs(box) == []
    assert ran.output.strip().splitlines()[-1] == (
        f"fabric-manager: error: NVIDIA's repository has no {FM} for driver 580.76.05 (Fabric Manager must match the "
        "driver exactly); use an image that ships it, or a driver version the repository still carries")


def test_one_gpu_or_a_board_without_nvswitch_plans_no_fabric_manager(tmp_path: Path) -> None:
    box = sandbox(tmp_path)
    for request in (Request(FrameworkSpec("torch"), gpu="h100"), Request(FrameworkSpec("torch"), gpu="l4", gpu_count=8)):
        assert "fabric-manager" not in [s.name for s in gpu.gpu_steps(box.facts(), request)]
    # --cuda-toolkit brings the toolkit and cuDNN steps back.
    steps = gpu.gpu_steps(box.facts(), Request(FrameworkSpec("torch"), gpu="h100", cuda_toolkit=True))
    assert [s.name for s in steps if s.needed] == ["nvidia-driver", "cuda-toolkit", "cudnn"]
    assert steps[1].env["CLOUDTRAIN_CUDA_PACKAGE"] == "cuda-toolkit-13-0"


def test_dl_image_driver_550_is_kept_for_torchs_cuda_12_wheels_and_verifies(tmp_path: Path) -> None:
    """Item 5: a driver the image brought that meets the wheel's own floor (minor version
    compatibility: 525.60.13 for CUDA 12.x) is kept, and torch's CUDA 12 build is planned."""
    box = Sandbox(tmp_path, gpu={"name": "Tesla T4", "memory_mb": 15360, "cc": "7.5"}, loaded="550.90.07")
    request = Request(FrameworkSpec("torch"), gpu="t4")
    steps = gpu.gpu_steps(box.facts(), request) + [gpu.verify_step(box.facts(), request)]
    assert [s.plan_line() for s in steps[:3]] == [
        "nvidia-driver: kept: driver 550.90.07 already loaded (CUDA 12.x wheels need >= 525.60.13: NVIDIA minor version compatibility)",
        "cuda-toolkit: not needed: the torch==2.14.1 cu126 wheels bring CUDA 12.6 and cuDNN; --cuda-toolkit installs a system toolkit",
        "cudnn: not needed: the torch==2.14.1 cu126 wheels bring CUDA 12.6 and cuDNN; --cuda-toolkit installs a system cuDNN",
    ]
    install = gpu.framework_install(box.facts(), request)
    assert install.requirements == ("torch==2.14.1",) and install.index_url == "https://download.pytorch.org/whl/cu126"
    box.fake_torch = {"version": "2.14.1+cu126", "cuda": "12.6"}
    ran = box.apply(steps)
    assert [(r.step, r.returncode) for r in ran] == [("verify", 0)], ran[-1].output
    assert box.commands("apt-get") == [] and box.load()["reboots"] == 0
    assert gpu.parse_verify(ran[0].output)["driver"] == "550.90.07"
