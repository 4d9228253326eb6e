# shellcheck shell=bash
# Step verify (GPU nodes): check each layer from the bottom up, then run a tiny computation on
# the GPU in the installed framework and report the device. Prints exactly one line
#     cloudtrain-verify {"ok": true|false, "layer": ..., "message": ..., "device": ...}
# that the planner maps to BootstrapError(layer=...) (see cloudtrain/bootstrap/gpu.py), and
# exits 3 when a layer is broken. Layers: no-gpu, driver-not-loaded, driver-too-old,
# fabric-manager, framework-without-cuda, framework. An exception or a CUDA error the framework
# reports (a warning, an exception, or TensorFlow's native log) is mapped by its CUDA error code
# (CUDA_ERRORS below); its traceback goes to the step's log only.
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

export CLOUDTRAIN_DRIVER="$driver" CLOUDTRAIN_DRIVER_CUDA="$driver_cuda" CLOUDTRAIN_VERIFY_LOG="$LOG"
set +e
"$CLOUDTRAIN_VENV/bin/python" - 2>&1 <<'PY' | tee -a "$LOG"
import importlib.util
import json
import os
import re
import sys
import traceback
import warnings

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


# CUDA errors that name a layer below the framework. Codes and names from the CUDA runtime
# and driver API error enums (docs.nvidia.com/cuda/cuda-runtime-api/group__CUDART__TYPES.html:
# cudaErrorInsufficientDriver = 35, cudaErrorNoDevice = 100, cudaErrorSystemNotReady = 802,
# cudaErrorSystemDriverMismatch = 803; CUresult CUDA_ERROR_SYSTEM_NOT_READY = 802 ...), and
# the texts torch and jax wrap them in ("Error 802: system not yet initialized").
CUDA_ERRORS = (
    ("fabric-manager", r"(error|code)\W*802\b|system not yet initiali[sz]ed|SYSTEM_NOT_READY|SystemNotReady",
     "CUDA error 802 (system not yet initialized): on an NVSwitch system (8-GPU HGX) CUDA starts only once "
     "nvidia-fabricmanager, matched to the driver, runs"),
    ("driver-too-old", r"(error|code)\W*803\b|unsupported display driver / cuda driver combination|SYSTEM_DRIVER_MISMATCH|SystemDriverMismatch",
     "CUDA error 803 (display driver / CUDA driver mismatch): the driver's userspace and its loaded kernel module "
     "differ (an upgrade without a reboot?)"),
    ("driver-too-old", r"(error|code)\W*35\b|driver version is insufficient|INSUFFICIENT_DRIVER|InsufficientDriver|driver on your system is too old",
     "CUDA error 35 (driver older than the CUDA runtime)"),
    ("driver-not-loaded", r"(error|code)\W*100\b|no CUDA-capable device is detected|CUDA_ERROR_NO_DEVICE|cudaErrorNoDevice",
     "CUDA error 100 (no CUDA-capable device): the driver answers nvidia-smi but CUDA sees no device"),
)


def cuda_layer(text):
    """The (layer, what) a CUDA error text points to, or None."""
    for layer, pattern, what in CUDA_ERRORS:
        if re.search(pattern, text, re.IGNORECASE):
            return layer, what
    return None


def first_line(text):
    line = next((l.strip() for l in str(text).splitlines() if l.strip()), "")
    return line[:300]


def log_details(text):
    """The full error goes into the step's log only; the user gets one line naming the layer."""
    try:
        with open(os.environ.get("CLOUDTRAIN_VERIFY_LOG", os.devnull), "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    except OSError:
        pass


def fail_cuda(name, text):
    """A CUDA error from the framework: named after its layer, or the framework's own."""
    found = cuda_layer(text)
    if found:
        layer, what = found
        fail(layer, f"{name}: {what}; the framework said: {first_line(text)}")
    fail("framework", f"{name} cannot use the GPU: {first_line(text)}")


def needs_newer_driver(built):
    """The framework was built for a CUDA the loaded driver cannot run. Within a major version
    it can (NVIDIA's minor version compatibility: a 12.x build runs on any driver >= 525.60.13,
    13.x on >= 580.65.06), so only a newer major counts: a cu126 wheel runs on a 550 driver,
    whose nvidia-smi says CUDA 12.4."""
    return bool(built and driver_cuda and key(built)[:1] > key(driver_cuda)[:1])


def no_gpu(name, built, said=""):
    if needs_newer_driver(built):
        fail("driver-too-old", f"{name} is built for CUDA {built} but driver {os.environ.get('CLOUDTRAIN_DRIVER')} runs CUDA {driver_cuda} at most")
    if said and cuda_layer(said):
        fail_cuda(name, said)
    fail("framework", f"{name} is a CUDA build but cannot use the GPU; see this log for its error")


def capturing_stderr(fn):
    """fn() and what native code wrote to stderr meanwhile (TensorFlow logs a failed cuInit,
    e.g. CUDA_ERROR_SYSTEM_NOT_READY, from C++ and returns no GPU); the text still reaches the log."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            result = fn()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    sys.stderr.write(text)
    return result, text


def torch_available(torch):
    """torch.cuda.is_available() and what CUDA said: torch turns a failed cudaGetDeviceCount
    (error 802, 35...) into a warning and False, not an exception."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = torch.cuda.is_available()
    return ok, " ".join(str(w.message) for w in caught)


N = 256
try:
    if framework == "torch":
        import torch

        name, built = f"torch {torch.__version__}", torch.version.cuda
        if not built:
            fail("framework-without-cuda", f"{name} is built without CUDA (a CPU wheel); install it from the CUDA wheel index")
        ok, said = torch_available(torch)
        if not ok:
            no_gpu(name, built, said)
        x = torch.ones(N, N, device="cuda")
        value = float((x @ x).sum().item())
        device = torch.cuda.get_device_name(0)
    elif framework == "tensorflow":
        import tensorflow as tf

        name = f"tensorflow {tf.__version__}"
        built = tf.sysconfig.get_build_info().get("cuda_version")
        if not tf.test.is_built_with_cuda():
            fail("framework-without-cuda", f"{name} is built without CUDA (tensorflow-cpu?); install tensorflow[and-cuda]")
        gpus, said = capturing_stderr(lambda: tf.config.list_physical_devices("GPU"))
        if not gpus:
            no_gpu(name, built, said)
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
            fail_cuda(name, str(e))
        x = jax.device_put(jnp.ones((N, N)), devices[0])
        value = float((x @ x).sum())
        device = devices[0].device_kind
    else:
        fail("framework", f"unknown framework {framework!r}")
except ImportError as e:
    fail("framework", f"{framework} does not import: {e}")
except Exception as e:  # a CUDA runtime error raised mid-computation: name its layer, no traceback
    log_details(traceback.format_exc())
    fail_cuda(framework, f"{type(e).__name__}: {e}")

if value != float(N ** 3):
    fail("framework", f"a {N}x{N} matrix product on the GPU gave {value}, not {N ** 3}")
report(True, device=device, framework=name, cuda=built, driver=os.environ.get("CLOUDTRAIN_DRIVER"))
print(f"verify: {name} computed on {device}")
PY
status=$?
set -e
exit "$status"
