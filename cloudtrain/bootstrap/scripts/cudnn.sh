# shellcheck shell=bash
# Step cudnn: cuDNN for the planned CUDA major from NVIDIA's repository, kept if already there.
# Input: CLOUDTRAIN_CUDNN_PACKAGE (cudnn9-cuda-12 | cudnn9-cuda-13).

os_check
if pkg_installed "$CLOUDTRAIN_CUDNN_PACKAGE"; then
    log "$CLOUDTRAIN_CUDNN_PACKAGE already installed: kept"
    exit 0
fi
ensure_cuda_repo
apt_get update
apt_get install --no-install-recommends "$CLOUDTRAIN_CUDNN_PACKAGE"
log "$CLOUDTRAIN_CUDNN_PACKAGE installed"
