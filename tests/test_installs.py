"""The truth about what got installed (installed.py), and the framework install itself (plan.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cloudtrain.bootstrap import installed
from cloudtrain.errors import BootstrapError


def _dist(site: Path, name: str, version: str) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def _read_here(tmp_path: Path, framework: str, dists: list[tuple[str, str]]) -> dict:
    """Run the node-side reader with a python whose only packages are these dist-infos."""
    site = tmp_path / "site"
    for name, version in dists:
        _dist(site, name, version)
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); sys.argv = ['-', {framework!r}]; exec(sys.stdin.read())"],
        input=installed.READ, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    found = installed.parse(proc.stdout)
    assert found is not None, proc.stdout
    return found


@pytest.mark.parametrize(
    "framework, dists, variant, cuda",
    [
        ("torch", [("torch", "2.13.0+cpu")], "cpu", None),
        ("torch", [("torch", "2.13.0+cu126")], "cu126", "12.6"),
        ("torch", [("torch", "2.14.1+cu130")], "cu130", "13.0"),
        ("tensorflow", [("tensorflow-cpu", "2.20.0")], "cpu", None),
        ("tensorflow", [("tensorflow", "2.20.0"), ("nvidia-cuda-runtime-cu12", "12.5.82")], "and-cuda", "12"),
        ("tensorflow", [("tensorflow", "2.20.0")], "cpu", None),
        ("jax", [("jax", "0.7.1"), ("jax-cuda12-plugin", "0.7.1")], "cuda12", "12"),
        ("jax", [("jax", "0.7.1")], "cpu", None),
    ],
)
def test_the_installed_build_is_read_from_the_installed_packages(tmp_path: Path, framework: str, dists: list, variant: str, cuda: str | None) -> None:
    found = _read_here(tmp_path, framework, dists)
    assert (found["framework"], found["version"], found["variant"], found["cuda"]) == (framework, dists[0][1], variant, cuda)


def test_nothing_installed_reads_as_no_version(tmp_path: Path) -> None:
    assert _read_here(tmp_path, "torch", [])["version"] is None


TORCH_CPU = {"framework": "torch", "version": "2.14.1+cpu", "variant": "cpu", "cuda": None}
TORCH_126 = {"framework": "torch", "version": "2.14.1+cu126", "variant": "cu126", "cuda": "12.6"}
TORCH_130 = {"framework": "torch", "version": "2.14.1+cu130", "variant": "cu130", "cuda": "13.0"}


@pytest.mark.parametrize(
    "found, planned, layer",
    [
        (TORCH_CPU, "cu126", "framework-without-cuda"),  # the index fell back to a CPU build
        (TORCH_CPU, None, "framework-without-cuda"),  # even where the preinstalled one was reused
        (TORCH_130, "cu126", "framework-variant"),  # PyPI's default CUDA build, not the planned one
        ({"framework": "torch", "version": None, "variant": None, "cuda": None}, "cu126", "framework"),
    ],
)
def test_on_a_gpu_node_a_wrong_build_fails_bootstrap_naming_the_layer(found: dict, planned: str | None, layer: str) -> None:
    with pytest.raises(BootstrapError) as caught:
        installed.check(found, planned, gpu_node=True, node="n0")
    assert caught.value.layer == layer
    assert "n0" in str(caught.value)


def test_on_a_gpu_node_the_planned_build_passes() -> None:
    assert installed.check(TORCH_126, "cu126", gpu_node=True, node="n0") is None


def test_on_a_cpu_node_a_mismatch_is_only_a_warning() -> None:
    warning = installed.check(TORCH_126, "cpu", gpu_node=False, node="n0")
    assert warning is not None and "torch 2.14.1+cu126" in warning and "planned cpu" in warning
    assert installed.check(TORCH_CPU, "cpu", gpu_node=False, node="n0") is None


def test_the_ready_line_names_the_build() -> None:
    assert installed.describe(TORCH_CPU) == "torch 2.14.1+cpu (CPU build)"
    assert installed.describe(TORCH_126) == "torch 2.14.1+cu126 (cu126 build, CUDA 12.6)"
