"""One framework release on one GPU, OS and node: the driver, CUDA and wheel variant that fit.

Rules (each refusal names the first one broken):

    GPU CC        >= the CUDA's oldest CC, and inside the wheel variant's CC range
    driver        wheels only (default): >= the minor-version-compatibility floor of the wheel's
                  CUDA major (525.60.13 for 12.x, 580.65.06 for 13.x), since the wheels bring
                  their own runtime; with a system toolkit: >= that toolkit's launch driver
    driver branch still supports the GPU (Volta ends with R580); open modules only from Turing;
                  R620 is open-only; a branch past its end of life is never installed
    toolkit       (only with --cuda-toolkit) packaged for the OS, unless already on the node

`resolve.py` picks the release (Python) and turns a refusal into a way out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cloudtrain.compat import tables, versions
from cloudtrain.compat.tables import Gpu, Release, Variant


@dataclass(frozen=True)
class Node:
    """What a node already has (from the probe's facts); empty for a bare OS or a dry question."""

    driver: str | None = None
    cuda_toolkits: tuple[str, ...] = ()
    cudnn: str | None = None
    frameworks: dict[str, str] = field(default_factory=dict)
    python: str | None = None  # the probe's python_version ("3.10.12")
    driver_modules: str | None = None  # the probe's flavour of a driver on the node: "open" | "proprietary"


@dataclass(frozen=True)
class Ask:
    """Everything one resolution depends on besides the release."""

    gpu: Gpu
    os: str
    cuda: str | None
    node: Node
    toolkit: bool  # --cuda-toolkit: a system toolkit and cuDNN as well
    python: str | None  # X.Y planned for, None when unknown
    gpu_count: int = 1
    python_source: str | None = None  # "asked" | "node" | "os default"


@dataclass(frozen=True)
class Refusal:
    reason: str
    hint: str
    kind: str = ""  # "driver" when the node's own driver is what stands in the way; "python"


class Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


def _order(variants: list[Variant]) -> list[Variant]:
    """Variants of the CUDA the LTS driver branch shipped with first, then the newest CUDA first."""
    lts = tables.branches()[0]
    return sorted(
        variants,
        key=lambda v: (not versions.at_least(lts.max_cuda, v.default_toolkit), tuple(-k for k in versions.key(v.cuda))),
    )


def _pairs_for(variant: Variant, cuda: str) -> bool:
    """A wheel variant pairs with a CUDA of its major that is at least as new."""
    return versions.major(cuda) == versions.major(variant.cuda) and versions.at_least(cuda, variant.cuda)


def _candidates(variants: list[Variant], ask: Ask) -> list[tuple[str, list[Variant]]]:
    """(CUDA X.Y, variants to try with it) in preference order."""
    if ask.cuda is not None:
        exact = [v for v in variants if v.cuda == ask.cuda]
        rest = _order([v for v in variants if v not in exact and not v.experimental and _pairs_for(v, ask.cuda)])
        return [(ask.cuda, exact + rest)]
    stable = _order([v for v in variants if not v.experimental]) or variants
    if not ask.toolkit:  # the wheels bring their CUDA: nothing on the node decides it
        return [(v.default_toolkit, [v]) for v in stable]
    present = sorted((t for t in ask.node.cuda_toolkits if tables.cuda(t)), key=versions.key, reverse=True)
    out: list[tuple[str, list[Variant]]] = []
    for v in stable:  # a toolkit on the node first
        out += [(t, [v]) for t in present if _pairs_for(v, t)]
    for v in stable:  # then the variant's own toolkit, then newer ones of its major
        newer = [t for t in tables.cuda_versions() if _pairs_for(v, t) and versions.key(t) > versions.key(v.default_toolkit)]
        out += [(t, [v]) for t in [v.default_toolkit, *newer]]
    return out


def min_driver(cuda: str, toolkit: bool) -> str:
    info = tables.cuda(cuda)
    assert info is not None
    return info.min_driver if toolkit else tables.minor_version_min(cuda)


def branch_for(cuda: str, gpu: Gpu, toolkit: bool) -> tables.Branch | None:
    """The lowest installable branch that runs this CUDA on this GPU."""
    for branch in tables.branches():
        if not branch.installable or (branch.open_only and not gpu.open_modules):
            continue
        if gpu.last_driver_branch and versions.key(branch.name) > versions.key(gpu.last_driver_branch):
            continue
        # A toolkit needs the branch it shipped with or newer; wheels only the same CUDA major.
        runs = versions.at_least(branch.max_cuda, cuda) if toolkit else int(versions.major(branch.max_cuda)) >= int(versions.major(cuda))
        if runs:
            return branch
    return None


def _check(ask: Ask, cuda: str) -> Refusal | None:
    """Why this CUDA can't serve this GPU on this node, or None when it can."""
    info = tables.cuda(cuda)
    assert info is not None
    gpu, node = ask.gpu, ask.node
    if not versions.at_least(gpu.cc, info.min_cc):
        return Refusal(
            f"{gpu.model} (compute capability {gpu.cc}) is not supported by CUDA {cuda}, which needs {info.min_cc} or newer",
            "ask for an older CUDA with --cuda",
        )
    if ask.toolkit and cuda not in node.cuda_toolkits and ask.os not in info.os:
        return Refusal(f"CUDA {cuda} has no packages for {ask.os}", f"use --cuda with a release packaged for it, or one of {', '.join(info.os)}")
    if node.driver:
        need = min_driver(cuda, ask.toolkit)
        if not versions.at_least(node.driver, need):
            what = f"a CUDA {cuda} system toolkit, which needs" if ask.toolkit else f"CUDA {versions.major(cuda)}.x wheels, which need"
            return Refusal(
                f"the node's NVIDIA driver {node.driver} is too old for {what} {need} or newer",
                "use an image with a newer driver (--image ubuntu installs one)",
                "driver",
            )
    elif branch_for(cuda, gpu, ask.toolkit) is None:
        return Refusal(f"no NVIDIA driver branch supports both {gpu.model} and CUDA {cuda}", "ask for an older CUDA with --cuda")
    return None


def _variant_refusal(release: Release, version: str, cuda: str, gpu: Gpu, tried: list[Variant]) -> Refusal:
    fw = release.framework
    names = ", ".join(v.name for v in release.variants)
    if not tried:
        return Refusal(f"{fw} {version} has no wheel for CUDA {cuda} (its CUDA builds: {names})", "ask for a CUDA its wheels use with --cuda")
    return Refusal(
        f"{fw} {version} wheels for CUDA {cuda} ({', '.join(v.name for v in tried)}) don't support "
        f"{gpu.model} (compute capability {gpu.cc})",
        f"pin another {fw} release or --cuda",
    )


def fit(release: Release, version: str, variants: list[Variant], ask: Ask) -> tuple[str, Variant]:
    """(CUDA, variant) for this release, or Refused with the first rule broken."""
    refusals: list[tuple[str, Refusal]] = []
    for cuda, options in _candidates(variants, ask):
        refusal = _check(ask, cuda)
        chosen = next((v for v in options if v.covers(ask.gpu.cc)), None) if refusal is None else None
        if refusal is None and chosen is None:
            refusal = _variant_refusal(release, version, cuda, ask.gpu, options)
        if refusal is None and chosen is not None:
            return cuda, chosen
        assert refusal is not None
        refusals.append((cuda, refusal))
    if not refusals:
        raise Refused(Refusal(f"{release.framework} {version} has no CUDA build cloudtrain can pair", "pin another release"))
    first = refusals[0][1]
    if ask.cuda is None and len(refusals) > 1 and all(r.kind == "driver" for _, r in refusals):
        # Say it once for all of them rather than naming the first CUDA tried.
        oldest = min((c for c, _ in refusals), key=versions.key)
        what = f"{release.framework} {version}" if release.framework != "none" else "cloudtrain"
        first = Refusal(
            f"the node's NVIDIA driver {ask.node.driver} is too old for every CUDA {what} pairs with "
            f"(the oldest, {oldest}, needs {min_driver(oldest, ask.toolkit)} or newer)",
            first.hint,
            "driver",
        )
    raise Refused(first)


def driver_plan(cuda: str, ask: Ask) -> dict[str, Any]:
    """The driver half of a Resolution: kept or installed, its branch, Fabric Manager."""
    gpu, node = ask.gpu, ask.node
    fm = tables.needs_fabric_manager(gpu.key, ask.gpu_count)
    if node.driver:
        branch = versions.major(node.driver)
        return dict(driver=node.driver, driver_branch=branch, driver_source="preinstalled", driver_package=None,
                    driver_pin_package=None, fabric_manager=fm,
                    fabric_manager_package=tables.fabricmanager_package(branch) if fm else None, supported_until=None)
    branch = branch_for(cuda, gpu, ask.toolkit)
    assert branch is not None
    return dict(driver=branch.name, driver_branch=branch.name, driver_source="install",
                driver_package=branch.package(gpu.open_modules), driver_pin_package=branch.pin_package,
                fabric_manager=fm, fabric_manager_package=tables.fabricmanager_package(branch.name) if fm else None,
                supported_until=f"driver branch R{branch.name} ({branch.kind}) is supported until {branch.supported_until}"
                if branch.supported_until else None)
