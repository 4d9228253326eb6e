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


def test_an_unreadable_answer_is_a_warning_not_a_verdict() -> None:
    warning = installed.check(None, "cu126", gpu_node=True, node="n0")
    assert warning is not None and "could not read" in warning


def test_the_ready_line_names_the_build() -> None:
    assert installed.describe(TORCH_CPU) == "torch 2.14.1+cpu (CPU build)"
    assert installed.describe(TORCH_126) == "torch 2.14.1+cu126 (cu126 build, CUDA 12.6)"


# -- the installer: uv with pip's settings, pip otherwise --------------------------------------

import os
import shlex
import shutil
import zipfile

from cloudtrain.bootstrap import uv
from cloudtrain.bootstrap.gpu import Install
from cloudtrain.bootstrap.plan import _framework


def _no_pip_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}


def _pip_to_uv(tmp_path: Path, config: str, **env: str) -> dict[str, str]:
    conf = tmp_path / "pip.conf"
    conf.write_text(config)
    proc = subprocess.run(
        ["bash", "-c", f'eval "$({sys.executable} -c {shlex.quote(uv.PIP_TO_UV)})"; env'],
        env={**_no_pip_env(), "PIP_CONFIG_FILE": str(conf), **env}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if line.startswith(("UV_", "SSL_CERT_FILE=")))


def test_pips_configuration_becomes_uvs(tmp_path: Path) -> None:
    got = _pip_to_uv(
        tmp_path,
        "[global]\nindex-url = https://mirror.example/simple\nextra-index-url = file:///a/simple file:///b/simple\n"
        "find-links = /srv/w1\n  /srv/w2\ntimeout = 42\n"
        # [install] over [global], as for pip (this machine's own site config sets a global constraint and cert).
        "[install]\nno-index = true\nconstraint = /etc/c.txt\ncert = /etc/ca.pem\n",
        PIP_FIND_LINKS="/from/env",  # a PIP_* variable wins over the file, as for pip
    )
    assert got["UV_INDEX_URL"] == "https://mirror.example/simple"
    assert got["UV_EXTRA_INDEX_URL"] == "file:///a/simple file:///b/simple"
    assert got["UV_FIND_LINKS"] == "/from/env"
    assert got["UV_NO_INDEX"] == "1"
    assert got["UV_CONSTRAINT"] == "/etc/c.txt"
    assert got["SSL_CERT_FILE"] == "/etc/ca.pem"
    assert got["UV_HTTP_TIMEOUT"] == "42"
    assert got["UV_INDEX_STRATEGY"] == "unsafe-best-match"


def test_find_links_from_the_file_keeps_every_location(tmp_path: Path) -> None:
    got = _pip_to_uv(tmp_path, "[global]\nfind-links = /srv/w1 /srv/w2\n")
    assert got["UV_FIND_LINKS"] == "/srv/w1,/srv/w2"
    assert "UV_NO_INDEX" not in got and "UV_INDEX_URL" not in got


def _wheel(folder: Path, name: str = "ctprobe", version: str = "1.0") -> None:
    """A real, minimal pure-Python wheel, made here so the install needs no index at all."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": "VALUE = 1\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{info}/RECORD", "".join(f"{p},,\n" for p in files) + f"{info}/RECORD,,\n")


def _uv_here() -> str | None:
    return shutil.which("uv") or next((str(p) for p in [Path(sys.executable).parent / "uv"] if p.exists()), None)


def _framework_step(tmp_path: Path, installer: str, uv_dir: str | None) -> tuple[subprocess.CompletedProcess, Path]:
    """The framework step's real script, offline: pip's config says no index, local wheels only."""
    _wheel(tmp_path / "wheels")
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nno-index = true\nfind-links = {tmp_path / 'wheels'}\n")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    path = os.pathsep.join(p for p in [uv_dir, "/usr/bin", "/bin"] if p)
    env = {**_no_pip_env(), "PATH": path, "HOME": str(tmp_path), "PIP_CONFIG_FILE": str(conf), "CLOUDTRAIN_VENV": str(venv),
           "CLOUDTRAIN_NODE_ROOT": str(tmp_path / "root"), "CLOUDTRAIN_INSTALLER": installer, "UV_CACHE_DIR": str(tmp_path / "uv-cache")}
    script = _framework(Install(("ctprobe==1.0",))).script
    proc = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], env=env, capture_output=True, text=True, timeout=600)
    return proc, venv


@pytest.mark.skipif(_uv_here() is None, reason="no uv on this machine (PATH or next to this python)")
def test_the_framework_goes_in_with_uv_honouring_pips_offline_configuration(tmp_path: Path) -> None:
    proc, venv = _framework_step(tmp_path, "uv", str(Path(_uv_here()).parent))  # type: ignore[arg-type]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "installer: uv" in proc.stdout
    assert list(venv.glob("lib/python*/site-packages/ctprobe-1.0.dist-info"))


def test_without_uv_the_framework_goes_in_with_pip(tmp_path: Path) -> None:
    proc, venv = _framework_step(tmp_path, "pip", None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "installer: pip" in proc.stdout
    assert list(venv.glob("lib/python*/site-packages/ctprobe-1.0.dist-info"))


# -- for real: a CPU node with torch, over SSH -------------------------------------------------


def test_the_ready_line_and_run_json_name_the_torch_build_really_installed(cli) -> None:
    up = cli("up", "--provider", "local", "--framework", "torch==2.13.0", timeout=900)
    try:
        assert up.returncode == 0, up.stderr
        facts = json.loads((cli.home / "clusters" / "local" / "facts" / "local-0.json").read_text())
        found = facts["installed_framework"]
        # This machine's local wheel is the CPU build: 2.13.0+cpu, read from the venv itself.
        venv = cli.home / "clusters" / "local" / "provider" / "local-0" / "root" / "venv" / "bin" / "python"
        really = subprocess.run([str(venv), "-c", "import importlib.metadata as m; print(m.version('torch'))"], capture_output=True, text=True, timeout=300).stdout.strip()
        assert found["version"] == really == "2.13.0+cpu"
        assert found["variant"] == "cpu" and found["cuda"] is None
        assert "[local-0] ready: torch 2.13.0+cpu (CPU build)" in up.stderr
        logs = cli.home / "clusters" / "local" / "logs" / "local-0"
        # uv where `pip install uv` reached it (this machine's PyPI), else pip: either says so.
        assert "installer: " in next(logs.glob("*-framework.log")).read_text()
        script = cli.cwd / "hello.py"
        script.write_text("print('hello')\n")
        run = cli("run", str(script), "--output", str(cli.cwd / "out"), timeout=300)
        assert run.returncode == 0, run.stderr
        assert json.loads((cli.cwd / "out" / "run.json").read_text())["framework"] == {"local-0": found}
    finally:
        cli("down", timeout=120)

