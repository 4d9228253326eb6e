"""Driver / CUDA / cuDNN steps and the framework's wheel variant, decided from node facts.

Interface used by `bootstrap.plan` (keep these signatures):
    gpu_steps(facts, request) -> list[Step]       driver, Fabric Manager (NVSwitch boards only), CUDA
                                                  toolkit and cuDNN (only with --cuda-toolkit;
                                                  planned as skipped otherwise, and on CPU nodes)
    framework_install(facts, request) -> Install   what pip installs into the node's venv
    verify_step(facts, request) -> Step            a tiny computation in the installed framework

A node is a GPU node when nvidia-smi lists a GPU, or a PCI device from NVIDIA is attached
(vendor 10de: a bare OS with no driver yet), or the request names a catalog GPU. The choice of
versions is `cloudtrain.compat.resolve`'s; this module turns it into steps whose scripts are
package data (bootstrap/scripts/*.sh, each prefixed with common.sh). Anything already on the
node that fits is kept: those steps are planned as skipped with the reason.

Verify output -> BootstrapError layer. On a GPU node the verify step prints one line
    cloudtrain-verify {"ok": false, "layer": "<layer>", "message": "..."}
and exits 3 when a layer is broken (ok: true with "device" when it works). `verify_failure(log)`
turns that output into BootstrapError(layer=<layer>) with the hint in LAYERS:
    no-gpu                   no NVIDIA device on the PCI bus and nvidia-smi fails
    driver-not-loaded        an NVIDIA device is attached but nvidia-smi can't reach a driver
    driver-too-old           the loaded driver is older than the planned CUDA needs, or than
                             the CUDA the framework was built for
    framework-without-cuda   the framework in the venv is a CPU-only build
    framework                the framework doesn't import or can't use the GPU for another reason
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cloudtrain.bootstrap.steps import Step, script
from cloudtrain.compat import Node, Resolution, identify, resolve, tables
from cloudtrain.errors import BadInput, BootstrapError
from cloudtrain.spec import FrameworkSpec

NO_GPU = "not needed: no NVIDIA GPU"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
VERIFY_PREFIX = "cloudtrain-verify "

LAYERS = {
    "no-gpu": "check that the VM has its GPU attached (machine type, quota), or recreate it",
    "driver-not-loaded": "see the nvidia-driver step log; Secure Boot or a kernel without headers stops the module loading",
    "driver-too-old": "use an image with a newer driver, or an older CUDA (cloudtrain compat --driver VERSION shows what fits)",
    "framework-without-cuda": "the venv holds a CPU-only build; run bootstrap again so the CUDA wheel is installed",
    "fabric-manager": "an NVSwitch node (8-GPU HGX) needs nvidia-fabricmanager of the driver's exact version, enabled and "
                      "running: see the fabric-manager step log and `systemctl status nvidia-fabricmanager` on the node",
    "framework": "see the verify step log for the framework's own error",
}


@dataclass(frozen=True)
class Request:
    framework: FrameworkSpec
    cuda: str | None = None  # "X.Y" when the user asked for one
    gpu: str | None = None  # catalog name from `up --gpu` (e.g. "t4"), for nodes not yet showing it
    gpu_count: int = 1  # from `up --gpu NAME:COUNT`: a bare node's GPUs before a driver lists them
    cuda_toolkit: bool = False  # --cuda-toolkit: also a system CUDA toolkit and cuDNN


@dataclass(frozen=True)
class Install:
    requirements: tuple[str, ...]  # pip requirement strings
    index_url: str | None = None  # --index-url (e.g. a torch CPU/CUDA wheel index)
    system_site_packages: bool = False  # reuse a preinstalled matching framework
    summary: str = ""


def has_gpu(facts: dict[str, Any]) -> bool:
    return bool(facts.get("gpus"))


def resolution(facts: dict[str, Any], request: Request) -> Resolution | None:
    """The GPU stack for this node, or None for a CPU node. BadInput for an impossible request."""
    gpus = facts.get("gpus") or []
    gpu = None
    count = len(gpus) or request.gpu_count  # nvidia-smi's list is the truth once a driver runs
    if gpus:
        first = gpus[0]
        gpu = identify(first.get("name", ""), first.get("memory_mb"), first.get("compute_cap"))
        if gpu is None:
            raise BootstrapError(f"cannot tell the compute capability of GPU {first.get('name')!r}", "report this GPU model", layer="gpu")
    elif request.gpu:
        gpu = tables.gpu(request.gpu)
        if gpu is None:
            raise BadInput(f"unknown GPU {request.gpu!r}", f"choose one of {', '.join(tables.gpu_names())}")
        if not facts.get("nvidia_pci"):
            raise BootstrapError(
                f"no NVIDIA GPU visible on the node though --gpu {request.gpu} was asked: no PCI device from NVIDIA (vendor 10de) is attached",
                LAYERS["no-gpu"],
                layer="no-gpu",
            )
    elif facts.get("nvidia_pci"):
        raise BadInput("the node has an NVIDIA GPU but no driver, so its model is unknown", "pass --gpu NAME (e.g. --gpu t4)")
    if gpu is None:
        return None
    node = Node(
        driver=facts.get("driver"),
        cuda_toolkits=tuple(facts.get("cuda_toolkits") or ()),
        cudnn=facts.get("cudnn"),
        frameworks=dict(facts.get("frameworks") or {}),
        python=facts.get("python_version") or None,
        driver_modules=facts.get("driver_modules") or None,
    )
    return resolve(gpu, f"{facts.get('os_id')}-{facts.get('os_version')}", request.framework, request.cuda, node,
                   cuda_toolkit=request.cuda_toolkit, gpu_count=count)


def _env(res: Resolution, facts: dict[str, Any], step: str, **extra: str) -> dict[str, str]:
    env = {
        "CLOUDTRAIN_STEP": step,
        "CLOUDTRAIN_OS": res.os,
        "CLOUDTRAIN_CUDA": res.cuda,
        "CLOUDTRAIN_MIN_DRIVER": res.driver_min,
    }
    if res.repo:
        env["CLOUDTRAIN_CUDA_KEYRING_URL"] = tables.keyring_url(res.os, str(facts.get("arch") or "x86_64"))
    env.update(extra)
    return env


def gpu_steps(facts: dict[str, Any], request: Request) -> list[Step]:
    res = resolution(facts, request)
    if res is None:
        return [Step(name, summary, skip_reason=NO_GPU) for name, summary in (
            ("nvidia-driver", "NVIDIA driver"),
            ("cuda-toolkit", "CUDA toolkit"),
            ("cudnn", "cuDNN"),
        )]
    fabric = [_fabric_manager_step(res, facts)] if res.fabric_manager else []
    return [_driver_step(res, facts), *fabric, _cuda_step(res, facts), _cudnn_step(res, facts)]


def _driver_step(res: Resolution, facts: dict[str, Any]) -> Step:
    if res.driver_source == "preinstalled":
        return Step("nvidia-driver", "NVIDIA driver",
                    skip_reason=f"kept: driver {res.driver} already loaded ({_needs(res)})")
    return Step(
        "nvidia-driver",
        f"install NVIDIA driver R{res.driver} with {res.kernel_modules} kernel modules "
        f"({res.driver_pin_package + ' then ' if res.driver_pin_package else ''}{res.driver_package}) "
        f"for {res.gpu}, hold driver and kernel packages, then reboot",
        script=script("nvidia-driver"),
        env=_env(res, facts, "nvidia-driver", CLOUDTRAIN_DRIVER_PACKAGE=res.driver_package or "",
                 CLOUDTRAIN_DRIVER_PIN=res.driver_pin_package or "", CLOUDTRAIN_KERNEL_MODULES=res.kernel_modules,
                 CLOUDTRAIN_DRIVER_BRANCH=res.driver_branch),
        reboot_after=True,
        sudo=True,
    )


def _needs(res: Resolution) -> str:
    if res.system_toolkit:
        return f"the CUDA {res.cuda} toolkit needs >= {res.driver_min}"
    return f"CUDA {res.cuda.split('.')[0]}.x wheels need >= {res.driver_min}: NVIDIA minor version compatibility"


def _fabric_manager_step(res: Resolution, facts: dict[str, Any]) -> Step:
    kept = res.driver_source == "preinstalled"
    return Step(
        "fabric-manager",
        f"install {res.fabric_manager_package} matching driver {res.driver if kept else 'R' + res.driver} "
        f"for {res.gpu_count}x {res.gpu} on NVSwitch, enable and start nvidia-fabricmanager",
        script=script("fabric-manager"),
        env=_env(res, facts, "fabric-manager", CLOUDTRAIN_DRIVER_BRANCH=res.driver_branch,
                 CLOUDTRAIN_DRIVER_VERSION=res.driver if kept else "",
                 CLOUDTRAIN_FABRICMANAGER_PACKAGE=res.fabric_manager_package or ""),
        sudo=True,
    )


def _wheel_only(res: Resolution, what: str) -> str:
    wheels = f"the {res.framework} {res.framework_variant} wheels bring" if res.framework else "a job's own wheels bring"
    return f"not needed: {wheels} CUDA {res.framework_cuda or res.cuda} and cuDNN; --cuda-toolkit installs a system {what}"


def _cuda_step(res: Resolution, facts: dict[str, Any]) -> Step:
    if not res.system_toolkit:
        return Step("cuda-toolkit", "CUDA toolkit", skip_reason=_wheel_only(res, "toolkit"))
    if res.cuda_source == "preinstalled":
        return Step("cuda-toolkit", "CUDA toolkit", skip_reason=f"kept: CUDA {res.cuda} already at /usr/local/cuda-{res.cuda}")
    return Step(
        "cuda-toolkit",
        f"install CUDA toolkit {res.cuda} ({res.cuda_package}) from NVIDIA's repository",
        script=script("cuda-toolkit"),
        env=_env(res, facts, "cuda-toolkit", CLOUDTRAIN_CUDA_PACKAGE=res.cuda_package or ""),
        sudo=True,
    )


def _cudnn_step(res: Resolution, facts: dict[str, Any]) -> Step:
    if not res.system_toolkit:
        return Step("cudnn", "cuDNN", skip_reason=_wheel_only(res, "cuDNN"))
    if res.cudnn_source == "preinstalled":
        return Step("cudnn", "cuDNN", skip_reason=f"kept: cuDNN {res.cudnn} already installed")
    return Step(
        "cudnn",
        f"install cuDNN {res.cudnn} for CUDA {res.cuda.split('.')[0]} ({res.cudnn_package})",
        script=script("cudnn"),
        env=_env(res, facts, "cudnn", CLOUDTRAIN_CUDNN_PACKAGE=res.cudnn_package or ""),
        sudo=True,
    )


def _pin(name: str, version: str | None) -> str:
    return f"{name}=={version}" if version else name


def framework_install(facts: dict[str, Any], request: Request) -> Install:
    fw = request.framework
    if fw.name == "none":
        return Install((), summary="no framework")
    res = resolution(facts, request)
    if res is None:
        return _cpu_install(fw)
    requirement = res.install["requirement"]
    if res.install["reuse_preinstalled"]:
        found = (facts.get("frameworks") or {}).get(fw.name)
        if fw.name == "torch":
            # Reinstalling from the index would download gigabytes for the same build.
            return Install((), system_site_packages=True,
                           summary=f"reusing the preinstalled torch {found} (a CUDA {res.framework_cuda} build)")
        # pip sees the framework satisfied and adds only CUDA extras that are missing.
        return Install((requirement,), system_site_packages=True,
                       summary=f"{requirement} over the preinstalled {fw.name} {found}")
    return Install((requirement,), index_url=res.install["index_url"],
                   summary=f"{res.framework} ({res.framework_variant} build, CUDA {res.framework_cuda})")


def _cpu_install(fw: FrameworkSpec) -> Install:
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
    res = resolution(facts, request)
    if res is None:
        return Step("verify", f"a tiny {fw.name} computation on the CPU", script=f'"$CLOUDTRAIN_VENV/bin/python" -c "{_VERIFY[fw.name]}"')
    return Step(
        "verify",
        f"a tiny {fw.name} computation on the GPU, reporting the device; a failure names the broken layer",
        script=script("verify"),
        env=_env(res, facts, "verify", CLOUDTRAIN_FRAMEWORK=fw.name),
        explain=verify_failure,
    )


def parse_verify(output: str) -> dict[str, Any] | None:
    """The verify step's report from its output (the last `cloudtrain-verify` line), if any."""
    for line in reversed(output.splitlines()):
        if line.startswith(VERIFY_PREFIX):
            try:
                data = json.loads(line[len(VERIFY_PREFIX):])
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict):
                return data
    return None


def verify_failure(output: str, node: str = "the node") -> BootstrapError | None:
    """BootstrapError naming the broken layer when the verify output reports one; None when it passed."""
    report = parse_verify(output)
    if report is None or report.get("ok"):
        return None
    layer = str(report.get("layer") or "framework")
    message = str(report.get("message") or "the GPU check failed")
    return BootstrapError(f"GPU check on {node} failed ({layer}): {message}", LAYERS.get(layer, LAYERS["framework"]), layer=layer)
