"""The compatibility tables, loaded from package data (cloudtrain/compat/data/*.json).

The JSON files carry their sources beside the figures; this module only types them. Keep
facts in the data files and decisions in resolve.py, so a new CUDA or framework release is
a data change.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from cloudtrain.compat import versions


@lru_cache(maxsize=None)
def load(name: str) -> dict[str, Any]:
    text = resources.files("cloudtrain.compat").joinpath(f"data/{name}.json").read_text()
    return json.loads(text)


@dataclass(frozen=True)
class Gpu:
    model: str  # "V100", or nvidia-smi's name for a GPU outside the catalog
    cc: str  # compute capability "7.0"
    key: str | None = None  # catalog name ("v100") when known
    arch: str | None = None  # "volta" ... when known

    @property
    def open_modules(self) -> bool:
        """Open kernel modules need GSP: Turing (CC 7.5) and later."""
        if self.arch:
            return bool(load("gpus")["architectures"][self.arch]["open_modules"])
        return versions.at_least(self.cc, "7.5")

    @property
    def last_driver_branch(self) -> str | None:
        if self.arch:
            return load("gpus")["architectures"][self.arch]["last_driver_branch"]
        return "580" if not versions.at_least(self.cc, "7.5") else None


def gpu_names() -> list[str]:
    return list(load("gpus")["gpus"])


def gpu(name: str) -> Gpu | None:
    """A catalog GPU by its name ('t4', 'a100-80gb') or alias; None when unknown."""
    data = load("gpus")
    key = name.strip().lower()
    key = data["aliases"].get(key, key)
    row = data["gpus"].get(key)
    return Gpu(row["model"], row["cc"], key, row["arch"]) if row else None


def identify(smi_name: str, memory_mb: int | None = None, cc: str | None = None) -> Gpu | None:
    """The catalog GPU nvidia-smi reports ('Tesla V100-SXM2-16GB'), else a bare Gpu from its CC."""
    tokens = set(re.split(r"[^a-z0-9]+", smi_name.lower()))
    if memory_mb is None and re.search(r"80\s*gb", smi_name.lower()):
        memory_mb = 81920  # the name says which A100 it is when memory is unknown
    for key, row in load("gpus")["gpus"].items():
        if not tokens.intersection(row["tokens"]):
            continue
        if memory_mb is not None and not row.get("min_memory_mb", 0) <= memory_mb < row.get("max_memory_mb", 10**9):
            continue
        return Gpu(row["model"], row["cc"], key, row["arch"])
    return Gpu(smi_name, cc) if cc else None


@dataclass(frozen=True)
class Cuda:
    version: str
    min_driver: str
    min_cc: str
    os: tuple[str, ...]

    @property
    def package(self) -> str:
        return "cuda-toolkit-" + self.version.replace(".", "-")


def cuda_versions() -> list[str]:
    return sorted(load("cuda")["versions"], key=versions.key)


def cuda(version: str) -> Cuda | None:
    row = load("cuda")["versions"].get(version)
    return Cuda(version, row["min_driver"], row["min_cc"], tuple(row["os"])) if row else None


def cudnn_major() -> str:
    return str(load("cuda")["cudnn"]["major"])


def cudnn_package(cuda_version: str) -> str:
    return load("cuda")["cudnn"]["package"].format(cuda_major=versions.major(cuda_version))


@dataclass(frozen=True)
class Branch:
    name: str  # "580"
    max_cuda: str
    kind: str
    supported_until: str | None
    installable: bool = True  # False past its end of life: recognised on a node, never installed
    open_only: bool = False  # R620 on: no proprietary kernel modules

    @property
    def branch_in_name(self) -> bool:
        """Up to R580 the package names carry the branch; from R590 a pinning package picks it."""
        return versions.key(self.name) <= versions.key(load("drivers")["branch_in_name_until"])

    def package(self, open_modules: bool) -> str:
        data = load("drivers")
        if self.branch_in_name:
            return (data["open_package"] if open_modules else data["proprietary_package"]).format(branch=self.name)
        return data["open_package_unbranched"] if open_modules else data["proprietary_package_unbranched"]

    @property
    def pin_package(self) -> str | None:
        """Installed before the driver from R590 on, so apt stays on this branch."""
        return None if self.branch_in_name else load("drivers")["pin_package"].format(branch=self.name)


def branches() -> list[Branch]:
    rows = load("drivers")["branches"]
    return sorted(
        (Branch(name, r["max_cuda"], r["kind"], r["supported_until"], r.get("installable", True), r.get("open_only", False))
         for name, r in rows.items()),
        key=lambda b: versions.key(b.name),
    )


def minor_version_min(cuda_version: str) -> str:
    """The oldest driver that runs any CUDA X.* wheel (NVIDIA minor version compatibility)."""
    return str(load("drivers")["minor_version_min"][versions.major(cuda_version)])


def fabricmanager_package(branch: str) -> str:
    return str(load("drivers")["fabricmanager_package"]).format(branch=branch)


def needs_fabric_manager(gpu_key: str | None, count: int) -> bool:
    """8-GPU HGX boards (A100/H100/H200) sit on NVSwitch: CUDA needs Fabric Manager there."""
    rule = load("gpus")["nvswitch"]
    return gpu_key in rule["gpus"] and count >= int(rule["count"])


def os_python(os_name: str) -> str | None:
    """The OS's own python3 as X.Y, when the table records it."""
    row = load("os")["systems"].get(os_name) or {}
    return row.get("python")


def python_range(framework: str, version: str) -> tuple[str | None, str | None]:
    """(oldest, newest) Python X.Y a release's wheels run on, from PyPI (data/python.json)."""
    row = load("python").get(framework, {}).get("releases", {}).get(version) or {}
    return row.get("python_min"), row.get("python_max")


def tf_jit_ccs() -> list[str]:
    """Compute capabilities TF wheels reach only through PTX (JIT-compiled on first use)."""
    return list(load("frameworks")["tensorflow"].get("jit_from_ptx", []))


def tf_arch_list() -> list[str]:
    return list(load("frameworks")["tensorflow"].get("arch_list", []))


def os_names() -> list[str]:
    return list(load("os")["systems"])


def os_repo(os_name: str) -> str | None:
    row = load("os")["systems"].get(os_name)
    return row["repo"] if row else None


def repo_arch(machine: str) -> str | None:
    return load("os")["repo_arch"].get(machine)


def keyring_url(os_name: str, machine: str = "x86_64") -> str:
    return load("os")["keyring_url"].format(repo=os_repo(os_name), arch=repo_arch(machine) or machine)


@dataclass(frozen=True)
class Variant:
    """One CUDA build of one framework release: torch cu126, tensorflow[and-cuda], jax[cuda13]."""

    framework: str
    name: str  # "cu126" | "and-cuda" | "cuda13" | "cuda12"
    cuda: str  # the oldest toolkit of its major it pairs with ("12.6")
    default_toolkit: str  # the toolkit installed for it on a bare OS
    min_cc: str
    max_cc: str
    experimental: bool = False
    from_pypi: bool = False  # torch's PyPI default build: installed without --index-url

    def covers(self, cc: str) -> bool:
        return versions.at_least(cc, self.min_cc) and versions.at_least(self.max_cc, cc)

    def requirement(self, version: str) -> str:
        if self.framework == "torch":
            return f"torch=={version}"
        if self.framework == "tensorflow":
            return f"tensorflow[and-cuda]=={version}"
        if self.framework == "jax":
            return f"jax[{self.name}]=={version}"
        return ""

    @property
    def index_url(self) -> str | None:
        if self.framework == "torch" and not self.from_pypi:
            return load("frameworks")["torch"]["index_url"].format(variant=self.name)
        return None


@dataclass(frozen=True)
class Release:
    framework: str
    series: str  # "2.14"
    latest: str  # "2.14.1"
    variants: tuple[Variant, ...]  # stable ones first, in the table's order
    cudnn: str | None = None  # the cuDNN a release was tested with, when its docs say

    def stable(self) -> list[Variant]:
        return [v for v in self.variants if not v.experimental]

    @property
    def python(self) -> tuple[str | None, str | None]:
        return python_range(self.framework, self.latest) if self.framework != "none" else (None, None)

    def runs_on(self, python: str | None) -> bool:
        """Whether the latest patch has wheels for this Python X.Y (unknown either way: yes)."""
        lo, hi = self.python
        if python is None:
            return True
        return (lo is None or versions.at_least(python, lo)) and (hi is None or versions.at_least(hi, python))

    def python_text(self) -> str:
        lo, hi = self.python
        return f"Python {lo}-{hi}" if lo and hi else f"Python >= {lo}" if lo else "any Python"


def torch_variant(name: str, experimental: bool = False, from_pypi: bool = False) -> Variant | None:
    """torch's 'cu126' build as a Variant; None for a tag the table doesn't know."""
    if name not in load("frameworks")["torch"]["arch"]:
        return None
    digits = name[2:]
    cuda_version = f"{digits[:-1]}.{digits[-1]}"
    lo, hi = load("frameworks")["torch"]["arch"][name]
    return Variant("torch", name, cuda_version, cuda_version, lo, hi, experimental, from_pypi)


def releases(framework: str) -> list[Release]:
    """Every release row of a framework, oldest first. 'none' has one pseudo-release (CUDA only)."""
    if framework == "none":
        # No framework: still a driver and a toolkit; the newest of each major the LTS driver carries.
        return [Release("none", "-", "", (
            Variant("none", "cuda13", "13.0", "13.0", "7.5", "99.0"),
            Variant("none", "cuda12", "12.0", "12.9", "5.0", "99.0"),
        ))]
    data = load("frameworks")[framework]
    rows = []
    for series, row in data["releases"].items():
        if framework == "torch":
            names = [(n, False) for n in row["variants"]] + [(n, True) for n in row["experimental"]]
            pypi = row.get("pypi_default")
            variants = tuple(v for n, e in names if (v := torch_variant(n, e, n == pypi)) is not None)
            rows.append(Release(framework, series, row["latest"], variants))
        elif framework == "tensorflow":
            lo, hi = data["arch"]["and-cuda"]
            variant = Variant(framework, "and-cuda", row["cuda"], row["cuda"], lo, hi)
            rows.append(Release(framework, series, row["latest"], (variant,), row["cudnn"]))
        else:
            variants = tuple(
                Variant(framework, n, data["variant_cuda"][n], data["default_toolkit"][n], *data["arch"][n])
                for n in row["variants"]
            )
            rows.append(Release(framework, series, row["latest"], variants))
    return sorted(rows, key=lambda r: versions.key(r.series))


def release(framework: str, series: str) -> Release | None:
    return next((r for r in releases(framework) if r.series == series), None)
