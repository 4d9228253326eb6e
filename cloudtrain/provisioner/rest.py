"""The one REST client cloudtrain talks to GCP and Azure through (pre-flight, the leftover
sweeps, seeing and starting stopped clusters): no cloud SDK beyond the credential.

Two layers. A `Transport` sends one request and hands back a `Reply` (status, headers, body),
whatever the status: `Bearer` signs with an Azure Resource Manager token over urllib, `Google`
with the application default credentials over google-auth's urllib3 transport. `Rest` on top
reads JSON, turns an error status into `ApiError` (status, the cloud's own error code, its
message) and follows pages. No answer at all is `Unreachable`. Callers decide on status and
code, never on message text; a test injects a transport (or an object with `get`) of its own.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol


class ApiError(Exception):
    """A cloud answered with an HTTP error. `code` is the cloud's error code or reason
    (GCP `errors[0].reason`, e.g. notFound / accessNotConfigured; Azure `error.code`)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def brief(self) -> str:
        """`HTTP 400 resourceInUseByAnotherResource`: what a line naming many failures shows."""
        return f"HTTP {self.status} {self.code}"


class Unreachable(Exception):
    """No HTTP answer at all (DNS, TLS, connection refused, timeout)."""


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


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    raw: bytes = b""

    def json(self) -> Any:
        try:
            return json.loads(self.raw or b"null")
        except ValueError:
            return None

    def error_code(self) -> str:
        """The cloud's own error code (`error.code`), else the HTTP status."""
        return error_from_body(self.status, self.raw).code


class Transport(Protocol):
    def request(self, method: str, url: str) -> Reply: ...


class Bearer:
    """Any method with a bearer token over urllib (stdlib): Azure Resource Manager needs nothing more."""

    def __init__(self, token: str, timeout: float = 60.0) -> None:
        self._token = token
        self._timeout = timeout

    def request(self, method: str, url: str) -> Reply:
        req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
        except urllib.error.HTTPError as e:
            return Reply(e.code, {k.lower(): v for k, v in (e.headers or {}).items()}, e.read())
        except (urllib.error.URLError, OSError) as e:
            raise Unreachable(str(e)) from e


class Google:
    """Requests signed with Google credentials (refreshed as needed) through google-auth's
    urllib3 transport (urllib3 comes with botocore)."""

    def __init__(self, credentials: Any, timeout: float = 60.0) -> None:
        from google.auth.transport.urllib3 import AuthorizedHttp

        self._http = AuthorizedHttp(credentials)
        self._timeout = timeout

    def request(self, method: str, url: str) -> Reply:
        from google.auth.exceptions import GoogleAuthError, TransportError
        from urllib3.exceptions import HTTPError

        try:
            resp = self._http.request(method, url, timeout=self._timeout)
        except (TransportError, HTTPError) as e:  # no answer, from the API or the token endpoint
            raise Unreachable(str(e)) from e
        except GoogleAuthError as e:  # the token refresh itself was refused (revoked, expired)
            raise ApiError(401, "refreshFailed", str(e)) from e
        return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.data)


def with_query(url: str, **params: str) -> str:
    """`url` with `params` added to its query string, encoded."""
    return url + ("&" if "?" in url else "?") + urllib.parse.urlencode(params)


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Rest:
    """JSON over a transport; an error status raises ApiError."""

    def __init__(self, transport: Transport, cloud: str = "the cloud") -> None:
        self.transport = transport
        self.cloud = cloud

    def call(self, method: str, url: str) -> Any:
        reply = self.transport.request(method, url)
        if reply.status >= 400:
            raise error_from_body(reply.status, reply.raw)
        return reply.json()

    def get(self, url: str) -> Any:
        return self.call("GET", url)

    def post(self, url: str) -> Any:
        return self.call("POST", url)

    def delete(self, url: str) -> Any:
        return self.call("DELETE", url)

    def pages(self, url: str) -> Iterator[dict[str, Any]]:
        """Each page of a list: GCP's `nextPageToken` asks again with `pageToken`; ARM's
        `nextLink` is a whole URL, followed only on the same origin (the token goes with it)."""
        first = url
        while True:
            page = self.get(url) or {}
            yield page
            if page.get("nextPageToken"):
                url = with_query(first, pageToken=page["nextPageToken"])
            elif page.get("nextLink"):
                url = same_origin(page["nextLink"], first, self.cloud)
            else:
                return


def same_origin(link: str, base: str, cloud: str = "the cloud") -> str:
    """A link a cloud handed back (nextLink, Location) must stay where `base` is: the token goes with it."""
    if not link.startswith(_origin(base) + "/"):
        raise RuntimeError(f"{cloud} answered with a link outside {_origin(base)}: {link[:120]}")
    return link


def bearer(token: str, timeout: float = 30.0) -> Rest:
    return Rest(Bearer(token, timeout), "Azure")


def google(credentials: Any, timeout: float = 30.0) -> Rest:
    return Rest(Google(credentials, timeout), "GCP")
