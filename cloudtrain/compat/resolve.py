"""From a GPU, an OS, a framework request and what a node already has, to one consistent stack.

The stack is a driver branch with its kernel-module flavour, a CUDA toolkit, cuDNN and one CUDA
wheel variant of the framework, chosen so that every pair fits:

    GPU CC        >= the toolkit's oldest CC, and inside the wheel variant's CC range
    driver        >= the toolkit's minimum driver (the toolkit's X.Y >= the variant's X.Y, same major)
    driver branch still supports the GPU (Volta ends with R580); open modules only from Turing on
    toolkit       packaged for the OS (unless it is already on the node)

What is on the node and fits is kept (never reinstalled); a driver already there is never
replaced, so a request it cannot serve is refused rather than risking the image's driver.
Without --cuda the choice prefers, in order: toolkits already on the node, stable wheel
variants that the long-term-support driver branch (R580) can run, then the newest.
An impossible request raises BadInput with the reason and, where one exists, a --cuda that works.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cloudtrain.compat import tables, versions
from cloudtrain.compat.tables import Gpu, Release, Variant
from cloudtrain.errors import BadInput
from cloudtrain.spec import FrameworkSpec


@dataclass(frozen=True)
class Node:
    """What a node already has (from the probe's facts); empty for a bare OS or a dry question."""

    driver: str | None = None
    cuda_toolkits: tuple[str, ...] = ()
    cudnn: str | None = None
    frameworks: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolution:
    gpu: str  # catalog name, or nvidia-smi's name
    compute_cap: str
    os: str  # "ubuntu-24.04"
    driver: str  # branch to install ("580"), or the version kept ("580.95.05")
    driver_min: str  # the oldest driver the chosen CUDA accepts
    driver_source: str  # "install" | "preinstalled"
    driver_package: str | None
    driver_pin_package: str | None  # R590+: nvidia-driver-pinning-<branch>, installed first
    kernel_modules: str  # "open" | "proprietary"
    cuda: str  # toolkit "X.Y"
    cuda_source: str
    cuda_package: str | None
    cudnn: str  # "9" to install, or the version kept
    cudnn_source: str
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


@dataclass(frozen=True)
class _Refusal:
    reason: str
    hint: str
    kind: str = ""  # "driver" when the node's own driver is what stands in the way


def resolve(
    gpu: str | Gpu,
    os: str,
    framework: FrameworkSpec | str = "torch",
    cuda: str | None = None,
    node: Node | None = None,
) -> Resolution:
    """One consistent driver/CUDA/cuDNN/wheel set, or BadInput saying why not and what to ask instead."""
    fw = FrameworkSpec.parse(framework) if isinstance(framework, str) else framework
    the_gpu = _gpu(gpu)
    os_name = _os(os)
    node = node or Node()
    if cuda is not None and tables.cuda(cuda) is None:
        known = ", ".join(tables.cuda_versions())
        raise BadInput(f"CUDA {cuda} is not one cloudtrain knows", f"use --cuda with one of {known}")
    try:
        return _attempt(the_gpu, os_name, fw, cuda, node)
    except _Refused as e:
        raise BadInput(e.refusal.reason, _way_out(the_gpu, os_name, fw, cuda, node) or e.refusal.hint) from None


class _Refused(Exception):
    def __init__(self, refusal: _Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


def _attempt(gpu: Gpu, os_name: str, fw: FrameworkSpec, cuda: str | None, node: Node) -> Resolution:
    reuse = _reusable(fw, node)
    if reuse is not None:
        try:
            return _resolve(gpu, os_name, fw, reuse, cuda, node)
        except _Refused:
            pass  # the preinstalled framework doesn't fit: plan a fresh one instead
    return _resolve(gpu, os_name, fw, None, cuda, node)


def _way_out(gpu: Gpu, os_name: str, fw: FrameworkSpec, cuda: str | None, node: Node) -> str | None:
    """The nearest request that works: the same framework without --cuda, else another release."""
    if cuda is not None:
        try:
            return f"use --cuda {_attempt(gpu, os_name, fw, None, node).cuda}"
        except _Refused:
            pass
    if fw.name == "none":
        return None
    for row in reversed(tables.releases(fw.name)):
        if fw.version and row.series == versions.series(fw.version):
            continue
        for want in dict.fromkeys([cuda, None]):  # keep the asked CUDA if another release allows it
            try:
                alt = _attempt(gpu, os_name, FrameworkSpec(fw.name, row.latest), want, node)
            except _Refused:
                continue
            return f"use --framework {alt.framework}" + (f" --cuda {alt.cuda}" if cuda else "")
    return None


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


def _release(fw: FrameworkSpec) -> tuple[Release, str]:
    """The release row and the exact version to pin."""
    rows = tables.releases(fw.name)
    if fw.name == "none":
        return rows[0], ""
    if fw.version is None:
        return rows[-1], rows[-1].latest
    row = tables.release(fw.name, versions.series(fw.version))
    if row is None:
        known = ", ".join(r.series for r in rows)
        raise BadInput(
            f"{fw.name} {fw.version} is not in cloudtrain's compatibility table (it knows {known})",
            f"pin a known release, e.g. --framework {fw.name}=={rows[-1].latest}",
        )
    return row, versions.base(fw.version)


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


def _order(variants: list[Variant]) -> list[Variant]:
    """Variants the LTS driver branch can run first, then the newest CUDA first."""
    lts = tables.branches()[0]
    return sorted(
        variants,
        key=lambda v: (not versions.at_least(lts.max_cuda, v.default_toolkit), tuple(-k for k in versions.key(v.cuda))),
    )


def _pairs_for(variant: Variant, toolkit: str) -> bool:
    """A wheel variant pairs with a toolkit of its major that is at least as new."""
    return versions.major(toolkit) == versions.major(variant.cuda) and versions.at_least(toolkit, variant.cuda)


def _candidates(release: Release, variants: list[Variant], cuda: str | None, node: Node) -> list[tuple[str, list[Variant]]]:
    """(toolkit, variants to try with it) in preference order."""
    present = sorted((t for t in node.cuda_toolkits if tables.cuda(t)), key=versions.key, reverse=True)
    if cuda is not None:
        exact = [v for v in variants if v.cuda == cuda]
        rest = _order([v for v in variants if v not in exact and not v.experimental and _pairs_for(v, cuda)])
        return [(cuda, exact + rest)]
    stable = _order([v for v in variants if not v.experimental]) or variants
    out: list[tuple[str, list[Variant]]] = []
    for v in stable:  # what is on the node first
        out += [(t, [v]) for t in present if _pairs_for(v, t)]
    for v in stable:  # then the variant's own toolkit, then newer ones of its major
        newer = [t for t in tables.cuda_versions() if _pairs_for(v, t) and versions.key(t) > versions.key(v.default_toolkit)]
        out += [(t, [v]) for t in [v.default_toolkit, *newer]]
    return out


def _branch_for(cuda_version: str, gpu: Gpu) -> tables.Branch | None:
    for branch in tables.branches():
        if not versions.at_least(branch.max_cuda, cuda_version):
            continue
        if gpu.last_driver_branch and versions.key(branch.name) > versions.key(gpu.last_driver_branch):
            continue
        return branch
    return None


def _check(gpu: Gpu, os_name: str, toolkit: str, node: Node) -> _Refusal | None:
    """Why this toolkit can't serve this GPU on this node, or None when it can."""
    info = tables.cuda(toolkit)
    assert info is not None
    if not versions.at_least(gpu.cc, info.min_cc):
        return _Refusal(
            f"{gpu.model} (compute capability {gpu.cc}) is not supported by CUDA {toolkit}, which needs {info.min_cc} or newer",
            "ask for an older CUDA with --cuda",
        )
    if toolkit not in node.cuda_toolkits and os_name not in info.os:
        return _Refusal(f"CUDA {toolkit} has no packages for {os_name}", f"use --cuda with a release packaged for it, or one of {', '.join(info.os)}")
    if node.driver:
        if not versions.at_least(node.driver, info.min_driver):
            return _Refusal(
                f"the node's NVIDIA driver {node.driver} is too old for CUDA {toolkit}, which needs {info.min_driver} or newer",
                "use an image with a newer driver (--image ubuntu installs one)",
                "driver",
            )
    elif _branch_for(toolkit, gpu) is None:
        return _Refusal(f"no NVIDIA driver branch supports both {gpu.model} and CUDA {toolkit}", "ask for an older CUDA with --cuda")
    return None


def _variant_refusal(release: Release, fw: str, version: str, toolkit: str, gpu: Gpu, tried: list[Variant]) -> _Refusal:
    names = ", ".join(v.name for v in release.variants)
    if not tried:
        return _Refusal(f"{fw} {version} has no wheel for CUDA {toolkit} (its CUDA builds: {names})", "ask for a CUDA its wheels use with --cuda")
    return _Refusal(
        f"{fw} {version} wheels for CUDA {toolkit} ({', '.join(v.name for v in tried)}) don't support "
        f"{gpu.model} (compute capability {gpu.cc})",
        f"pin another {fw} release or --cuda",
    )


def _resolve(gpu: Gpu, os_name: str, fw: FrameworkSpec, reuse: tuple[str, str | None] | None, cuda: str | None, node: Node) -> Resolution:
    if reuse is not None:
        version, tag = reuse
        release = tables.release(fw.name, versions.series(version))
        assert release is not None
        variants = [v for v in release.variants if tag is None or v.name == tag]
        if not variants and tag:
            variants = [v for v in [tables.torch_variant(tag, experimental=True)] if v is not None]
        version = versions.base(version)
    else:
        release, version = _release(fw)
        variants = list(release.variants)
    refusals: list[tuple[str, _Refusal]] = []
    for toolkit, options in _candidates(release, variants, cuda, node):
        refusal = _check(gpu, os_name, toolkit, node)
        chosen = next((v for v in options if v.covers(gpu.cc)), None) if refusal is None else None
        if refusal is None and chosen is None:
            refusal = _variant_refusal(release, fw.name, version, toolkit, gpu, options)
        if refusal is None and chosen is not None:
            return _build(gpu, os_name, fw, release, version, chosen, toolkit, node, reused=reuse is not None)
        assert refusal is not None
        refusals.append((toolkit, refusal))
    if not refusals:  # no candidate at all: the framework has no variant we could pair
        raise _Refused(_Refusal(f"{fw.name} {version} has no CUDA build cloudtrain can pair", "pin another release"))
    first = refusals[0][1]
    if cuda is None and len(refusals) > 1 and all(r.kind == "driver" for _, r in refusals):
        # Say it once for all of them rather than naming the first CUDA tried.
        oldest = min((t for t, _ in refusals), key=versions.key)
        info = tables.cuda(oldest)
        assert info is not None
        what = f"{fw.name} {version}" if fw.name != "none" else "cloudtrain"
        first = _Refusal(
            f"the node's NVIDIA driver {node.driver} is too old for every CUDA {what} pairs with "
            f"(the oldest, {oldest}, needs {info.min_driver} or newer)",
            first.hint,
            "driver",
        )
    raise _Refused(first)


def _build(gpu: Gpu, os_name: str, fw: FrameworkSpec, release: Release, version: str, variant: Variant,
           toolkit: str, node: Node, reused: bool) -> Resolution:
    info = tables.cuda(toolkit)
    assert info is not None
    notes = []
    if node.driver:
        driver, driver_source, driver_package, driver_pin = node.driver, "preinstalled", None, None
    else:
        branch = _branch_for(toolkit, gpu)
        assert branch is not None
        driver, driver_source = branch.name, "install"
        driver_package = branch.package(gpu.open_modules)
        driver_pin = branch.pin_package
        if branch.supported_until:
            notes.append(f"driver branch R{branch.name} ({branch.kind}) is supported until {branch.supported_until}")
    cuda_kept = toolkit in node.cuda_toolkits
    cudnn_kept = bool(node.cudnn) and versions.major(node.cudnn or "") == tables.cudnn_major()
    if release.cudnn and versions.major(release.cudnn) != tables.cudnn_major():
        notes.append(f"{fw.name} {version} brings its own cuDNN {release.cudnn} through pip")
    if variant.experimental:
        notes.append(f"{variant.name} is an experimental {fw.name} build")
    requirement = variant.requirement(version) if fw.name != "none" else None
    index_url = variant.index_url if fw.name != "none" else None
    if reused:
        notes.append(f"reusing the preinstalled {fw.name} {node.frameworks.get(fw.name)} (venv with --system-site-packages)")
    framework_cuda = variant.cuda if fw.name != "jax" else versions.major(variant.cuda)
    return Resolution(
        gpu=gpu.key or gpu.model,
        compute_cap=gpu.cc,
        os=os_name,
        driver=driver,
        driver_min=info.min_driver,
        driver_source=driver_source,
        driver_package=driver_package,
        driver_pin_package=driver_pin,
        kernel_modules="open" if gpu.open_modules else "proprietary",
        cuda=toolkit,
        cuda_source="preinstalled" if cuda_kept else "install",
        cuda_package=None if cuda_kept else info.package,
        cudnn=(node.cudnn or "") if cudnn_kept else tables.cudnn_major(),
        cudnn_source="preinstalled" if cudnn_kept else "install",
        cudnn_package=None if cudnn_kept else tables.cudnn_package(toolkit),
        framework=f"{fw.name}=={version}" if fw.name != "none" else None,
        framework_variant=variant.name if fw.name != "none" else None,
        framework_cuda=framework_cuda if fw.name != "none" else None,
        install={"requirement": requirement, "index_url": index_url, "reuse_preinstalled": reused},
        repo=tables.os_repo(os_name),
        notes=tuple(notes),
    )


__all__ = ["Node", "Resolution", "resolve"]
