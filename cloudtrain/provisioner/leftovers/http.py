"""A bearer-token HTTP client for the Azure sweep: any method, and the status and headers back.

Pre-flight's `BearerRest` only GETs JSON; a sweep also DELETEs, and must see a 202's `Location`
/ `Azure-AsyncOperation` / `Retry-After` headers to wait for the long-running operation. HTTP
error statuses come back as replies (the caller decides on status and the cloud's error code);
no answer at all raises `Unreachable`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloudtrain.provisioner.preflight.rest import Unreachable, error_from_body

__all__ = ["BearerHttp", "Http", "Reply", "Unreachable"]


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


class Http(Protocol):
    def request(self, method: str, url: str) -> Reply: ...


class BearerHttp:
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
