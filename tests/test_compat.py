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

GPUS = ["t4", "l4", "a10g", "a10", "v100", "a100", "a100-80gb", "h100", "h200", "l40s"]
FRAMEWORKS = ["torch", "tensorflow", "jax"]
OSES = ["ubuntu-22.04", "ubuntu-24.04"]
CC = {"t4": "7.5", "l4": "8.9", "a10g": "8.6", "a10": "8.6", "v100": "7.0", "a100": "8.0", "a100-80gb": "8.0", "h100": "9.0", "h200": "9.0", "l40s": "8.9"}
PY = {"ubuntu-22.04": "3.10", "ubuntu-24.04": "3.12"}  # the OSes' python3 (packages.ubuntu.com)
MINOR = {"12": "525.60.13", "13": "580.65.06"}  # NVIDIA minor version compatibility floors

# (framework, OS, is V100) -> (version, cuda, variant) the policy picks on a bare OS: the newest
# release with wheels for the OS's Python (PyPI), the CUDA the LTS branch R580 shipped with
# (13.0) first, V100 on CUDA 12 (CUDA 13 drops Volta; torch 2.15 has only a cu132 build).
DEFAULTS = {
    ("torch", "ubuntu-22.04", False): ("2.14.1", "13.0", "cu130"),  # 2.15 needs Python >= 3.11
    ("torch", "ubuntu-22.04", True): ("2.14.1", "12.6", "cu126"),
    ("torch", "ubuntu-24.04", False): ("2.15.0", "13.2", "cu132"),
    ("torch", "ubuntu-24.04", True): ("2.14.1", "12.6", "cu126"),
    ("tensorflow", "ubuntu-22.04", False): ("2.21.0", "12.5", "and-cuda"),
    ("tensorflow", "ubuntu-22.04", True): ("2.21.0", "12.5", "and-cuda"),
    ("tensorflow", "ubuntu-24.04", False): ("2.21.0", "12.5", "and-cuda"),
    ("tensorflow", "ubuntu-24.04", True): ("2.21.0", "12.5", "and-cuda"),
    ("jax", "ubuntu-22.04", False): ("0.6.2", "12.9", "cuda12"),  # 0.7+ needs Python >= 3.11
    ("jax", "ubuntu-22.04", True): ("0.6.2", "12.9", "cuda12"),
    ("jax", "ubuntu-24.04", False): ("0.12.0.1", "13.0", "cuda13"),
    ("jax", "ubuntu-24.04", True): ("0.12.0.1", "12.9", "cuda12"),
}


def assert_consistent(res, gpu: str, fw: str, os: str) -> None:
    """What must hold between the parts of any stack the resolver returns."""
    cc = CC[gpu]
    info = tables.cuda(res.cuda)
    assert info is not None
    assert versions.at_least(cc, info.min_cc), "GPU older than the CUDA supports"
    if res.system_toolkit:
        assert res.driver_min == info.min_driver, "a system toolkit needs its own launch driver"
        if res.cuda_source == "install":
            assert os in info.os and res.cuda_package == "cuda-toolkit-" + res.cuda.replace(".", "-")
        assert res.cudnn_package in (None, f"cudnn9-cuda-{versions.major(res.cuda)}")
    else:
        assert res.driver_min == MINOR[versions.major(res.cuda)], "wheels need only the minor-version floor"
        assert (res.cuda_source, res.cuda_package, res.cudnn_source, res.cudnn_package) == ("wheel", None, "wheel", None)
    if res.driver_source == "install":
        branch = next(b for b in tables.branches() if b.name == res.driver)
        assert branch.installable
        if res.system_toolkit:
            assert versions.at_least(branch.max_cuda, res.cuda), "driver branch too old for the toolkit"
        else:
            assert versions.major(branch.max_cuda) >= versions.major(res.cuda)
        if int(res.driver) <= 580:  # the branch is in the package name
            assert res.driver_package == (f"nvidia-open-{res.driver}" if res.kernel_modules == "open" else f"cuda-drivers-{res.driver}")
            assert res.driver_pin_package is None
        else:  # R590+: unbranched names, the branch chosen by a pinning package
            assert res.driver_package == ("nvidia-open" if res.kernel_modules == "open" else "cuda-drivers")
            assert res.driver_pin_package == f"nvidia-driver-pinning-{res.driver}"
    else:
        assert versions.at_least(res.driver, res.driver_min), "kept a driver too old for the stack"
    assert res.kernel_modules == ("open" if versions.at_least(cc, "7.5") else "proprietary")
    if gpu == "v100" and res.driver_source == "install":
        assert int(res.driver) <= 580, "Volta support ends with R580"
    name, _, version = res.framework.partition("==")
    assert name == fw and version
    # The release has wheels for the Python planned for (PyPI's data, read here raw).
    row = tables.load("python")[fw]["releases"][version]
    assert versions.at_least(res.python, row["python_min"]) and versions.at_least(row["python_max"], res.python)
    req, index = res.install["requirement"], res.install["index_url"]
    assert versions.major(res.framework_cuda) == versions.major(res.cuda)
    assert versions.at_least(res.cuda, res.framework_cuda), "wheel CUDA newer than the toolkit"
    if fw == "torch":
        pypi = tables.load("frameworks")["torch"]["releases"][versions.series(version)].get("pypi_default")
        expected_index = None if pypi == res.framework_variant else f"https://download.pytorch.org/whl/{res.framework_variant}"
        assert req == f"torch=={version}" and index == expected_index
        lo, hi = tables.load("frameworks")["torch"]["arch"][res.framework_variant]
        assert versions.at_least(cc, lo) and versions.at_least(hi, cc), "torch wheel lacks this GPU's arch"
    elif fw == "tensorflow":
        assert req == f"tensorflow[and-cuda]=={version}" and index is None
    else:
        assert req == f"jax[cuda{versions.major(res.cuda)}]=={version}" and index is None


@pytest.mark.parametrize("toolkit", [False, True])
@pytest.mark.parametrize("os", OSES)
@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("gpu", GPUS)
def test_bare_os_default_stack(gpu: str, fw: str, os: str, toolkit: bool) -> None:
    res = resolve(gpu, os, fw, cuda_toolkit=toolkit)
    assert_consistent(res, gpu, fw, os)
    version, cuda, variant = DEFAULTS[(fw, os, gpu == "v100")]
    if toolkit and (fw, os, gpu != "v100") == ("torch", "ubuntu-24.04", True):
        # A system toolkit 13.2 needs R595: still the same wheel, a newer driver branch.
        assert res.driver == "595" and res.driver_pin_package == "nvidia-driver-pinning-595"
    else:
        assert res.driver == "580", "the LTS branch covers every default"
    assert (res.framework, res.cuda, res.framework_variant) == (f"{fw}=={version}", cuda, variant)
    assert res.driver_source == "install" and res.system_toolkit is toolkit
    assert (res.python, res.python_source) == (PY[os], "os default")
    assert res.repo == {"ubuntu-22.04": "ubuntu2204", "ubuntu-24.04": "ubuntu2404"}[os]
    assert res.compute_cap == CC[gpu]
    assert not res.fabric_manager  # one GPU


@pytest.mark.parametrize("toolkit", [False, True])
@pytest.mark.parametrize("os", OSES)
@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("gpu", GPUS)
def test_every_asked_cuda_resolves_consistently_or_is_refused_with_a_working_way_out(gpu: str, fw: str, os: str, toolkit: bool) -> None:
    outcomes = {}
    for cuda in tables.cuda_versions():
        try:
            res = resolve(gpu, os, fw, cuda, cuda_toolkit=toolkit)
        except BadInput as e:
            outcomes[cuda] = "refused"
            assert e.exit_code == 2 and e.hint and "\n" not in e.line()
            # The reason names the first rule broken, checked here against the raw tables.
            info = tables.load("cuda")["versions"][cuda]
            if not versions.at_least(CC[gpu], info["min_cc"]):
                assert f"not supported by CUDA {cuda}" in e.message
            elif toolkit and os not in info["os"]:
                assert f"CUDA {cuda} has no packages for {os}" in e.message
            else:
                assert f"no wheel for CUDA {cuda}" in e.message or "don't support" in e.message
            # The suggested --cuda really works.
            if e.hint.startswith("use --cuda "):
                assert_consistent(resolve(gpu, os, fw, e.hint.split()[-1], cuda_toolkit=toolkit), gpu, fw, os)
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
    "args, kwargs, reason, hint",
    [
        (("b200", "ubuntu-22.04", "torch"), {}, "unknown GPU 'b200'", "t4, l4, a10g"),
        (("t4", "centos-9", "torch"), {}, "unsupported OS 'centos-9'", "ubuntu-22.04"),
        (("t4", "ubuntu-22.04", "torch", "11.8"), {}, "CUDA 11.8 is not one cloudtrain knows", "12.0, 12.1"),
        (("t4", "ubuntu-22.04", "torch==1.13.1"), {}, "torch 1.13.1 is not in cloudtrain's compatibility table", "torch==2.15.0"),
        (("v100", "ubuntu-22.04", "jax", "13.2"), {}, "V100 (compute capability 7.0) is not supported by CUDA 13.2", "use --cuda 12.9"),
        (("t4", "ubuntu-24.04", "torch", "12.4"), {"cuda_toolkit": True}, "CUDA 12.4 has no packages for ubuntu-24.04", "use --cuda 13.2"),
        (("t4", "ubuntu-20.04", "jax", "13.0"), {"cuda_toolkit": True, "python": "3.11"}, "CUDA 13.0 has no packages for ubuntu-20.04", "use --cuda 12.9"),
        (("t4", "ubuntu-22.04", "tensorflow", "13.0"), {}, "tensorflow 2.21.0 has no wheel for CUDA 13.0", "use --cuda 12.5"),
        (("l4", "ubuntu-22.04", "tensorflow==2.21.0", "12.4"), {}, "tensorflow 2.21.0 has no wheel for CUDA 12.4", "use --cuda 12.5"),
        # Python: a pin the node's Python cannot run is refused with the newest that can.
        (("t4", "ubuntu-22.04", "jax==0.10.2"), {}, "jax 0.10.2 has wheels for Python 3.11-3.14, not for the node's Python 3.10",
         "use --framework jax==0.6.2, the newest for Python 3.10"),
        (("t4", "ubuntu-22.04", "torch==2.15.0"), {}, "torch 2.15.0 has wheels for Python 3.11-3.15, not for the node's Python 3.10",
         "use --framework torch==2.14.1, the newest for Python 3.10"),
        (("t4", "ubuntu-24.04", "jax==0.5.3"), {"python": "3.14"}, "jax 0.5.3 has wheels for Python 3.10-3.13, not for the node's Python 3.14",
         "use --framework jax==0.12.0.1, the newest for Python 3.14"),
        (("t4", "ubuntu-24.04", "torch"), {"python": "3.16"}, "no torch release in cloudtrain's table has wheels for Python 3.16",
         "ubuntu-22.04: 3.10, ubuntu-24.04: 3.12"),
        (("t4", "ubuntu-22.04", "tensorflow"), {"python": "3.14"}, "no tensorflow release in cloudtrain's table has wheels for Python 3.14",
         "use an OS whose Python it supports"),
        (("t4", "ubuntu-22.04", "torch"), {"python": "3.x"}, "invalid Python version '3.x'", "--python 3.12"),
        # A kept driver below the minor-version floor of every wheel torch has.
        (("t4", "ubuntu-22.04", "torch"), {"node": Node(driver="525.60.12")},
         "driver 525.60.12 is too old for every CUDA torch 2.14.1 pairs with (the oldest, 12.6, needs 525.60.13", "newer driver"),
        # A system toolkit needs its launch driver, which a kept 535 does not meet for 12.9.
        (("t4", "ubuntu-22.04", "torch", "12.9"), {"node": Node(driver="535.183.01"), "cuda_toolkit": True},
         "driver 535.183.01 is too old for a CUDA 12.9 system toolkit, which needs 575.51.03 or newer", "use --cuda 12.1"),
    ],
)
def test_refusals_say_why_and_what_works(args: tuple, kwargs: dict, reason: str, hint: str) -> None:
    with pytest.raises(BadInput) as e:
        resolve(*args, **kwargs)
    assert e.value.exit_code == 2
    assert reason in e.value.message
    assert hint in (e.value.hint or "")


# --- Python floors (PyPI requires_python and cp tags, data/python.json) ---------------------


@pytest.mark.parametrize(
    "fw, python, version",
    [
        ("jax", "3.10", "0.6.2"),  # 0.7.0 raised the floor to 3.11
        ("jax", "3.11", "0.10.2"),  # 0.11.0 raised it to 3.12
        ("jax", "3.12", "0.12.0.1"),
        ("jax", "3.15", "0.12.0.1"),  # cp315 wheels from 0.11.1
        ("torch", "3.9", "2.8.0"),  # 2.9.0 needs 3.10
        ("torch", "3.10", "2.14.1"),  # 2.15.0 needs 3.11
        ("torch", "3.11", "2.15.0"),
        ("torch", "3.15", "2.15.0"),
        ("tensorflow", "3.9", "2.20.0"),  # 2.21.0 needs 3.10
        ("tensorflow", "3.13", "2.21.0"),
    ],
)
def test_the_newest_release_with_wheels_for_the_python_is_chosen(fw: str, python: str, version: str) -> None:
    res = resolve("a100", "ubuntu-22.04", fw, python=python)
    assert res.framework == f"{fw}=={version}" and (res.python, res.python_source) == (python, "asked")
    # Against PyPI's raw data: this release has wheels for it, every newer row's latest does not.
    releases = tables.load("python")[fw]["releases"]
    newer = [r.latest for r in tables.releases(fw) if versions.key(r.series) > versions.key(versions.series(version))]
    for v in newer:
        row = releases[v]
        assert not (versions.at_least(python, row["python_min"]) and versions.at_least(row["python_max"], python))


def test_the_probes_python_wins_over_the_os_default() -> None:
    res = resolve("t4", "ubuntu-22.04", "jax", node=Node(python="3.12.3"))
    assert res.framework == "jax==0.12.0.1" and (res.python, res.python_source) == ("3.12", "node")
    assert any("jax 0.7.2 and newer need Python >= 3.11" in n for n in resolve("t4", "ubuntu-22.04", "jax").notes)


def test_python_extract_is_dated_and_covers_every_table_row() -> None:
    data = tables.load("python")
    assert data["read"] == "2026-12-01" and all("pypi.org/pypi/" in s for s in data["_sources"])
    for fw in FRAMEWORKS:
        for row in tables.releases(fw):
            assert row.latest in data[fw]["releases"], f"{fw} {row.latest} has no Python range"


# --- minor version compatibility: a kept driver ----------------------------------------------


@pytest.mark.parametrize(
    "driver, fw, toolkit, expect",
    [
        ("550.90.07", "torch", False, ("torch==2.14.1", "cu126")),  # a DL image's driver, kept
        ("525.60.13", "torch", False, ("torch==2.14.1", "cu126")),  # exactly the 12.x floor
        ("580.65.05", "torch", False, ("torch==2.14.1", "cu126")),  # just under the 13.x floor
        ("580.65.06", "torch", False, ("torch==2.14.1", "cu130")),
        ("535.183.01", "tensorflow", False, ("tensorflow==2.21.0", "and-cuda")),  # CUDA 12.5 wheels on 535
        ("535.183.01", "jax", False, ("jax==0.6.2", "cuda12")),
        ("555.42.02", "tensorflow", True, ("tensorflow==2.21.0", "and-cuda")),  # toolkit 12.5's launch driver
        ("550.90.07", "torch", True, ("torch==2.6.0", "cu124")),  # toolkit 12.6 needs 560: an older torch with 12.4
    ],
)
def test_a_kept_driver_needs_only_what_the_wheels_need(driver: str, fw: str, toolkit: bool, expect: tuple) -> None:
    res = resolve("t4", "ubuntu-22.04", fw, node=Node(driver=driver), cuda_toolkit=toolkit)
    assert (res.framework, res.framework_variant) == expect
    assert (res.driver, res.driver_source, res.driver_package) == (driver, "preinstalled", None)
    assert_consistent(res, "t4", fw, "ubuntu-22.04")


def test_a_kept_driver_is_never_replaced_by_a_newer_branch() -> None:
    with pytest.raises(BadInput) as e:
        resolve("t4", "ubuntu-22.04", "torch", "13.0", node=Node(driver="550.90.07"))
    assert "driver 550.90.07 is too old for CUDA 13.x wheels, which need 580.65.06 or newer" in e.value.message
    with pytest.raises(BadInput) as e:
        resolve("t4", "ubuntu-22.04", "jax", node=Node(driver="470.256.02"))
    assert "newer driver" in (e.value.hint or "")


# --- Fabric Manager, driver tables, TF arch -------------------------------------------------


@pytest.mark.parametrize(
    "gpu, count, needed",
    [("h100", 8, True), ("a100", 8, True), ("a100-80gb", 8, True), ("h200", 8, True),
     ("h100", 1, False), ("a100", 4, False), ("t4", 8, False), ("l4", 8, False), ("l40s", 8, False)],
)
def test_fabric_manager_on_8_gpu_nvswitch_boards_only(gpu: str, count: int, needed: bool) -> None:
    res = resolve(gpu, "ubuntu-22.04", "torch", gpu_count=count)
    assert res.fabric_manager is needed and res.gpu_count == count
    assert res.fabric_manager_package == ("nvidia-fabricmanager-580" if needed else None)
    kept = resolve(gpu, "ubuntu-22.04", "torch", gpu_count=count, node=Node(driver="550.90.07"))
    assert kept.fabric_manager_package == ("nvidia-fabricmanager-550" if needed else None)
    assert kept.driver_branch == "550"


def test_driver_branches_r610_r620() -> None:
    rows = {b.name: b for b in tables.branches()}
    assert not rows["610"].installable and rows["610"].supported_until == "2026-08"
    assert rows["620"].open_only and rows["620"].kind == "LTSB" and rows["620"].supported_until == "2029-09"
    from cloudtrain.compat.stack import branch_for

    v100, t4 = tables.gpu("v100"), tables.gpu("t4")
    assert v100 is not None and t4 is not None
    # R580 still runs every CUDA 13 wheel: no newer branch for a wheel, even 13.2's.
    assert branch_for("13.2", t4, toolkit=False).name == "580"
    assert branch_for("13.2", t4, toolkit=True).name == "595"
    assert branch_for("12.9", v100, toolkit=True).name == "580"


def test_tensorflow_on_h100_says_it_jit_compiles() -> None:
    notes = " ".join(resolve("h100", "ubuntu-22.04", "tensorflow").notes)
    assert "sm_60, sm_70, sm_80, sm_89, compute_90" in notes and "JIT-compiled from PTX" in notes
    assert "JIT" not in " ".join(resolve("a100", "ubuntu-22.04", "tensorflow").notes)


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
    res = resolve("t4", "ubuntu-22.04", "torch", node=node, cuda_toolkit=True)
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
        assert not res.install["reuse_preinstalled"] and res.framework == ("torch==2.15.0" if asked == "torch" else asked)
    res = resolve("l4", "ubuntu-24.04", "tensorflow", node=Node(**dl, frameworks={"tensorflow": "2.20.0"}))
    assert res.install["reuse_preinstalled"] and res.install["requirement"] == "tensorflow[and-cuda]==2.20.0"


def test_framework_none_gets_the_driver_and_a_toolkit_only_when_asked() -> None:
    assert (resolve("v100", "ubuntu-22.04", "none").cuda, resolve("t4", "ubuntu-22.04", "none").cuda) == ("12.9", "13.0")
    bare = resolve("t4", "ubuntu-22.04", "none")
    assert bare.framework is None and bare.driver_package == "nvidia-open-580" and bare.cuda_package is None
    assert resolve("t4", "ubuntu-22.04", "none", cuda_toolkit=True).cuda_package == "cuda-toolkit-13-0"


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
    assert "580.95.05 (already on the node" in out.stdout and "jax[cuda12]==0.6.2" in out.stdout  # Python 3.10
    helped = _cli("--help")
    assert helped.returncode == 0 and "Example: cloudtrain compat --gpu v100" in helped.stdout


def test_framework_spec_objects_are_accepted() -> None:
    assert resolve("t4", "ubuntu-22.04", FrameworkSpec("jax", "0.7.2"), python="3.11").framework_variant == "cuda12"


def test_cli_gpu_count_python_and_toolkit_in_json_and_text() -> None:
    out = _cli("--gpu", "h100:8", "--python", "3.10", "--framework", "jax", "--cuda-toolkit", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["python"], data["python_source"], data["system_toolkit"]) == ("3.10", "asked", True)
    assert (data["gpu_count"], data["fabric_manager"], data["fabric_manager_package"]) == (8, True, "nvidia-fabricmanager-580")
    assert data["framework"] == "jax==0.6.2" and data["cuda_package"] == "cuda-toolkit-12-9"
    bare = json.loads(_cli("--gpu", "t4", "--os", "ubuntu-24.04", "--json").stdout)
    assert (bare["python"], bare["python_source"], bare["system_toolkit"], bare["cuda_package"]) == ("3.12", "os default", False, None)
    text = _cli("--gpu", "h100:8").stdout
    assert "fabric manager  nvidia-fabricmanager-580 (NVSwitch)" in text and "none on the system" in text


@pytest.mark.parametrize("args", [("--gpu", "h100:0"), ("--gpu", "t4", "--python", "three"), ("--gpu", "t4", "--framework", "jax==0.11.2")])
def test_cli_bad_gpu_count_python_or_pin_is_one_line_exit_2(args: tuple) -> None:
    out = _cli(*args)
    assert out.returncode == 2 and out.stdout == "" and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("cloudtrain: error: ")


def test_cuda_toolkit_flag_is_recorded_by_up_and_accepted_by_bootstrap(cli, home: Path) -> None:
    """--cuda-toolkit travels from `up` into the cluster's spec (so every later bootstrap plans
    the toolkit), and `bootstrap --cuda-toolkit` asks for it on a cluster made without it."""
    up = cli("up", "--provider", "local", "--framework", "none", "--cuda-toolkit")
    try:
        assert up.returncode == 0, up.stderr
        spec = json.loads((home / "clusters/local/cluster.json").read_text())["spec"]
        assert spec["cuda_toolkit"] is True
        # The same name without the flag is another spec: refused, nothing changed.
        again = cli("up", "--provider", "local", "--framework", "none")
        assert again.returncode == 2 and "cuda_toolkit: True -> False" in again.stderr
        plan = cli("bootstrap", "--plan", "--cuda-toolkit")
        assert plan.returncode == 0 and "cuda-toolkit: not needed: no NVIDIA GPU" in plan.stdout, plan.stdout
    finally:
        assert cli("down").returncode == 0


@pytest.mark.parametrize("found", ["proprietary", "open"])
def test_a_kept_driver_reports_the_module_flavour_the_probe_found(found):
    """A Turing T4 would get open modules on a fresh install; a kept driver is whatever is loaded."""
    res = resolve("t4", "ubuntu-22.04", "torch", node=Node(driver="550.90.07", driver_modules=found))
    assert res.driver_source == "preinstalled" and res.kernel_modules == found
    assert resolve("t4", "ubuntu-22.04", "torch").kernel_modules == "open"
