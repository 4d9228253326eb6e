"""The compatibility resolver: every catalog GPU x framework x Ubuntu LTS, every refusal, and the CLI.

Expected stacks below are written from the policy (R580 LTS driver when it suffices, open
modules from Turing on, V100 capped at CUDA 12 and torch cu126), not read back from the code;
the invariant checks hold for every answer the resolver gives, asked or defaulted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloudtrain.compat import Gpu, Node, identify, resolve, tables, versions
from cloudtrain.errors import BadInput
from cloudtrain.spec import FrameworkSpec

GPUS = ["t4", "l4", "a10g", "a10", "v100", "a100", "a100-80gb", "h100", "l40s"]
FRAMEWORKS = ["torch", "tensorflow", "jax"]
OSES = ["ubuntu-22.04", "ubuntu-24.04"]
CC = {"t4": "7.5", "l4": "8.9", "a10g": "8.6", "a10": "8.6", "v100": "7.0", "a100": "8.0", "a100-80gb": "8.0", "h100": "9.0", "l40s": "8.9"}

# (framework, is V100) -> (cuda, variant) the policy picks on a bare OS.
DEFAULTS = {
    ("torch", False): ("13.0", "cu130"),
    ("torch", True): ("12.6", "cu126"),
    ("tensorflow", False): ("12.5", "and-cuda"),
    ("tensorflow", True): ("12.5", "and-cuda"),
    ("jax", False): ("13.0", "cuda13"),
    ("jax", True): ("12.9", "cuda12"),
}


def assert_consistent(res, gpu: str, fw: str, os: str) -> None:
    """What must hold between the parts of any stack the resolver returns."""
    cc = CC[gpu]
    info = tables.cuda(res.cuda)
    assert info is not None
    assert versions.at_least(cc, info.min_cc), "GPU older than the toolkit supports"
    if res.cuda_source == "install":
        assert os in info.os and res.cuda_package == "cuda-toolkit-" + res.cuda.replace(".", "-")
    assert res.driver_min == info.min_driver
    if res.driver_source == "install":
        branch = next(b for b in tables.branches() if b.name == res.driver)
        assert versions.at_least(branch.max_cuda, res.cuda), "driver branch too old for the toolkit"
        if int(res.driver) <= 580:  # the branch is in the package name
            assert res.driver_package == (f"nvidia-open-{res.driver}" if res.kernel_modules == "open" else f"cuda-drivers-{res.driver}")
            assert res.driver_pin_package is None
        else:  # R590+: unbranched names, the branch chosen by a pinning package
            assert res.driver_package == ("nvidia-open" if res.kernel_modules == "open" else "cuda-drivers")
            assert res.driver_pin_package == f"nvidia-driver-pinning-{res.driver}"
    else:
        assert versions.at_least(res.driver, info.min_driver), "kept a driver too old for the toolkit"
    assert res.kernel_modules == ("open" if versions.at_least(cc, "7.5") else "proprietary")
    if gpu == "v100" and res.driver_source == "install":
        assert int(res.driver) <= 580, "Volta support ends with R580"
    assert res.cudnn_package in (None, f"cudnn9-cuda-{versions.major(res.cuda)}")
    name, _, version = res.framework.partition("==")
    assert name == fw and version
    req, index = res.install["requirement"], res.install["index_url"]
    assert versions.major(res.framework_cuda) == versions.major(res.cuda)
    assert versions.at_least(res.cuda, res.framework_cuda), "wheel CUDA newer than the toolkit"
    if fw == "torch":
        assert req == f"torch=={version}" and index == f"https://download.pytorch.org/whl/{res.framework_variant}"
        lo, hi = tables.load("frameworks")["torch"]["arch"][res.framework_variant]
        assert versions.at_least(cc, lo) and versions.at_least(hi, cc), "torch wheel lacks this GPU's arch"
    elif fw == "tensorflow":
        assert req == f"tensorflow[and-cuda]=={version}" and index is None
    else:
        assert req == f"jax[cuda{versions.major(res.cuda)}]=={version}" and index is None


@pytest.mark.parametrize("os", OSES)
@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("gpu", GPUS)
def test_bare_os_default_stack(gpu: str, fw: str, os: str) -> None:
    res = resolve(gpu, os, fw)
    assert_consistent(res, gpu, fw, os)
    cuda, variant = DEFAULTS[(fw, gpu == "v100")]
    assert (res.cuda, res.framework_variant) == (cuda, variant)
    assert res.driver == "580" and res.driver_source == "install"  # the LTS branch covers every default
    assert res.repo == {"ubuntu-22.04": "ubuntu2204", "ubuntu-24.04": "ubuntu2404"}[os]
    assert res.compute_cap == CC[gpu]


@pytest.mark.parametrize("os", OSES)
@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("gpu", GPUS)
def test_every_asked_cuda_resolves_consistently_or_is_refused_with_a_working_way_out(gpu: str, fw: str, os: str) -> None:
    outcomes = {}
    for cuda in tables.cuda_versions():
        try:
            res = resolve(gpu, os, fw, cuda)
        except BadInput as e:
            outcomes[cuda] = "refused"
            assert e.exit_code == 2 and e.hint and "\n" not in e.line()
            # The reason names the first rule broken, checked here against the raw tables.
            info = tables.load("cuda")["versions"][cuda]
            if not versions.at_least(CC[gpu], info["min_cc"]):
                assert f"not supported by CUDA {cuda}" in e.message
            elif os not in info["os"]:
                assert f"CUDA {cuda} has no packages for {os}" in e.message
            else:
                assert f"no wheel for CUDA {cuda}" in e.message or "don't support" in e.message
            # The suggested --cuda really works.
            if e.hint.startswith("use --cuda "):
                assert_consistent(resolve(gpu, os, fw, e.hint.split()[-1]), gpu, fw, os)
            continue
        outcomes[cuda] = "ok"
        assert res.cuda == cuda
        assert_consistent(res, gpu, fw, os)
    assert "ok" in outcomes.values() and "refused" in outcomes.values()


@pytest.mark.parametrize("gpu", GPUS)
def test_cuda_13_is_refused_exactly_for_volta(gpu: str) -> None:
    if gpu == "v100":
        with pytest.raises(BadInput) as e:
            resolve(gpu, "ubuntu-24.04", "torch", "13.0")
        assert e.value.line() == (
            "V100 (compute capability 7.0) is not supported by CUDA 13.0, which needs 7.5 or newer. Use --cuda 12.6"
        )
    else:
        assert resolve(gpu, "ubuntu-24.04", "torch", "13.0").framework_variant == "cu130"


@pytest.mark.parametrize(
    "args, reason, hint",
    [
        (("b200", "ubuntu-22.04", "torch"), "unknown GPU 'b200'", "t4, l4, a10g"),
        (("t4", "centos-9", "torch"), "unsupported OS 'centos-9'", "ubuntu-22.04"),
        (("t4", "ubuntu-22.04", "torch", "11.8"), "CUDA 11.8 is not one cloudtrain knows", "12.0, 12.1"),
        (("t4", "ubuntu-22.04", "torch==1.13.1"), "torch 1.13.1 is not in cloudtrain's compatibility table", "torch==2.14.1"),
        (("v100", "ubuntu-22.04", "jax", "13.2"), "V100 (compute capability 7.0) is not supported by CUDA 13.2", "use --cuda 12.9"),
        (("t4", "ubuntu-24.04", "torch", "12.4"), "CUDA 12.4 has no packages for ubuntu-24.04", "use --cuda 13.0"),
        (("t4", "ubuntu-20.04", "jax", "13.0"), "CUDA 13.0 has no packages for ubuntu-20.04", "use --cuda 12.9"),
        (("t4", "ubuntu-22.04", "tensorflow", "13.0"), "tensorflow 2.21.0 has no wheel for CUDA 13.0", "use --cuda 12.5"),
        (("a10g", "ubuntu-22.04", "torch", "12.4"), "torch 2.14.1 has no wheel for CUDA 12.4", "use --cuda 13.0"),
        (("l4", "ubuntu-22.04", "tensorflow==2.21.0", "12.4"), "tensorflow 2.21.0 has no wheel for CUDA 12.4", "use --cuda 12.5"),
    ],
)
def test_refusals_say_why_and_what_works(args: tuple, reason: str, hint: str) -> None:
    with pytest.raises(BadInput) as e:
        resolve(*args)
    assert e.value.exit_code == 2
    assert reason in e.value.message
    assert hint in (e.value.hint or "")


def test_wheels_without_the_gpus_architecture_are_refused() -> None:
    # A Blackwell part outside the catalog, as nvidia-smi would report it: torch 2.6's
    # stable CUDA builds stop at compute capability 9.0.
    b200 = identify("NVIDIA B200", 183359, "10.0")
    assert b200 == Gpu("NVIDIA B200", "10.0")
    with pytest.raises(BadInput) as e:
        resolve(b200, "ubuntu-22.04", "torch==2.6.0", "12.4")
    assert "don't support NVIDIA B200 (compute capability 10.0)" in e.value.message
    assert e.value.hint == "use --framework torch==2.14.1 --cuda 13.0"  # 13.x builds reach 12.0
    assert resolve(b200, "ubuntu-22.04", "torch==2.14.1", "13.0").framework_variant == "cu130"


def test_dl_image_keeps_driver_and_cuda_and_pairs_a_wheel_with_them() -> None:
    node = Node(driver="580.95.05", cuda_toolkits=("12.4", "12.9"), cudnn="9.10.2")
    res = resolve("t4", "ubuntu-22.04", "torch", node=node)
    assert (res.driver, res.driver_source, res.driver_package) == ("580.95.05", "preinstalled", None)
    assert (res.cuda, res.cuda_source, res.cuda_package) == ("12.9", "preinstalled", None)
    assert (res.cudnn, res.cudnn_source, res.cudnn_package) == ("9.10.2", "preinstalled", None)
    assert res.framework_variant == "cu126"  # the newest 12.x torch 2.14 wheel; 12.9 toolkit kept
    assert_consistent(res, "t4", "torch", "ubuntu-22.04")


def test_dl_image_framework_reused_only_when_it_is_a_matching_cuda_build() -> None:
    dl = dict(driver="580.95.05", cuda_toolkits=("12.9",))
    res = resolve("l4", "ubuntu-24.04", "torch", node=Node(**dl, frameworks={"torch": "2.9.0+cu129"}))
    assert res.install["reuse_preinstalled"] and res.framework == "torch==2.9.0" and res.framework_variant == "cu129"
    # A CPU build, an untagged build, or another version than pinned is not reused.
    for found, asked in (("2.9.0+cpu", "torch"), ("2.9.0", "torch"), ("2.9.0+cu129", "torch==2.14.1")):
        res = resolve("l4", "ubuntu-24.04", asked, node=Node(**dl, frameworks={"torch": found}))
        assert not res.install["reuse_preinstalled"] and res.framework == "torch==2.14.1"
    res = resolve("l4", "ubuntu-24.04", "tensorflow", node=Node(**dl, frameworks={"tensorflow": "2.20.0"}))
    assert res.install["reuse_preinstalled"] and res.install["requirement"] == "tensorflow[and-cuda]==2.20.0"


def test_preinstalled_driver_too_old_is_refused_never_replaced() -> None:
    old = Node(driver="535.183.01")
    with pytest.raises(BadInput) as e:
        resolve("t4", "ubuntu-22.04", "torch", "12.9", node=old)
    assert "driver 535.183.01 is too old for CUDA 12.9, which needs 575.51.03 or newer" in e.value.message
    assert e.value.hint == "use --framework torch==2.5.1 --cuda 12.1"  # cu121 runs on 535
    with pytest.raises(BadInput) as e:
        resolve("t4", "ubuntu-22.04", "torch", node=old)
    assert "too old for every CUDA torch 2.14.1 pairs with (the oldest, 12.6, needs 560.28.03" in e.value.message
    res = resolve("t4", "ubuntu-22.04", "torch==2.5.1", node=old)
    assert res.driver_source == "preinstalled" and res.cuda == "12.1" and res.framework_variant == "cu121"
    with pytest.raises(BadInput) as e:
        resolve("t4", "ubuntu-22.04", "jax", node=Node(driver="470.256.02"))
    assert "newer driver" in (e.value.hint or "")


def test_framework_none_still_gets_driver_and_toolkit() -> None:
    assert (resolve("v100", "ubuntu-22.04", "none").cuda, resolve("t4", "ubuntu-22.04", "none").cuda) == ("12.9", "13.0")
    assert resolve("t4", "ubuntu-22.04", "none").framework is None


@pytest.mark.parametrize(
    "smi, mem, key",
    [
        ("Tesla T4", 15360, "t4"),
        ("Tesla V100-SXM2-16GB", 16384, "v100"),
        ("NVIDIA A100-SXM4-40GB", 40960, "a100"),
        ("NVIDIA A100-SXM4-80GB", 81920, "a100-80gb"),
        ("NVIDIA A100 80GB PCIe", None, "a100-80gb"),
        ("NVIDIA A10G", 22888, "a10g"),
        ("NVIDIA A10", 24564, "a10"),
        ("NVIDIA L4", 22888, "l4"),
        ("NVIDIA L40S", 45776, "l40s"),
        ("NVIDIA H100 80GB HBM3", 81559, "h100"),
    ],
)
def test_identify_maps_nvidia_smi_names_to_the_catalog(smi: str, mem: int | None, key: str) -> None:
    found = identify(smi, mem)
    assert found is not None and found.key == key and found.cc == CC[key]


def test_tables_carry_sources() -> None:
    for name in ("gpus", "cuda", "drivers", "frameworks", "os"):
        data = tables.load(name)
        assert data["_sources"] and all(isinstance(s, str) and len(s) > 20 for s in data["_sources"])


# --- the CLI -------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("cloudtrain", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-c", "import sys; from cloudtrain.cli import main; main(sys.argv[1:])"]
    return subprocess.run([*cmd, "compat", *args], capture_output=True, text=True, timeout=60)


def test_cli_json_has_the_promised_keys() -> None:
    out = _cli("--gpu", "v100", "--os", "ubuntu-24.04", "--framework", "torch", "--cuda", "12.6", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["driver"] == "580" and data["kernel_modules"] == "proprietary" and data["cuda"] == "12.6"
    assert data["cudnn"] == "9" and data["framework"] == "torch==2.14.1"
    assert data["install"] == {"requirement": "torch==2.14.1", "index_url": "https://download.pytorch.org/whl/cu126", "reuse_preinstalled": False}


def test_cli_refusal_is_one_line_and_exit_2() -> None:
    out = _cli("--gpu", "v100", "--os", "ubuntu-24.04", "--framework", "torch", "--cuda", "13.0")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "cloudtrain: error: V100 (compute capability 7.0) is not supported by CUDA 13.0, which needs 7.5 or newer. Use --cuda 12.6"
    ]
    out = _cli("--gpu", "t4", "--framework", "pytorch")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


def test_cli_text_and_help() -> None:
    out = _cli("--gpu", "t4", "--os", "ubuntu-22.04", "--framework", "jax", "--driver", "580.95.05")
    assert out.returncode == 0, out.stderr
    assert "580.95.05 (already on the node" in out.stdout and "jax[cuda13]==0.10.2" in out.stdout
    helped = _cli("--help")
    assert helped.returncode == 0 and "Example: cloudtrain compat --gpu v100" in helped.stdout


def test_framework_spec_objects_are_accepted() -> None:
    assert resolve("t4", "ubuntu-22.04", FrameworkSpec("jax", "0.7.2")).framework_variant == "cuda12"
