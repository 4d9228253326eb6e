"""From a GPU, an OS, a framework request and what a node already has, to one consistent stack.

The stack is a driver branch with its kernel-module flavour (plus Fabric Manager on NVSwitch
boards), the framework release whose wheels run on the node's Python, and one CUDA wheel
variant of it. The wheels bring their own CUDA runtime and cuDNN, so by default nothing else
from NVIDIA is installed; `cuda_toolkit=True` (--cuda-toolkit) adds a system toolkit and cuDNN
matching the wheel's CUDA, and then the driver must meet that toolkit's launch driver. The
rules each part must meet are in stack.py.

What is on the node and fits is kept (never reinstalled); a driver already there is never
replaced, so a request it cannot serve is refused rather than risking the image's driver.
Without a pin the newest release whose wheels cover the node's Python is chosen (the probe's
python_version, else --python, else the OS's own python3); a pinned release that cannot run
on it is refused with the newest that can. Without --cuda the choice prefers wheel variants of
the CUDA the long-term-support branch (R580) shipped with, then the newest.
An impossible request raises BadInput with the reason and, where one exists, a request that works.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any

from cloudtrain.compat import tables, versions
from cloudtrain.compat.stack import Ask, Node, Refusal, Refused, driver_plan, fit, min_driver
from cloudtrain.compat.tables import Gpu, Release, Variant
from cloudtrain.errors import BadInput
from cloudtrain.spec import FrameworkSpec


@dataclass(frozen=True)
class Resolution:
    gpu: str  # catalog name, or nvidia-smi's name
    compute_cap: str
    os: str  # "ubuntu-24.04"
    python: str | None  # the Python X.Y planned for (None: unknown, not checked)
    python_source: str | None  # "node" | "asked" | "os default"
    driver: str  # branch to install ("580"), or the version kept ("580.95.05")
    driver_branch: str  # "580" either way
    driver_min: str  # the oldest driver this stack accepts
    driver_source: str  # "install" | "preinstalled"
    driver_package: str | None
    driver_pin_package: str | None  # R590+: nvidia-driver-pinning-<branch>, installed first
    kernel_modules: str  # "open" | "proprietary"
    gpu_count: int
    fabric_manager: bool  # NVSwitch board: nvidia-fabricmanager matched to the driver
    fabric_manager_package: str | None
    system_toolkit: bool  # a system CUDA toolkit and cuDNN are installed (--cuda-toolkit)
    cuda: str  # the CUDA X.Y the stack runs: the system toolkit's, else the wheel's
    cuda_source: str  # "wheel" | "install" | "preinstalled"
    cuda_package: str | None
    cudnn: str  # "9" to install, or the version kept
    cudnn_source: str  # "wheel" | "install" | "preinstalled"
    cudnn_package: str | None
    framework: str | None  # pinned: "torch==2.14.1"; None for --framework none
    framework_variant: str | None  # "cu130", "and-cuda", "cuda13"
    framework_cuda: str | None  # the CUDA the wheels bring ("13.0"; "12" for jax[cuda12])
    install: dict[str, Any]  # {"requirement", "index_url", "reuse_preinstalled"}
    repo: str | None  # NVIDIA apt repository ("ubuntu2404")
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["notes"] = list(self.notes)
        return data


def resolve(
    gpu: str | Gpu,
    os: str,
    framework: FrameworkSpec | str = "torch",
    cuda: str | None = None,
    node: Node | None = None,
    *,
    python: str | None = None,
    cuda_toolkit: bool = False,
    gpu_count: int = 1,
) -> Resolution:
    """One consistent stack, or BadInput saying why not and what to ask instead."""
    fw = FrameworkSpec.parse(framework) if isinstance(framework, str) else framework
    the_gpu = _gpu(gpu)
    os_name = _os(os)
    node = node or Node()
    if cuda is not None and tables.cuda(cuda) is None:
        known = ", ".join(tables.cuda_versions())
        raise BadInput(f"CUDA {cuda} is not one cloudtrain knows", f"use --cuda with one of {known}")
    py, source = _python(python, node, os_name)
    ask = Ask(the_gpu, os_name, cuda, node, cuda_toolkit, py, gpu_count, source)
    try:
        return _attempt(fw, ask)
    except Refused as e:
        if e.refusal.kind == "python":
            raise BadInput(e.refusal.reason, e.refusal.hint) from None
        raise BadInput(e.refusal.reason, _way_out(fw, ask) or e.refusal.hint) from None


def _python(asked: str | None, node: Node, os_name: str) -> tuple[str | None, str | None]:
    """The Python X.Y to plan for and where it came from: asked, the node's (probe), the OS's python3."""
    if asked is not None:
        if not re.fullmatch(r"3\.\d{1,2}(\.\d+)?", asked.strip()):
            raise BadInput(f"invalid Python version {asked!r}", "write it as X.Y, e.g. --python 3.12")
        return versions.series(asked.strip()), "asked"
    if node.python:
        return versions.series(node.python), "node"
    found = tables.os_python(os_name)
    return (found, "os default") if found else (None, None)


def _attempt(fw: FrameworkSpec, ask: Ask) -> Resolution:
    reuse = _reusable(fw, ask.node)
    if reuse is not None:
        try:
            return _resolve(fw, reuse, ask)
        except Refused:
            pass  # the preinstalled framework doesn't fit: plan a fresh one instead
    return _resolve(fw, None, ask)


def _way_out(fw: FrameworkSpec, ask: Ask) -> str | None:
    """The nearest request that works: the same framework without --cuda, else another release."""
    if ask.cuda is not None:
        try:
            return f"use --cuda {_attempt(fw, _replace(ask, cuda=None)).cuda}"
        except Refused:
            pass
    if fw.name == "none":
        return None
    for row in reversed(tables.releases(fw.name)):
        if fw.version and row.series == versions.series(fw.version) or not row.runs_on(ask.python):
            continue
        for want in dict.fromkeys([ask.cuda, None]):  # keep the asked CUDA if another release allows it
            try:
                alt = _attempt(FrameworkSpec(fw.name, row.latest), _replace(ask, cuda=want))
            except Refused:
                continue
            return f"use --framework {alt.framework}" + (f" --cuda {alt.cuda}" if ask.cuda else "")
    return None


def _replace(ask: Ask, **changes: Any) -> Ask:
    return replace(ask, **changes)


def _gpu(gpu: str | Gpu) -> Gpu:
    if isinstance(gpu, Gpu):
        return gpu
    found = tables.gpu(gpu)
    if found is None:
        raise BadInput(f"unknown GPU {gpu!r}", f"choose one of {', '.join(tables.gpu_names())}")
    return found


def _os(os: str) -> str:
    name = os.strip().lower().replace(" ", "-")
    if name not in tables.os_names():
        raise BadInput(f"unsupported OS {os!r}", f"choose one of {', '.join(tables.os_names())}")
    return name


def _newest_for(framework: str, python: str | None) -> Release | None:
    return next((r for r in reversed(tables.releases(framework)) if r.runs_on(python)), None)


def _python_refusal(fw: str, reason: str, ask: Ask) -> Refusal:
    newest = _newest_for(fw, ask.python)
    if newest is not None:
        hint = f"use --framework {fw}=={newest.latest}, the newest for Python {ask.python}"
    else:
        newer = [os for os in tables.os_names() if tables.os_python(os) and any(r.runs_on(tables.os_python(os)) for r in tables.releases(fw))]
        hint = f"use an OS whose Python it supports ({', '.join(f'{o}: {tables.os_python(o)}' for o in newer)})" if newer else "pin another framework"
    return Refusal(reason, hint, "python")


def _releases(fw: FrameworkSpec, ask: Ask) -> list[tuple[Release, str]]:
    """(release row, exact version to pin) to try, best first: a pin, else newest first on this Python."""
    rows = tables.releases(fw.name)
    if fw.name == "none":
        return [(rows[0], "")]
    if fw.version is None:
        fitting = [r for r in reversed(rows) if r.runs_on(ask.python)]
        if not fitting:
            raise Refused(_python_refusal(fw.name, f"no {fw.name} release in cloudtrain's table has wheels for Python {ask.python}", ask))
        return [(r, r.latest) for r in fitting]
    found = tables.release(fw.name, versions.series(fw.version))
    if found is None:
        known = ", ".join(r.series for r in rows)
        raise BadInput(
            f"{fw.name} {fw.version} is not in cloudtrain's compatibility table (it knows {known})",
            f"pin a known release, e.g. --framework {fw.name}=={rows[-1].latest}",
        )
    if not found.runs_on(ask.python):
        raise Refused(_python_refusal(
            fw.name, f"{fw.name} {fw.version} has wheels for {found.python_text()}, not for the node's Python {ask.python}", ask))
    return [(found, versions.base(fw.version))]


def _reusable(fw: FrameworkSpec, node: Node) -> tuple[str, str | None] | None:
    """(version, torch variant) of a preinstalled framework worth reusing, else None."""
    found = node.frameworks.get(fw.name) if fw.name != "none" else None
    if not found:
        return None
    if fw.version and versions.base(found) != versions.base(fw.version):
        return None
    if tables.release(fw.name, versions.series(found)) is None:
        return None
    if fw.name == "torch":
        tag = versions.local_tag(found)
        # Only a build we can see is a CUDA build: a "+cpu" or untagged torch would shadow the GPU wheel.
        if not tag or not tag.startswith("cu"):
            return None
        return found, tag
    return found, None


def _resolve(fw: FrameworkSpec, reuse: tuple[str, str | None] | None, ask: Ask) -> Resolution:
    if reuse is not None:
        version, tag = reuse
        release = tables.release(fw.name, versions.series(version))
        assert release is not None
        variants = [v for v in release.variants if tag is None or v.name == tag]
        if not variants and tag:
            variants = [v for v in [tables.torch_variant(tag, experimental=True)] if v is not None]
        version = versions.base(version)
        cuda, variant = fit(release, version, variants, ask)
        return _build(fw, release, version, variant, cuda, ask, True, [])
    newest = tables.releases(fw.name)[-1]
    first: Refused | None = None
    for release, version in _releases(fw, ask):
        try:
            cuda, variant = fit(release, version, list(release.variants), ask)
        except Refused as e:
            first = first or e
            continue
        notes = []
        if not release.runs_on(ask.python) or release.series != newest.series and fw.version is None:
            notes.append(_why_not_newer(fw.name, release, ask, first))
        return _build(fw, release, version, variant, cuda, ask, False, notes)
    assert first is not None
    raise first


def _why_not_newer(name: str, chosen: Release, ask: Ask, refused: Refused | None) -> str:
    newer = [r for r in tables.releases(name) if versions.key(r.series) > versions.key(chosen.series)]
    off_python = [r for r in newer if not r.runs_on(ask.python)]
    if off_python:
        return (f"{name} {off_python[0].latest} and newer need Python >= {off_python[0].python[0]}: "
                f"planned {name} {chosen.latest} for the node's Python {ask.python}")
    reason = refused.refusal.reason if refused else "they do not fit"
    return f"{name} {newer[-1].latest} does not fit ({reason}): planned {name} {chosen.latest}"


def _build(fw: FrameworkSpec, release: Release, version: str, variant: Variant, cuda: str, ask: Ask,
           reused: bool, notes: list[str]) -> Resolution:
    node, gpu = ask.node, ask.gpu
    drv = driver_plan(cuda, ask)
    until = drv.pop("supported_until")
    if until:
        notes.append(until)
    if drv["driver_source"] == "preinstalled":
        why = f"its CUDA {cuda} toolkit's launch driver" if ask.toolkit else (
            f"CUDA {versions.major(cuda)}.x wheels via NVIDIA minor version compatibility")
        notes.append(f"driver {node.driver} kept: {why} needs >= {min_driver(cuda, ask.toolkit)}")
    if drv["fabric_manager"]:
        notes.append(f"{ask.gpu_count}x {gpu.model} sit on NVSwitch: {drv['fabric_manager_package']} "
                     f"(matching driver {drv['driver']}) is installed and nvidia-fabricmanager started")
    info = tables.cuda(cuda)
    assert info is not None
    if ask.toolkit:
        cuda_kept = cuda in node.cuda_toolkits
        cudnn_kept = bool(node.cudnn) and versions.major(node.cudnn or "") == tables.cudnn_major()
        cuda_source, cuda_package = ("preinstalled", None) if cuda_kept else ("install", info.package)
        cudnn, cudnn_source, cudnn_package = ((node.cudnn or "", "preinstalled", None) if cudnn_kept
                                              else (tables.cudnn_major(), "install", tables.cudnn_package(cuda)))
    else:
        cuda_source, cuda_package, cudnn, cudnn_source, cudnn_package = "wheel", None, release.cudnn or tables.cudnn_major(), "wheel", None
        what = f"the {fw.name} wheels bring" if fw.name != "none" else "no framework: a job brings"
        notes.append(f"no system CUDA toolkit or cuDNN: {what} their own CUDA runtime and cuDNN (--cuda-toolkit installs both)")
    if release.cudnn and versions.major(release.cudnn) != tables.cudnn_major() and ask.toolkit:
        notes.append(f"{fw.name} {version} brings its own cuDNN {release.cudnn} through pip")
    if variant.experimental:
        notes.append(f"{variant.name} is an experimental {fw.name} build")
    if fw.name == "tensorflow" and gpu.cc in tables.tf_jit_ccs():
        notes.append(f"tensorflow wheels carry {', '.join(tables.tf_arch_list())}: on {gpu.model} (compute capability "
                     f"{gpu.cc}) every kernel is JIT-compiled from PTX on first use (slow first steps)")
    requirement = variant.requirement(version) if fw.name != "none" else None
    index_url = variant.index_url if fw.name != "none" else None
    if reused:
        notes.append(f"reusing the preinstalled {fw.name} {node.frameworks.get(fw.name)} (venv with --system-site-packages)")
    framework_cuda = variant.cuda if fw.name != "jax" else versions.major(variant.cuda)
    return Resolution(
        gpu=gpu.key or gpu.model,
        compute_cap=gpu.cc,
        os=ask.os,
        python=ask.python,
        python_source=ask.python_source,
        driver_min=min_driver(cuda, ask.toolkit),
        # A kept driver's modules are what the probe found loaded, not what a fresh install would pick.
        kernel_modules=(node.driver_modules if drv["driver_source"] == "preinstalled" and node.driver_modules in ("open", "proprietary")
                        else "open" if gpu.open_modules else "proprietary"),
        gpu_count=ask.gpu_count,
        system_toolkit=ask.toolkit,
        cuda=cuda,
        cuda_source=cuda_source,
        cuda_package=cuda_package,
        cudnn=cudnn,
        cudnn_source=cudnn_source,
        cudnn_package=cudnn_package,
        framework=f"{fw.name}=={version}" if fw.name != "none" else None,
        framework_variant=variant.name if fw.name != "none" else None,
        framework_cuda=framework_cuda if fw.name != "none" else None,
        install={"requirement": requirement, "index_url": index_url, "reuse_preinstalled": reused},
        repo=tables.os_repo(ask.os),
        notes=tuple(notes),
        **drv,
    )


__all__ = ["Node", "Resolution", "resolve"]
