"""What framework build is really in the job venv, and whether it is the one planned.

pip can install another build than planned without failing: with the PyTorch index
unreachable, the fallback to pip's configured indexes gives PyPI's default torch (another
CUDA variant, or one without the GPU's architecture). So after the install the node is asked
what it holds, read from the installed packages, and the ready line and run.json say that.

    {"framework": "torch", "version": "2.13.0+cpu", "variant": "cpu", "cuda": null}
variant: torch "cpu" / "cu126" (its local version, else torch.version.cuda); TF "cpu" /
"and-cuda" (tensorflow-cpu, or NVIDIA's pip CUDA libraries present); JAX "cpu" / "cuda12" /
"cuda13" (its jax-cudaN-plugin).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from cloudtrain.errors import BootstrapError, RemoteError
from cloudtrain.remote import SshRemote

# Run by the venv's python on the node, stdlib only; argv[1] is the framework.
READ = r'''
import json, re, sys
from importlib import metadata

def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None

def have(prefix):
    return any((d.metadata["Name"] or "").lower().startswith(prefix) for d in metadata.distributions())

fw = sys.argv[1]
out = {"framework": fw, "version": None, "variant": None, "cuda": None}
if fw == "torch":
    out["version"] = version("torch")
    local = (out["version"] or "").partition("+")[2]
    cuda = None
    try:
        import torch  # the build's own answer; only when metadata leaves it open
        cuda = torch.version.cuda
    except Exception:
        pass
    if local.startswith("cu"):
        out["variant"] = local
        out["cuda"] = cuda or (local[2:-1] + "." + local[-1])
    elif local == "cpu" or (out["version"] and not cuda):
        out["variant"], out["cuda"] = "cpu", None
    elif cuda:
        out["variant"], out["cuda"] = "cu" + cuda.replace(".", ""), cuda
elif fw == "tensorflow":
    cpu = version("tensorflow-cpu")
    out["version"] = cpu or version("tensorflow")
    if out["version"]:
        gpu = not cpu and have("nvidia-cuda-runtime-cu")
        out["variant"] = "and-cuda" if gpu else "cpu"
        out["cuda"] = "12" if gpu else None
elif fw == "jax":
    out["version"] = version("jax")
    for major in ("13", "12"):
        if version(f"jax-cuda{major}-plugin") or version(f"jax-cuda{major}-pjrt"):
            out["variant"], out["cuda"] = f"cuda{major}", major
            break
    else:
        out["variant"] = "cpu" if out["version"] else None
print("cloudtrain-installed " + json.dumps(out))
'''
PREFIX = "cloudtrain-installed "


def read(remote: SshRemote, python: str, framework: str) -> dict[str, Any] | None:
    """The installed build of `framework` in the venv whose python is `python`; None if unreadable."""
    try:
        result = remote.run(f"{shlex.quote(python)} - {shlex.quote(framework)}", stdin=READ.encode(), check=False, timeout=300)
    except RemoteError:
        return None
    return parse(result.stdout)


def parse(output: str) -> dict[str, Any] | None:
    for line in reversed(output.splitlines()):
        if line.startswith(PREFIX):
            try:
                data = json.loads(line[len(PREFIX):])
            except json.JSONDecodeError:
                return None
            return data if isinstance(data, dict) else None
    return None


def describe(installed: dict[str, Any]) -> str:
    """'torch 2.13.0+cpu (CPU build)' / 'torch 2.14.1+cu126 (cu126 build, CUDA 12.6)'."""
    build = "CPU build" if installed.get("variant") == "cpu" else f"{installed.get('variant')} build, CUDA {installed.get('cuda')}"
    return f"{installed.get('framework')} {installed.get('version')} ({build})"


def check(installed: dict[str, Any] | None, planned_variant: str | None, gpu_node: bool, node: str) -> str | None:
    """None when the installed build is the planned one; a warning (CPU node); or raises
    BootstrapError naming the layer (GPU node: a CPU build, or another CUDA variant)."""
    if not installed:
        return "warning: could not read which framework build the job venv holds"
    if not installed.get("version"):
        if gpu_node:
            raise BootstrapError(f"no {installed.get('framework')} is installed in the job venv on {node}", "see the framework step's log", layer="framework")
        return f"warning: no {installed.get('framework')} is installed in the job venv"
    variant = installed.get("variant")
    if gpu_node and variant == "cpu":
        raise BootstrapError(
            f"{describe(installed)} was installed on {node}, which has a GPU: a CPU-only build",
            "the framework's CUDA index was likely unreachable from the node; `cloudtrain bootstrap` installs it again",
            layer="framework-without-cuda",
        )
    if planned_variant is None or variant == planned_variant:
        return None
    if gpu_node:
        raise BootstrapError(
            f"{describe(installed)} was installed on {node}, not the planned {planned_variant} build",
            "the framework's CUDA index was likely unreachable from the node; `cloudtrain bootstrap` installs it again",
            layer="framework-variant",
        )
    return f"warning: {describe(installed)} was installed, not the planned {planned_variant} build"
