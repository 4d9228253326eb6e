"""Driver / CUDA / cuDNN steps and the framework's wheel variant, decided from node facts.

Interface used by `bootstrap.plan` (keep these signatures):
    gpu_steps(facts, request) -> list[Step]       driver, CUDA toolkit, cuDNN (skipped on CPU nodes)
    framework_install(facts, request) -> Install   what pip installs into the node's venv
    verify_step(facts, request) -> Step            a tiny computation in the installed framework
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cloudtrain.bootstrap.steps import Step
from cloudtrain.errors import BootstrapError
from cloudtrain.spec import FrameworkSpec

NO_GPU = "not needed: no NVIDIA GPU"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class Request:
    framework: FrameworkSpec
    cuda: str | None = None  # "X.Y" when the user asked for one
    gpu: str | None = None  # catalog name from `up --gpu` (e.g. "t4"), for nodes not yet showing it


@dataclass(frozen=True)
class Install:
    requirements: tuple[str, ...]  # pip requirement strings
    index_url: str | None = None  # --index-url (e.g. a torch CPU/CUDA wheel index)
    system_site_packages: bool = False  # reuse a preinstalled matching framework
    summary: str = ""


def has_gpu(facts: dict[str, Any]) -> bool:
    return bool(facts.get("gpus"))


def gpu_steps(facts: dict[str, Any], request: Request) -> list[Step]:
    if not has_gpu(facts):
        return [Step(name, summary, skip_reason=NO_GPU) for name, summary in (
            ("nvidia-driver", "NVIDIA driver"),
            ("cuda-toolkit", "CUDA toolkit"),
            ("cudnn", "cuDNN"),
        )]
    raise BootstrapError("GPU nodes are not supported yet", "use a CPU node (--provider local) for now")


def _pin(name: str, version: str | None) -> str:
    return f"{name}=={version}" if version else name


def framework_install(facts: dict[str, Any], request: Request) -> Install:
    fw = request.framework
    if fw.name == "none":
        return Install((), summary="no framework")
    if has_gpu(facts):
        raise BootstrapError("GPU nodes are not supported yet", "use a CPU node (--provider local) for now")
    if fw.name == "torch":
        # The default PyPI torch wheel is a multi-GB CUDA build; a CPU node takes the CPU build.
        return Install((_pin("torch", fw.version),), index_url=TORCH_CPU_INDEX, summary=f"{_pin('torch', fw.version)} (CPU build)")
    if fw.name == "tensorflow":
        return Install((_pin("tensorflow-cpu", fw.version),), summary=f"{_pin('tensorflow-cpu', fw.version)} (CPU build)")
    return Install((_pin("jax", fw.version),), summary=f"{_pin('jax', fw.version)} (CPU)")


_VERIFY = {
    "torch": "import torch; x = torch.ones(2, 2); print('device', 'cpu', float((x @ x).sum()))",
    "tensorflow": "import tensorflow as tf; x = tf.ones((2, 2)); print('device', 'cpu', float(tf.reduce_sum(x @ x)))",
    "jax": "import jax.numpy as jnp; x = jnp.ones((2, 2)); print('device', 'cpu', float((x @ x).sum()))",
}


def verify_step(facts: dict[str, Any], request: Request) -> Step:
    fw = request.framework
    if fw.name == "none":
        return Step("verify", "check the framework computes", skip_reason="not needed: no framework")
    return Step(
        "verify",
        f"a tiny {fw.name} computation on {'the GPU' if has_gpu(facts) else 'the CPU'}",
        script=f'"$CLOUDTRAIN_VENV/bin/python" -c "{_VERIFY[fw.name]}"',
    )
