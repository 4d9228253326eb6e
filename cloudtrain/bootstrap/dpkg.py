"""Finish what an interrupted dpkg left half-done, before any apt step runs.

dpkg killed mid-configure (a hung-up SSH session, a reboot during an install) leaves
/var/lib/dpkg/updates/ non-empty or packages that `dpkg --audit` lists, and every later
apt-get then stops with "dpkg was interrupted, you must manually run 'dpkg --configure -a'".
"""

from __future__ import annotations

from cloudtrain.bootstrap.steps import Step

# CLOUDTRAIN_SYSROOT prefixes the files read, as in common.sh (the sandbox's root).
_SCRIPT = r"""
updates="${CLOUDTRAIN_SYSROOT:-}/var/lib/dpkg/updates"
if ! command -v dpkg >/dev/null 2>&1; then echo "no dpkg here"; exit 0; fi
if [ -z "$(ls -A "$updates" 2>/dev/null)" ] && [ -z "$(dpkg --audit 2>/dev/null)" ]; then
  echo "dpkg is consistent"
  exit 0
fi
echo "dpkg was interrupted before; finishing it: dpkg --configure -a"
for _ in 1 2 3 4 5 6 7 8 9 10 11 12; do
  # Fails while another dpkg (unattended-upgrades at first boot) holds the lock: wait for it.
  if DEBIAN_FRONTEND=noninteractive dpkg --configure -a; then exit 0; fi
  echo "dpkg --configure -a failed; retrying in 10s"
  sleep 10
done
exit 1
"""

REPAIR = Step(
    "dpkg-repair",
    "finish an interrupted dpkg (dpkg --configure -a) when one is found",
    script=_SCRIPT,
    env={"CLOUDTRAIN_STEP": "dpkg-repair", "DEBIAN_FRONTEND": "noninteractive"},
    sudo=True,
)
