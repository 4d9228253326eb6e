# shellcheck shell=bash
# Step nvidia-driver: kernel headers, NVIDIA's repository, the driver branch with the planned
# kernel-module flavour, then hold driver and kernel packages so unattended upgrades can't
# break the DKMS module. The bootstrap reboots after this step (Step.reboot_after).
# Inputs: CLOUDTRAIN_DRIVER_PACKAGE (nvidia-open-580 | cuda-drivers-580; from R590 on the
# unbranched nvidia-open | cuda-drivers), CLOUDTRAIN_DRIVER_PIN (from R590 on:
# nvidia-driver-pinning-<branch>, installed first so apt picks that branch; else empty),
# CLOUDTRAIN_KERNEL_MODULES (open | proprietary), CLOUDTRAIN_MIN_DRIVER, CLOUDTRAIN_CUDA.

hold_driver_and_kernel() {
    local kernel held=() p flavour kind installed
    kernel="$(uname -r)"
    for p in "linux-image-$kernel" "linux-headers-$kernel" "linux-modules-$kernel"; do
        if pkg_installed "$p"; then held+=("$p"); fi
    done
    for flavour in generic virtual aws gcp azure oracle kvm; do
        for kind in linux-image- linux-headers- linux-; do
            if pkg_installed "$kind$flavour"; then held+=("$kind$flavour"); fi
        done
    done
    # shellcheck disable=SC2016  # dpkg-query format fields
    installed="$(dpkg-query -W -f='${Package} ${Status}\n' 'nvidia-*' 'libnvidia-*' 'cuda-drivers*' 2>/dev/null || true)"
    while read -r p _ _ status; do
        if [[ -n "$p" && "$status" == "installed" ]]; then held+=("$p"); fi
    done <<< "$installed"
    run apt-mark hold "${held[@]}"
}

blacklist_nouveau() {
    local conf="$ROOT/etc/modprobe.d/blacklist-nouveau.conf"
    if [[ -f "$conf" ]]; then
        return 0
    fi
    log "blacklisting nouveau so the NVIDIA module can bind the GPU after the reboot"
    mkdir -p "$(dirname "$conf")"
    printf 'blacklist nouveau\noptions nouveau modeset=0\n' > "$conf"
    run update-initramfs -u
}

secure_boot_check() {
    local state
    if ! command -v mokutil >/dev/null 2>&1; then
        return 0
    fi
    state="$(mokutil --sb-state 2>/dev/null || true)"
    if [[ "$state" == *"SecureBoot enabled"* ]]; then
        die "Secure Boot is enabled, so the unsigned DKMS-built NVIDIA module would not load; disable Secure Boot for the VM or use a deep-learning image (--image dl)"
    fi
}

# refuse_driver VERSION STATE: a driver already there is too old for the planned CUDA.
refuse_driver() {
    die "driver $1 $2 but CUDA $CLOUDTRAIN_CUDA needs >= $CLOUDTRAIN_MIN_DRIVER; cloudtrain never replaces a driver it did not install: use an image with a newer driver or an older --cuda (see: cloudtrain compat --driver $1)"
}

os_check
nvidia_pci || die "no NVIDIA GPU visible: no PCI device from NVIDIA (vendor 10de) is attached (is a GPU attached to this VM?)"
# Whatever installs at first boot (unattended-upgrades, the cloud's own driver installer)
# finishes before anything here is decided.
wait_for_apt

if driver_loaded; then
    have="$(driver_version)"
    if version_ge "$have" "$CLOUDTRAIN_MIN_DRIVER"; then
        log "driver $have already loaded (CUDA $CLOUDTRAIN_CUDA needs >= $CLOUDTRAIN_MIN_DRIVER): nothing to install"
        exit 0
    fi
    refuse_driver "$have" "is loaded"
fi

# A driver installed but not loaded yet: ours, from a run cut off before its reboot, or the
# image's own first-boot install (GCP's install-nvidia-driver). The reboot loads it; installing
# a second one beside it would fight it.
installed="$(modinfo -F version nvidia 2>/dev/null || true)"
if [[ -n "$installed" ]]; then
    if version_ge "$installed" "$CLOUDTRAIN_MIN_DRIVER"; then
        log "driver $installed is installed but not loaded yet; the reboot that follows loads it"
        exit 0
    fi
    refuse_driver "$installed" "is installed (not yet loaded)"
fi

secure_boot_check
log "installing the NVIDIA driver: $CLOUDTRAIN_DRIVER_PACKAGE ($CLOUDTRAIN_KERNEL_MODULES kernel modules)"
apt_get update
apt_get install --no-install-recommends "linux-headers-$(uname -r)" dkms
blacklist_nouveau
ensure_cuda_repo
if [[ -n "${CLOUDTRAIN_DRIVER_PIN:-}" ]]; then
    apt_get install "$CLOUDTRAIN_DRIVER_PIN"
fi
apt_get install "$CLOUDTRAIN_DRIVER_PACKAGE"
hold_driver_and_kernel
log "driver installed; the node reboots now to load it"
