# shellcheck shell=bash
# Step fabric-manager: on an 8-GPU HGX board (A100/H100/H200 on NVSwitch) CUDA fails to start
# (error 802) until NVIDIA Fabric Manager runs. Its package must be the driver's exact version,
# so it is picked from apt by the driver that is there (kept, or installed by the step before).
# Inputs: CLOUDTRAIN_DRIVER_BRANCH ("580"), CLOUDTRAIN_FABRICMANAGER_PACKAGE
# (nvidia-fabricmanager-580), CLOUDTRAIN_DRIVER_VERSION (the kept driver's exact version;
# empty when this bootstrap installed the driver: then the loaded or installed module says).

FM_SERVICE=nvidia-fabricmanager

installed_driver() {
    local v
    v="$(driver_version)"
    if [[ -z "$v" ]]; then
        v="$(modinfo -F version nvidia 2>/dev/null || true)"
    fi
    printf '%s' "$v"
}

# The apt version of PACKAGE built for driver VERSION ("580.95.05-1"), or nothing.
apt_version_for() {
    local candidates line v
    candidates="$(apt-cache madison "$1" 2>/dev/null || true)"
    while IFS='|' read -r _ line _; do
        v="${line// /}"
        if [[ "$v" == "$2" || "$v" == "$2"-* ]]; then
            printf '%s' "$v"
            return 0
        fi
    done <<< "$candidates"
}

os_check
package="${CLOUDTRAIN_FABRICMANAGER_PACKAGE:?CLOUDTRAIN_FABRICMANAGER_PACKAGE is not set}"
branch="${CLOUDTRAIN_DRIVER_BRANCH:?CLOUDTRAIN_DRIVER_BRANCH is not set}"
driver="${CLOUDTRAIN_DRIVER_VERSION:-}"
if [[ -z "$driver" ]]; then
    driver="$(installed_driver)"
fi
[[ -n "$driver" ]] || die "no NVIDIA driver found to match Fabric Manager to; see the nvidia-driver step log"
[[ "$driver" == "$branch".* ]] || die "the node's driver $driver is not of the planned branch R$branch; run bootstrap again so it re-plans"

# shellcheck disable=SC2016  # ${Version} is dpkg-query's format field
have="$(dpkg-query -W -f='${Version}' "$package" 2>/dev/null || true)"
if pkg_installed "$package" && [[ "$have" == "$driver" || "$have" == "$driver"-* ]]; then
    log "$package $have already matches driver $driver: kept"
else
    ensure_cuda_repo
    apt_get update
    version="$(apt_version_for "$package" "$driver")"
    [[ -n "$version" ]] || die "NVIDIA's repository has no $package for driver $driver (Fabric Manager must match the driver exactly); use an image that ships it, or a driver version the repository still carries"
    log "installing $package=$version to match driver $driver"
    apt_get install --no-install-recommends "$package=$version"
fi
run systemctl enable "$FM_SERVICE"
run systemctl start "$FM_SERVICE"
systemctl is-active --quiet "$FM_SERVICE" || die "$FM_SERVICE did not start; see: journalctl -u $FM_SERVICE"
log "$FM_SERVICE is running (driver $driver)"
