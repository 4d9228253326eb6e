"""The caller's public address, the default --ssh-cidr: SSH opens to this machine only."""

from __future__ import annotations

import ipaddress
from urllib.error import URLError
from urllib.request import urlopen

from cloudtrain.errors import PreflightError

ECHO_URL = "https://checkip.amazonaws.com"


def public_cidr(timeout: float = 5.0) -> str:
    """'203.0.113.7/32' (or /128 for IPv6), from an address echo service."""
    try:
        with urlopen(ECHO_URL, timeout=timeout) as resp:  # noqa: S310 fixed https URL
            text = resp.read(100).decode().strip()
        addr = ipaddress.ip_address(text)
    except (URLError, OSError, ValueError) as e:
        raise PreflightError("could not find this machine's public address", "pass --ssh-cidr YOUR.ADDRESS/32") from e
    return f"{addr}/{addr.max_prefixlen}"
