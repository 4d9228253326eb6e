# shellcheck shell=bash
# Step verify (GPU nodes): check each layer from the bottom up, then run a tiny computation on
# the GPU in the installed framework and report the device. Prints exactly one line
#     cloudtrain-verify {"ok": true|false, "layer": ..., "message": ..., "device": ...}
# that the planner maps to BootstrapError(layer=...) (see cloudtrain/bootstrap/gpu.py), and
# exits 3 when a layer is broken.
# Inputs: CLOUDTRAIN_FRAMEWORK (torch | tensorflow | jax), CLOUDTRAIN_VENV, CLOUDTRAIN_MIN_DRIVER,
# CLOUDTRAIN_CUDA.

report_failure() {
    local layer="$1" message="${2//\"/\'}"
    printf 'cloudtrain-verify {"ok": false, "layer": "%s", "message": "%s"}\n' "$layer" "$message" | tee -a "$LOG"
    printf 'verify: error: %s\n' "$message" | tee -a "$LOG" >&2
    exit 3
}

if ! driver_loaded; then
    if nvidia_pci; then
        report_failure driver-not-loaded "an NVIDIA GPU is attached (PCI vendor 10de) but no driver answers (nvidia-smi fails): the driver is not installed or its module did not load; see the nvidia-driver step log, Secure Boot and dmesg"
    fi
    report_failure no-gpu "no NVIDIA GPU visible: no PCI device from NVIDIA (vendor 10de) and nvidia-smi fails (is a GPU attached to this VM?)"
fi
driver="$(driver_version)"
if [[ -n "${CLOUDTRAIN_MIN_DRIVER:-}" ]] && ! version_ge "$driver" "$CLOUDTRAIN_MIN_DRIVER"; then
    report_failure driver-too-old "driver $driver is too old for CUDA ${CLOUDTRAIN_CUDA:-?}, which needs $CLOUDTRAIN_MIN_DRIVER or newer"
fi
header="$(nvidia-smi 2>/dev/null || true)"
driver_cuda=""
if [[ "$header" =~ CUDA\ Version:\ *([0-9]+\.[0-9]+) ]]; then
    driver_cuda="${BASH_REMATCH[1]}"
fi
log "driver $driver loaded (supports CUDA up to ${driver_cuda:-unknown}); checking $CLOUDTRAIN_FRAMEWORK"

export CLOUDTRAIN_DRIVER="$driver" CLOUDTRAIN_DRIVER_CUDA="$driver_cuda"
set +e
"$CLOUDTRAIN_VENV/bin/python" - 2>&1 <<'PY' | tee -a "$LOG"
import importlib.util
import json
import os
import sys

framework = os.environ["CLOUDTRAIN_FRAMEWORK"]
driver_cuda = os.environ.get("CLOUDTRAIN_DRIVER_CUDA") or None


def key(v):
    return tuple(int(p) for p in str(v).split(".")[:2] if p.isdigit())


def report(ok, **fields):
    print("cloudtrain-verify " + json.dumps({"ok": ok, **fields}), flush=True)


def fail(layer, message):
    report(False, layer=layer, message=message)
    print("verify: error: " + message, file=sys.stderr, flush=True)
    sys.exit(3)


def needs_newer_driver(built):
    """The framework was built for a CUDA newer than the loaded driver can run."""
    return bool(built and driver_cuda and key(built) > key(driver_cuda))


def no_gpu(name, built):
    if needs_newer_driver(built):
        fail("driver-too-old", f"{name} is built for CUDA {built} but driver {os.environ.get('CLOUDTRAIN_DRIVER')} runs CUDA {driver_cuda} at most")
    fail("framework", f"{name} is a CUDA build but cannot use the GPU; see this log for its error")


N = 256
try:
    if framework == "torch":
        import torch

        name, built = f"torch {torch.__version__}", torch.version.cuda
        if not built:
            fail("framework-without-cuda", f"{name} is built without CUDA (a CPU wheel); install it from the CUDA wheel index")
        if not torch.cuda.is_available():
            no_gpu(name, built)
        x = torch.ones(N, N, device="cuda")
        value = float((x @ x).sum().item())
        device = torch.cuda.get_device_name(0)
    elif framework == "tensorflow":
        import tensorflow as tf

        name = f"tensorflow {tf.__version__}"
        built = tf.sysconfig.get_build_info().get("cuda_version")
        if not tf.test.is_built_with_cuda():
            fail("framework-without-cuda", f"{name} is built without CUDA (tensorflow-cpu?); install tensorflow[and-cuda]")
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            no_gpu(name, built)
        with tf.device("/GPU:0"):
            x = tf.ones((N, N))
            value = float(tf.reduce_sum(tf.matmul(x, x)))
        device = tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
    elif framework == "jax":
        import jax
        import jax.numpy as jnp

        name, built = f"jax {jax.__version__}", None
        try:
            devices = jax.devices("gpu")
        except RuntimeError as e:
            plugins = ("jax_cuda12_plugin", "jax_cuda13_plugin")
            if not any(importlib.util.find_spec(p) for p in plugins):
                fail("framework-without-cuda", f"{name} has no CUDA plugin; install jax[cuda12] or jax[cuda13]")
            fail("framework", f"{name} cannot use the GPU: {e}")
        x = jax.device_put(jnp.ones((N, N)), devices[0])
        value = float((x @ x).sum())
        device = devices[0].device_kind
    else:
        fail("framework", f"unknown framework {framework!r}")
except ImportError as e:
    fail("framework", f"{framework} does not import: {e}")

if value != float(N ** 3):
    fail("framework", f"a {N}x{N} matrix product on the GPU gave {value}, not {N ** 3}")
report(True, device=device, framework=name, cuda=built, driver=os.environ.get("CLOUDTRAIN_DRIVER"))
print(f"verify: {name} computed on {device}")
PY
status=$?
set -e
exit "$status"
