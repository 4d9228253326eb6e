# shellcheck shell=bash disable=SC2329
# (SC2329: a helper library; each step uses only some of these functions.)
# Shared helpers for the GPU step scripts. cloudtrain/bootstrap/gpu.py prepends this file to
# each step's own script, so a step is one self-contained bash text (run with set -euo pipefail).
#
# Inputs (exported by the bootstrap before the script runs):
#   CLOUDTRAIN_STEP, CLOUDTRAIN_LOG_DIR   log to $CLOUDTRAIN_LOG_DIR/<step>.log (comes home)
#   CLOUDTRAIN_OS                         planned OS, e.g. ubuntu-22.04 (checked against os-release)
# Overridable so the scripts can run in a test sandbox:
#   CLOUDTRAIN_OS_RELEASE (default /etc/os-release), CLOUDTRAIN_SYSROOT (prefix for files read
#   or written, default none), CLOUDTRAIN_APT_LOCK_TIMEOUT / _POLL (seconds),
#   CLOUDTRAIN_FIRST_BOOT_TIMEOUT / _POLL (seconds: cloud-init and a cloud's driver installer).

ROOT="${CLOUDTRAIN_SYSROOT:-}"
OS_RELEASE="${CLOUDTRAIN_OS_RELEASE:-$ROOT/etc/os-release}"
STEP="${CLOUDTRAIN_STEP:-gpu}"
LOG_DIR="${CLOUDTRAIN_LOG_DIR:-/var/log/cloudtrain}"
mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/$STEP.log"
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a

log() { printf '%s %s: %s\n' "$(date -u +%H:%M:%S)" "$STEP" "$*" | tee -a "$LOG"; }

# The last line of a failed step is what the user sees: make it the reason.
die() { printf '%s: error: %s\n' "$STEP" "$*" | tee -a "$LOG" >&2; exit 1; }

# Run a command, echoing it and its output into the log; pipefail keeps its exit status.
run() {
    log "+ $*"
    "$@" 2>&1 | tee -a "$LOG"
}

# version_ge A B: A >= B for dotted versions (580.65.06, 12.9).
version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }

os_check() {
    local id version
    [[ -r "$OS_RELEASE" ]] || die "cannot read $OS_RELEASE to tell which OS this is"
    # shellcheck disable=SC1090  # the path is chosen at run time
    id="$(. "$OS_RELEASE" && printf '%s' "${ID:-}")"
    # shellcheck disable=SC1090
    version="$(. "$OS_RELEASE" && printf '%s' "${VERSION_ID:-}")"
    if [[ -n "${CLOUDTRAIN_OS:-}" && "$id-$version" != "$CLOUDTRAIN_OS" ]]; then
        die "planned for $CLOUDTRAIN_OS but the node runs $id-$version; run bootstrap again so it re-plans"
    fi
}

# A PCI device from NVIDIA (vendor 10de) is attached, driver or not. sysfs first: minimal
# images lack lspci. No pipe into grep -q: with pipefail an early-exiting grep can fail the
# pipeline.
nvidia_pci() {
    local vendor devices
    for vendor in "$ROOT"/sys/bus/pci/devices/*/vendor; do
        if [[ -r "$vendor" && "$(< "$vendor")" == "0x10de" ]]; then
            return 0
        fi
    done
    devices="$(lspci -n 2>/dev/null || true)"
    [[ "$devices" == *" 10de:"* ]]
}

driver_loaded() { nvidia-smi --query-gpu=driver_version --format=csv,noheader >/dev/null 2>&1; }

driver_version() {
    local out
    out="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null || true)"
    printf '%s' "${out%%$'\n'*}"
}

pkg_installed() {
    local status
    # shellcheck disable=SC2016  # ${Status} is dpkg-query's format field, not a shell variable
    status="$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]]
}

# unattended-upgrades holds the dpkg lock for minutes after first boot (AWS, Azure): wait
# for it visibly rather than fail, and still give apt-get its own lock timeout for races.
apt_locked() {
    if command -v fuser >/dev/null 2>&1; then
        fuser /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock /var/cache/apt/archives/lock >/dev/null 2>&1
    else
        pgrep -x 'apt|apt-get|dpkg|unattended-upgr' >/dev/null 2>&1
    fi
}

wait_for_apt() {
    local timeout="${CLOUDTRAIN_APT_LOCK_TIMEOUT:-900}" poll="${CLOUDTRAIN_APT_LOCK_POLL:-5}" start=$SECONDS said=0
    while apt_locked; do
        if (( SECONDS - start >= timeout )); then
            die "the apt/dpkg lock is still held after ${timeout}s (unattended-upgrades?); run bootstrap again once it is free"
        fi
        if (( ! said )); then
            log "waiting for the apt/dpkg lock (unattended-upgrades runs at first boot)"
            said=1
        fi
        sleep "$poll"
    done
    if (( said )); then log "apt/dpkg lock free after $(( SECONDS - start ))s"; fi
}

# What a cloud image runs at first boot besides unattended-upgrades: cloud-init's final stage,
# and GCP's driver installer (what the DL images' driver metadata starts, or the
# compute-gpu-installation installer run from a startup script). That installer can
# download for minutes without holding the dpkg lock, so the lock alone says nothing.
# The bracketed first letters keep the pattern from matching the text of this very script.
FIRST_BOOT_PROCESSES='[i]nstall-driver|[i]nstall_driver|[i]nstall-nvidia-driver|[c]uda_installer'
FIRST_BOOT_UNITS="${CLOUDTRAIN_FIRST_BOOT_UNITS:-google-startup-scripts.service google-c2d-startup.service}"

# Prints what first-boot installer still runs (a unit starting, or a process), if any.
first_boot_installer() {
    local unit state pids
    if command -v systemctl >/dev/null 2>&1; then
        for unit in $FIRST_BOOT_UNITS; do
            # A oneshot unit is "activating" while its script runs; "active" once done.
            state="$(systemctl show -p ActiveState --value "$unit" 2>/dev/null || true)"
            if [[ "$state" == "activating" ]]; then
                printf '%s' "$unit"
                return 0
            fi
        done
    fi
    pids="$(pgrep -f "$FIRST_BOOT_PROCESSES" 2>/dev/null || true)"
    if [[ -n "$pids" ]]; then
        printf 'process %s' "${pids//$'\n'/,}"
        return 0
    fi
    return 1
}

wait_for_first_boot() {
    local timeout="${CLOUDTRAIN_FIRST_BOOT_TIMEOUT:-1800}" poll="${CLOUDTRAIN_FIRST_BOOT_POLL:-5}" start=$SECONDS said=0 what rc=0
    if command -v cloud-init >/dev/null 2>&1; then
        # Bounded: an image whose cloud-init never finishes must not hang the bootstrap.
        timeout "$timeout" cloud-init status --wait >/dev/null 2>&1 || rc=$?
        if (( rc == 124 )); then
            log "cloud-init is still running after ${timeout}s; going on (apt waits for its lock)"
        elif (( rc != 0 )); then
            log "cloud-init finished with errors (exit $rc; see cloud-init status --long); going on"
        fi
    fi
    while what="$(first_boot_installer)"; do
        if (( SECONDS - start >= timeout )); then
            die "the cloud's first-boot driver installer ($what) still runs after ${timeout}s; run bootstrap again once it has finished"
        fi
        if (( ! said )); then
            log "waiting for the image's first-boot driver installer ($what) to finish before deciding anything"
            said=1
        fi
        sleep "$poll"
    done
    if (( said )); then log "first-boot installer done after $(( SECONDS - start ))s"; fi
}

apt_get() {
    wait_for_apt
    run apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold -y -q "$@"
}

# A source file that already names NVIDIA's CUDA repository (a DL image may set it up with its
# own key file, without cuda-keyring): adding cuda-keyring's entry beside it makes apt refuse
# every update with "Conflicting values set for option Signed-By".
cuda_repo_file() {
    local f
    for f in "$ROOT"/etc/apt/sources.list "$ROOT"/etc/apt/sources.list.d/*.list "$ROOT"/etc/apt/sources.list.d/*.sources; do
        if [[ -r "$f" ]] && grep -qE '^[^#]*developer\.download\.nvidia\.com/compute/cuda/repos' "$f"; then
            printf '%s' "${f#"$ROOT"}"
            return 0
        fi
    done
    return 1
}

# NVIDIA's CUDA apt repository, through its cuda-keyring package (once per node).
ensure_cuda_repo() {
    local url="${CLOUDTRAIN_CUDA_KEYRING_URL:?CLOUDTRAIN_CUDA_KEYRING_URL is not set}" tmp file
    if pkg_installed cuda-keyring; then
        return 0
    fi
    if file="$(cuda_repo_file)"; then
        log "NVIDIA's CUDA repository is already configured in $file (without cuda-keyring): used as it is"
        return 0
    fi
    log "adding NVIDIA's CUDA apt repository from $url"
    tmp="$(mktemp -d)"
    if command -v curl >/dev/null 2>&1; then
        run curl -fsSL --retry 3 -o "$tmp/cuda-keyring.deb" "$url"
    else
        run wget -q -O "$tmp/cuda-keyring.deb" "$url"
    fi
    apt_get install "$tmp/cuda-keyring.deb"
    rm -rf "$tmp"
    apt_get update
}
