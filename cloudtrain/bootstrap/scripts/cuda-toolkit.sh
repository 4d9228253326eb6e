# shellcheck shell=bash
# Step cuda-toolkit: the planned CUDA toolkit from NVIDIA's repository, kept if already there.
# Inputs: CLOUDTRAIN_CUDA (X.Y), CLOUDTRAIN_CUDA_PACKAGE (cuda-toolkit-X-Y).

prefix="$ROOT/usr/local/cuda-$CLOUDTRAIN_CUDA"
os_check
if [[ -x "$prefix/bin/nvcc" ]]; then
    log "CUDA $CLOUDTRAIN_CUDA already at /usr/local/cuda-$CLOUDTRAIN_CUDA: kept"
    exit 0
fi
ensure_cuda_repo
apt_get update
apt_get install --no-install-recommends "$CLOUDTRAIN_CUDA_PACKAGE"
[[ -x "$prefix/bin/nvcc" ]] || die "$CLOUDTRAIN_CUDA_PACKAGE installed but /usr/local/cuda-$CLOUDTRAIN_CUDA/bin/nvcc is missing"
# Login shells find nvcc; jobs get the venv, which carries its own CUDA libraries.
mkdir -p "$ROOT/etc/profile.d"
printf 'export PATH="/usr/local/cuda-%s/bin:%s"\n' "$CLOUDTRAIN_CUDA" "\$PATH" > "$ROOT/etc/profile.d/cloudtrain-cuda.sh"
log "CUDA $CLOUDTRAIN_CUDA installed at /usr/local/cuda-$CLOUDTRAIN_CUDA"
