"""How a cloud node stops itself, run ON the node by its watchdog (stdlib only):
`python3 selfstop.py shutdown|azure-deallocate WATCHDOG_DIR`.

shutdown: `shutdown -h now`. On AWS (the instance's shutdown behaviour is `stop`, set by the
Pulumi program) and GCP (a guest shutdown stops the VM) this stops billing for the machine.

azure-deallocate: an OS shutdown leaves an Azure VM allocated and billed, so the node asks
Azure to deallocate it. Its system-assigned identity (granted deallocate on this VM only by
the Pulumi program) gets a token from the Instance Metadata Service, the VM's resource id comes
from IMDS instance metadata, and ARM's `POST .../virtualMachines/<vm>/deallocate` does the
rest. Should any of that fail, the node shuts down anyway (it stops computing; Azure still bills
the allocation, which `cloudtrain status` then shows) and selfstop.json says why.

CLOUDTRAIN_IMDS_URL / CLOUDTRAIN_ARM_URL point the calls elsewhere: for tests only.
"""

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

IMDS = "http://169.254.169.254"
ARM = "https://management.azure.com"
IMDS_API = "2021-02-01"  # instance metadata; the identity endpoint's documented version below
TOKEN_API = "2018-02-01"
COMPUTE_API = "2024-11-01"  # the compute API the Pulumi program speaks (provisioner/azure.py)
TIMEOUT_S = 20


def _imds(path, query):
    base = os.environ.get("CLOUDTRAIN_IMDS_URL", IMDS)
    url = f"{base}{path}?{urllib.parse.urlencode(query)}"
    # IMDS must never go through a proxy (Azure IMDS docs), and wants `Metadata: true`.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, headers={"Metadata": "true"}), timeout=TIMEOUT_S) as r:
        return json.loads(r.read().decode())


def azure_deallocate():
    """Ask ARM to deallocate this VM; return the HTTP status (2xx: accepted)."""
    compute = _imds("/metadata/instance/compute", {"api-version": IMDS_API, "format": "json"})
    resource = compute.get("resourceId") or (
        f"/subscriptions/{compute['subscriptionId']}/resourceGroups/{compute['resourceGroupName']}"
        f"/providers/Microsoft.Compute/virtualMachines/{compute['name']}"
    )
    token = _imds("/metadata/identity/oauth2/token", {"api-version": TOKEN_API, "resource": ARM + "/"})["access_token"]
    url = f"{os.environ.get('CLOUDTRAIN_ARM_URL', ARM)}{resource}/deallocate?api-version={COMPUTE_API}"
    req = urllib.request.Request(url, data=b"", method="POST", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:  # 202 Accepted: Azure powers it off
        return r.status


def _record(folder, data):
    path = os.path.join(folder, "selfstop.json")
    with open(path + ".tmp", "w") as f:
        json.dump({**data, "at": time.time()}, f)
    os.replace(path + ".tmp", path)


def main(how, folder):
    if how == "azure-deallocate":
        try:
            status = azure_deallocate()
            _record(folder, {"method": "deallocate", "status": status})
            return 0
        except Exception as e:  # noqa: BLE001 - any failure: still stop computing, say why
            _record(folder, {"method": "shutdown", "error": f"deallocate failed: {e!r}; the VM stays allocated and billed"})
    else:
        _record(folder, {"method": "shutdown"})
    return subprocess.call(["shutdown", "-h", "now"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
