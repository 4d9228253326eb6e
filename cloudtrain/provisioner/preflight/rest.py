"""The one interface GCP and Azure pre-flight read their clouds through: `get(url) -> JSON`.

Pre-flight only reads (GET), so a thin REST client is all it needs; no cloud SDK. A test
injects an object with the same `get` whose answers are shaped like the real REST responses.
HTTP failures surface as `ApiError` (status, the cloud's own error code, its message), so the
cloud modules decide on codes, never on message text.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Protocol


class ApiError(Exception):
    """A cloud answered with an HTTP error. `code` is the cloud's error code or reason
    (GCP `errors[0].reason`, e.g. notFound / accessNotConfigured; Azure `error.code`)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Unreachable(Exception):
    """No HTTP answer at all (DNS, TLS, connection refused, timeout)."""


class Rest(Protocol):
    def get(self, url: str) -> Any: ...


def error_from_body(status: int, body: bytes) -> ApiError:
    """Both clouds wrap errors as {"error": {...}}: GCP with `errors[].reason`, Azure with `code`."""
    try:
        err = json.loads(body or b"{}").get("error", {})
    except (ValueError, AttributeError):
        err = {}
    if not isinstance(err, dict):
        err = {"message": str(err)}
    reasons = err.get("errors") or [{}]
    code = (reasons[0].get("reason") if isinstance(reasons[0], dict) else None) or str(err.get("code") or err.get("status") or status)
    return ApiError(status, code, str(err.get("message") or body[:200].decode("utf-8", "replace")))


class BearerRest:
    """GET with a bearer token over urllib (stdlib): Azure Resource Manager needs nothing more."""

    def __init__(self, token: str, timeout: float = 30.0) -> None:
        self._token = token
        self._timeout = timeout

    def get(self, url: str) -> Any:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            raise error_from_body(e.code, e.read()) from e
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise Unreachable(str(e)) from e
