# shellcheck shell=bash
# Step nvidia-driver: the driver branch with the planned kernel-module flavour, for the kernel
# the reboot will boot; then hold the driver's own packages (never the kernel's). The bootstrap
# reboots after this step (Step.reboot_after) unless the step prints `cloudtrain-reboot: not
# needed` (a driver already loaded: nothing changed).
#
# Two ways in, the first that applies:
# 1. Canonical's prebuilt, signed modules (linux-modules-nvidia-<branch>-server[-open]-<kernel>,
#    plus the flavour's meta package so each kernel update brings its own) with the matching
#    userspace nvidia-utils-<branch>-server and libnvidia-compute-<branch>-server: no compiler,
#    and they load under Secure Boot (Ubuntu Server docs, "NVIDIA drivers installation":
#    documentation.ubuntu.com/server/how-to/graphics/ (the page on installing NVIDIA drivers)).
# 2. NVIDIA's repository with DKMS: the compiler the kernel was built with (a jammy 6.8 cloud
#    kernel is built with gcc-12, dkms alone pulls gcc-11), headers for the kernel that will
#    boot and its flavour's headers meta package (future kernels get theirs, DKMS rebuilds).
#    Refused under Secure Boot: the module it builds is unsigned.
#
# Inputs: CLOUDTRAIN_DRIVER_BRANCH (e.g. 580; else parsed from the pin or package name),
# CLOUDTRAIN_DRIVER_PACKAGE (nvidia-open-580 | cuda-drivers-580; from R590 on the unbranched
# nvidia-open | cuda-drivers), CLOUDTRAIN_DRIVER_PIN (from R590 on:
# nvidia-driver-pinning-<branch>, installed first so apt picks that branch; else empty),
# CLOUDTRAIN_KERNEL_MODULES (open | proprietary), CLOUDTRAIN_MIN_DRIVER, CLOUDTRAIN_CUDA.

HOLDS_FILE="$ROOT/etc/cloudtrain/driver-holds"
# Where the driver came from, for the steps after (Fabric Manager must be the driver's exact
# version, from the same archive) and the probe (fact driver_source).
DRIVER_RECORD="$ROOT/etc/cloudtrain/driver"
RELEASE_HOLDS="$ROOT/usr/local/sbin/cloudtrain-release-driver-holds"

driver_branch() {
    local branch="${CLOUDTRAIN_DRIVER_BRANCH:-}"
    if [[ -z "$branch" && "${CLOUDTRAIN_DRIVER_PIN:-}" =~ -([0-9]+)$ ]]; then branch="${BASH_REMATCH[1]}"; fi
    if [[ -z "$branch" && "${CLOUDTRAIN_DRIVER_PACKAGE:-}" =~ -([0-9]+)$ ]]; then branch="${BASH_REMATCH[1]}"; fi
    if [[ -z "$branch" ]]; then branch="${CLOUDTRAIN_MIN_DRIVER%%.*}"; fi
    printf '%s' "$branch"
}

# installed PATTERN...: names of installed packages matching the patterns.
installed() {
    local out p status
    # shellcheck disable=SC2016  # dpkg-query format fields
    out="$(dpkg-query -W -f='${Package} ${Status}\n' "$@" 2>/dev/null || true)"
    while read -r p status; do
        if [[ -n "$p" && "$status" == *" installed" ]]; then printf '%s\n' "$p"; fi
    done <<< "$out"
}

# The kernel the reboot boots: the newest installed one (an upgrade may be pending), which
# is not always the running one.
boot_kernel() {
    local running images
    running="$(uname -r)"
    images="$(installed 'linux-image-[0-9]*' 'linux-image-unsigned-[0-9]*')"
    images="${images//linux-image-unsigned-/}"
    printf '%s\n%s\n' "$running" "${images//linux-image-/}" | grep -E '^[0-9]' | sort -V | tail -n1
}

# The kernel flavour's meta package names in use (aws, gcp, azure, generic, generic-hwe-22.04...):
# the installed linux-image-<meta> packages whose name starts with the boot kernel's flavour.
kernel_metas() {
    local flavour="$1" p
    while read -r p; do
        p="${p#linux-image-}"
        if [[ -n "$p" && "$p" == "$flavour"* ]]; then printf '%s\n' "$p"; fi
    done <<< "$(installed "linux-image-$flavour*")"
    printf '%s\n' "$flavour"
}

# apt's candidate version of a package, or failure when the archive has none.
apt_candidate() {
    local line
    while read -r line; do
        if [[ "$line" == Candidate:* ]]; then
            line="${line#Candidate: }"
            if [[ -n "$line" && "$line" != "(none)" ]]; then
                printf '%s' "$line"
                return 0
            fi
        fi
    done <<< "$(apt-cache policy "$1" 2>/dev/null || true)"
    return 1
}

# 580.95.05-0ubuntu0.22.04.2 -> 580.95.05
upstream() { local v="${1#*:}"; printf '%s' "${v%%-*}"; }

# Sets SIGNED to the packages of Canonical's signed prebuilt modules for the boot kernel, or
# fails saying why not (then DKMS is the way).
SIGNED=()
signed_modules() {
    local branch="$1" boot="$2" flavour="$3" kind="server" abi userspace meta
    if [[ "$CLOUDTRAIN_KERNEL_MODULES" == "open" ]]; then kind="server-open"; fi
    abi="linux-modules-nvidia-$branch-$kind-$boot"
    if ! apt_candidate "$abi" >/dev/null; then
        log "Ubuntu publishes no signed prebuilt modules for kernel $boot ($abi)"
        return 1
    fi
    if ! userspace="$(apt_candidate "nvidia-utils-$branch-server")"; then
        log "Ubuntu's archive has $abi but not nvidia-utils-$branch-server"
        return 1
    fi
    if ! version_ge "$(upstream "$userspace")" "$CLOUDTRAIN_MIN_DRIVER"; then
        log "Ubuntu's R$branch server driver is $(upstream "$userspace"), older than the $CLOUDTRAIN_MIN_DRIVER CUDA $CLOUDTRAIN_CUDA needs"
        return 1
    fi
    SIGNED=("$abi")
    while read -r meta; do
        if [[ -n "$meta" ]] && apt_candidate "linux-modules-nvidia-$branch-$kind-$meta" >/dev/null; then
            SIGNED+=("linux-modules-nvidia-$branch-$kind-$meta")
            break
        fi
    done <<< "$(kernel_metas "$flavour")"
    SIGNED+=("nvidia-utils-$branch-server" "libnvidia-compute-$branch-server")
}

# gcc-N the boot kernel was built with (its config's CONFIG_CC_VERSION_TEXT, else
# /proc/version), or nothing when neither says.
kernel_compiler() {
    local boot="$1" text=""
    if [[ -r "$ROOT/boot/config-$boot" ]]; then
        text="$(grep -E '^CONFIG_CC_VERSION_TEXT=' "$ROOT/boot/config-$boot" || true)"
    fi
    if [[ -z "$text" && -r "$ROOT/proc/version" ]]; then
        text="$(< "$ROOT/proc/version")"
    fi
    if [[ "$text" =~ gcc-([0-9]+) || "$text" =~ gcc\ version\ ([0-9]+) || "$text" =~ gcc\ \(Ubuntu\ ([0-9]+)\. ]]; then
        printf 'gcc-%s' "${BASH_REMATCH[1]}"
    fi
}

secure_boot_on() {
    local state
    command -v mokutil >/dev/null 2>&1 || return 1
    state="$(mokutil --sb-state 2>/dev/null || true)"
    [[ "$state" == *"SecureBoot enabled"* ]]
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

driver_packages() { installed 'nvidia-*' 'libnvidia-*' 'cuda-drivers*' 'linux-modules-nvidia-*'; }

# Hold what this step installed, so an unattended upgrade can't swap the userspace under the
# loaded module ("Driver/library version mismatch") or an unpinned branch under a pinned one.
# Not held: kernels and the meta packages that keep kernel and signed modules in step, so
# security updates keep flowing. The list and a command that releases it stay on the node.
hold_driver() {
    local before="$1" p held=() all
    while read -r p; do
        if [[ -z "$p" || $'\n'"$before"$'\n' == *$'\n'"$p"$'\n'* ]]; then continue; fi
        if [[ "$p" == linux-modules-nvidia-* && ! "$p" =~ -[0-9]+\.[0-9]+\.[0-9]+-[0-9]+- ]]; then continue; fi
        held+=("$p")
    done <<< "$(driver_packages)"
    if (( ${#held[@]} == 0 )); then
        return 0
    fi
    run apt-mark hold "${held[@]}"
    mkdir -p "$(dirname "$HOLDS_FILE")" "$(dirname "$RELEASE_HOLDS")"
    printf '%s\n' "${held[@]}" >> "$HOLDS_FILE"
    all="$(sort -u "$HOLDS_FILE")"
    {
        printf '#!/bin/sh\n# Written by cloudtrain (nvidia-driver step): releases the holds it put on the driver packages.\nset -e\n'
        printf 'apt-mark unhold %s\n' "${all//$'\n'/ }"
        # shellcheck disable=SC2016  # expanded when the written script runs
        printf 'rm -f "${CLOUDTRAIN_SYSROOT:-}/etc/cloudtrain/driver-holds" "$0"\n'
    } > "$RELEASE_HOLDS"
    chmod 0755 "$RELEASE_HOLDS"
    log "held ${held[*]}; release with: sudo cloudtrain-release-driver-holds"
}

# refuse_driver VERSION STATE: a driver already there is too old for the planned CUDA.
refuse_driver() {
    die "driver $1 $2 but CUDA $CLOUDTRAIN_CUDA needs >= $CLOUDTRAIN_MIN_DRIVER; cloudtrain never replaces a driver it did not install: use an image with a newer driver or an older --cuda (see: cloudtrain compat --driver $1)"
}

os_check
nvidia_pci || die "no NVIDIA GPU visible: no PCI device from NVIDIA (vendor 10de) is attached (is a GPU attached to this VM?)"
# Whatever installs at first boot (cloud-init, the cloud's own driver installer,
# unattended-upgrades) finishes before anything here is decided.
wait_for_first_boot
wait_for_apt

if driver_loaded; then
    have="$(driver_version)"
    if version_ge "$have" "$CLOUDTRAIN_MIN_DRIVER"; then
        log "driver $have already loaded (CUDA $CLOUDTRAIN_CUDA needs >= $CLOUDTRAIN_MIN_DRIVER): nothing to install"
        printf 'cloudtrain-reboot: not needed (driver %s already loaded)\n' "$have" | tee -a "$LOG"
        exit 0
    fi
    refuse_driver "$have" "is loaded"
fi

# A driver installed but not loaded yet: ours, from a run cut off before its reboot, or the
# image's own first-boot install. The reboot loads it; installing a second one beside it
# would fight it.
present="$(modinfo -F version nvidia 2>/dev/null || true)"
if [[ -n "$present" ]]; then
    if version_ge "$present" "$CLOUDTRAIN_MIN_DRIVER"; then
        log "driver $present is installed but not loaded yet; the reboot that follows loads it"
        exit 0
    fi
    refuse_driver "$present" "is installed (not yet loaded)"
fi

branch="$(driver_branch)"
boot="$(boot_kernel)"
flavour="${boot#*-*-}"
if [[ "$boot" != "$(uname -r)" ]]; then
    log "kernel $boot is installed and boots next (running: $(uname -r)): the driver is set up for it"
fi
before="$(driver_packages)"
apt_get update
if signed_modules "$branch" "$boot" "$flavour"; then
    log "installing Canonical's signed prebuilt R$branch modules ($CLOUDTRAIN_KERNEL_MODULES) for kernel $boot: ${SIGNED[*]}"
    apt_get install --no-install-recommends "${SIGNED[@]}"
    source="ubuntu-signed"
else
    if secure_boot_on; then
        die "Secure Boot is enabled and no signed prebuilt NVIDIA R$branch module exists for kernel $boot, so a DKMS-built (unsigned) module would not load; disable Secure Boot for the VM or use a deep-learning image (--image dl)"
    fi
    compiler="$(kernel_compiler "$boot")"
    build=(dkms "${compiler:-gcc}" "linux-headers-$boot")
    while read -r meta; do
        if [[ -n "$meta" ]] && apt_candidate "linux-headers-$meta" >/dev/null; then
            build+=("linux-headers-$meta")
            break
        fi
    done <<< "$(kernel_metas "$flavour")"
    log "building the R$branch module with DKMS ($CLOUDTRAIN_DRIVER_PACKAGE, $CLOUDTRAIN_KERNEL_MODULES modules) for kernel $boot with ${compiler:-the default gcc (no compiler named in the kernel config or /proc/version)}"
    apt_get install --no-install-recommends "${build[@]}"
    ensure_cuda_repo
    if [[ -n "${CLOUDTRAIN_DRIVER_PIN:-}" ]]; then
        apt_get install "$CLOUDTRAIN_DRIVER_PIN"
    fi
    # Compute only: the recommends are X and desktop libraries.
    apt_get install --no-install-recommends "$CLOUDTRAIN_DRIVER_PACKAGE"
    source="nvidia-dkms"
fi
mkdir -p "$(dirname "$DRIVER_RECORD")"
printf 'source=%s\nbranch=%s\nmodules=%s\nkernel=%s\n' "$source" "$branch" "$CLOUDTRAIN_KERNEL_MODULES" "$boot" > "$DRIVER_RECORD"
blacklist_nouveau
hold_driver "$before"
log "driver installed; the node reboots now to load it"
