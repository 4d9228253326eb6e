# shellcheck shell=bash
# Step python-venv: Debian and Ubuntu ship Python's venv module (with ensurepip) as its own
# package. It is often the first apt use on a fresh VM, while unattended-upgrades still holds
# the lock, so it goes through common.sh's apt_get, which waits for it.

apt_get update
apt_get install --no-install-recommends python3-venv
