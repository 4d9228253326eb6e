"""How a cloud node stops itself (bootstrap/node/selfstop.py), run as the watchdog runs it, in a
sandbox: a local HTTP server stands in for Azure's Instance Metadata Service and ARM, answering
with the documented shapes, and `shutdown` is a stand-in on PATH that records its arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from conftest import REPO

SELFSTOP = REPO / "cloudtrain" / "bootstrap" / "node" / "selfstop.py"
SUB, RG, VM = "00000000-1111-2222-3333-444444444444", "ct-test-rg1a2b3c", "ct-test-0"
RESOURCE = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/{VM}"
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.sandbox.token"


class Azure(BaseHTTPRequestHandler):
    """IMDS (Metadata: true required, as the real one) and ARM's deallocate (202 Accepted)."""

    calls: list[tuple[str, str, dict]] = []
    deallocate_status = 202

    def log_message(self, *args):  # quiet
        pass

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.calls.append(("GET", url.path, {"query": q, "metadata": self.headers.get("Metadata")}))
        if self.headers.get("Metadata") != "true":
            return self._json(400, {"error": "Bad request. Required metadata header not specified"})
        if url.path == "/metadata/instance/compute":
            return self._json(200, {"azEnvironment": "AzurePublicCloud", "location": "eastus", "name": VM, "resourceGroupName": RG,
                                    "resourceId": RESOURCE, "subscriptionId": SUB, "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
                                    "vmSize": "Standard_NC4as_T4_v3", "osType": "Linux"})
        if url.path == "/metadata/identity/oauth2/token":
            return self._json(200, {"access_token": TOKEN, "client_id": "c", "expires_in": "86399", "expires_on": "1506484173",
                                    "ext_expires_in": "86399", "not_before": "1506480273", "resource": q.get("resource"), "token_type": "Bearer"})
        self._json(404, {"error": "not found"})

    def do_POST(self):
        url = urlparse(self.path)
        self.calls.append(("POST", url.path, {"query": parse_qs(url.query), "auth": self.headers.get("Authorization")}))
        self.send_response(self.deallocate_status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def sandbox(tmp_path: Path):
    Azure.calls = []
    Azure.deallocate_status = 202
    server = ThreadingHTTPServer(("127.0.0.1", 0), Azure)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutdown = bin_dir / "shutdown"
    shutdown.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/shutdown.calls\n")
    shutdown.chmod(0o755)
    url = f"http://127.0.0.1:{server.server_port}"
    plain = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # straight to the stand-in
    env = {**plain, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CLOUDTRAIN_IMDS_URL": url, "CLOUDTRAIN_ARM_URL": url}
    try:
        yield tmp_path, env
    finally:
        server.shutdown()
        server.server_close()


def _selfstop(how: str, folder: Path, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-I", str(SELFSTOP), how, str(folder)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads((folder / "selfstop.json").read_text())


def test_azure_deallocates_its_own_vm_with_an_imds_token(sandbox) -> None:
    folder, env = sandbox
    done = _selfstop("azure-deallocate", folder, env)
    assert done["method"] == "deallocate" and done["status"] == 202
    (m, compute, meta), (t, token, tmeta), (p, post, pmeta) = Azure.calls
    assert (m, compute) == ("GET", "/metadata/instance/compute") and meta["metadata"] == "true"
    assert (t, token) == ("GET", "/metadata/identity/oauth2/token") and tmeta["query"]["resource"] == "https://management.azure.com/"
    assert (p, post) == ("POST", f"{RESOURCE}/deallocate") and pmeta["auth"] == f"Bearer {TOKEN}"
    assert pmeta["query"]["api-version"] == ["2024-11-01"]
    assert not (folder / "shutdown.calls").exists()  # deallocation powers it off; no OS shutdown first


def test_azure_falls_back_to_shutdown_and_says_the_vm_still_bills(sandbox) -> None:
    folder, env = sandbox
    Azure.deallocate_status = 403  # e.g. the role assignment has not replicated yet
    done = _selfstop("azure-deallocate", folder, env)
    assert done["method"] == "shutdown" and "deallocate failed" in done["error"] and "billed" in done["error"]
    assert (folder / "shutdown.calls").read_text().split() == ["-h", "now"]


def test_aws_and_gcp_shut_down(sandbox) -> None:
    folder, env = sandbox
    assert _selfstop("shutdown", folder, env)["method"] == "shutdown"
    assert (folder / "shutdown.calls").read_text().split() == ["-h", "now"]
    assert Azure.calls == []


@pytest.mark.parametrize("provider,method,can_stop", [("aws", "shutdown", True), ("gcp", "shutdown", True), ("azure", "azure-deallocate", True)])
def test_each_cloud_declares_its_watchdogs_stop(provider: str, method: str, can_stop: bool) -> None:
    """Each cloud stops where it can also see and start a stopped VM (observed_stop/start)."""
    from cloudtrain import provisioner

    prov = provisioner.get(provider)
    assert prov.can_stop is can_stop and prov.watchdog_systemd and prov.default_autostop_s == 3600
    assert prov.watchdog_stop_command(None, None, 0) == ["/usr/bin/python3", "{watchdog}/selfstop.py", method, "{watchdog}"]
