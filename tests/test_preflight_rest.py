"""The two real REST transports pre-flight uses (urllib with a bearer token for Azure, google-auth's
urllib3 transport for GCP) against a real HTTP server on loopback: the token goes out as a
bearer header, JSON comes back, and an error body becomes ApiError with the cloud's own code.
The error bodies are the clouds' documented shapes (see test_preflight_gcp/azure.py)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cloudtrain.provisioner.preflight import gcp
from cloudtrain.provisioner import rest as shared
from cloudtrain.provisioner.rest import ApiError, Unreachable

ROUTES = {
    "/ok": (200, {"value": [{"name": "Standard_NC4as_T4_v3"}]}),
    "/arm-denied": (403, {"error": {"code": "AuthorizationFailed", "message": "does not have authorization"}}),
    "/gce-missing": (404, {"error": {"code": 404, "message": "The resource 'x' was not found",
                                     "errors": [{"message": "The resource 'x' was not found", "domain": "global", "reason": "notFound"}]}}),
}


@pytest.fixture
def server():
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append({"path": self.path, "auth": self.headers.get("Authorization")})
            status, body = ROUTES.get(self.path, (500, {"error": {"code": "Boom", "message": "?"}}))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_bearer_rest_sends_the_token_and_reads_json(server):
    base, seen = server
    assert shared.bearer("tok-1").get(f"{base}/ok") == ROUTES["/ok"][1]
    assert seen[-1]["auth"] == "Bearer tok-1"


def test_bearer_rest_turns_an_arm_error_body_into_its_code(server):
    base, _ = server
    with pytest.raises(ApiError) as e:
        shared.bearer("tok-1").get(f"{base}/arm-denied")
    assert (e.value.status, e.value.code) == (403, "AuthorizationFailed")


def test_google_transport_signs_and_reads_the_reason(server):
    from google.oauth2.credentials import Credentials

    base, seen = server
    rest = shared.google(Credentials(token="ya29.test"))  # a valid token: no refresh, no network
    assert rest.get(f"{base}/ok") == ROUTES["/ok"][1]
    assert seen[-1]["auth"] == "Bearer ya29.test"
    with pytest.raises(ApiError) as e:
        rest.get(f"{base}/gce-missing")
    assert (e.value.status, e.value.code) == (404, "notFound")


def test_nothing_listening_is_unreachable():
    with socket.socket() as s:  # a port that was just free, closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unreachable):
        shared.bearer("t", timeout=5).get(f"http://127.0.0.1:{port}/ok")


def test_google_credentials_that_cannot_refresh_are_one_line(server):
    # No token and nothing to refresh it with: google-auth refuses before any request is sent.
    from google.oauth2.credentials import Credentials

    from cloudtrain.errors import PreflightError

    base, seen = server
    api = gcp._Api(shared.google(Credentials(token=None)), "proj-9")
    with pytest.raises(PreflightError) as e:
        api.get("projects/proj-9", "compute.projects.get", PreflightError("unused"))
    assert "Google rejected the credentials (refreshFailed)" in e.value.line() and "gcloud auth application-default login" in e.value.line()
    assert seen == []
