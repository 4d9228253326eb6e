"""The parsers of single flag values (--gpu, durations, sizes, --env, --secret, --ssh-cidr):
text in, a typed value out, or `BadInput` (exit 2) with what to write instead. `cloudtrain.spec`
re-exports them; the specs they feed live there.

Where the CLI and the Python API share a parser, its `flag` names the value as the caller
wrote it: `--gpu` (a flag) or `gpu` (a keyword argument); `said` writes it back either way.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

from cloudtrain.errors import BadInput


def cli_flag(key: str) -> str:
    """The CLI's flag for a spec field: `disk_gb` -> `--disk-gb` (`hosts` is `--host`, repeated)."""
    return "--" + {"hosts": "host"}.get(key, key).replace("_", "-")


def api_arg(key: str) -> str:
    """The Python API's name for a spec field: its keyword argument."""
    return key


def said(flag: str, value: object, quote: bool = False) -> str:
    """`value` as the caller writes it: `--nodes 2` for a flag, `nodes=2` for a keyword argument
    (its value as Python writes it); `quote` shows a flag's text as typed, quoted."""
    if flag.startswith("-"):
        return f"{flag} {value!r}" if quote else f"{flag} {value}"
    return f"{flag}={value!r}"


_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")
MIN_DURATION_S = 60  # a node that stops sooner would stop between a user's commands


def parse_duration(text: str, flag: str, allow_off: bool = True) -> int:
    """'30m', '2h', '1h30m', '1d' -> seconds; 'off' -> 0 (where allowed). At least one minute."""
    text = text.strip().lower()
    if allow_off and text == "off":
        return 0
    m = _DURATION.match(text)
    if not text or not m or not any(m.groups()):
        raise BadInput(f"invalid {said(flag, text, quote=True)}", "write a duration such as 30m, 2h or 1h30m" + (", or off" if allow_off else ""))
    days, hours, minutes = (int(g or 0) for g in m.groups())
    seconds = ((days * 24 + hours) * 60 + minutes) * 60
    if seconds < MIN_DURATION_S:
        raise BadInput(f"{said(flag, text)} is shorter than a minute", f"pass {said(flag, '1m')} or longer")
    return seconds


def format_duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def check_cidr(text: str, flag: str = "--ssh-cidr") -> str:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise BadInput(f"invalid {said(flag, text, quote=True)}", "write an address range such as 203.0.113.7/32") from e
    if net.version != 4:
        # AWS security groups take IPv6 ranges in a separate field (ipv6_cidr_blocks), GCP and
        # Azure nodes here have IPv4 public addresses only: an IPv6 range would admit nobody.
        raise BadInput(f"{said(flag, text)} is not an IPv4 range", "write an IPv4 range such as 203.0.113.7/32")
    if net.prefixlen == 0:
        raise BadInput(f"{said(flag, text)} opens SSH to the whole internet", "pass your own address, e.g. 203.0.113.7/32")
    return str(net)


def parse_gpu(text: str, flag: str = "--gpu") -> tuple[str, int]:
    """'a100:8' -> ('a100', 8); 't4' -> ('t4', 1)."""
    name, sep, count = text.strip().lower().partition(":")
    if not name:
        raise BadInput(f"invalid {said(flag, text, quote=True)}", "write NAME or NAME:COUNT, e.g. t4 or a100:8")
    if not sep:
        return name, 1
    if not count.isdigit() or int(count) < 1:
        raise BadInput(f"invalid GPU count in {said(flag, text, quote=True)}", "write NAME:COUNT with COUNT 1 or more, e.g. a100:8")
    return name, int(count)


def parse_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise BadInput(f"invalid --env {pair!r}", "write --env NAME=VALUE with NAME a shell variable name")
        env[key] = value
    return env


_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str, flag: str = "--max-upload") -> int:
    """'500M' -> 500 MiB in bytes; K/M/G/T are powers of 1024 (a trailing 'B' or 'iB' is allowed)."""
    m = _SIZE.match(text)
    if not m:
        raise BadInput(f"invalid {flag} {text!r}", f"write a size such as 500M or 2G, e.g. {flag} 2G")
    size = int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))
    if size <= 0:
        raise BadInput(f"{flag} {text} is not a positive size", f"write a size such as 500M or 2G, e.g. {flag} 2G")
    return size


_SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_secrets(items: list[str]) -> dict[str, str | None]:
    """`--secret NAME` (from the caller's environment) or `--secret NAME=@FILE`, checked now so a
    missing one is refused before anything exists; the value itself is read when the job starts."""
    found: dict[str, str | None] = {}
    for item in items:
        name, sep, source = item.partition("=")
        if not _SECRET_NAME.match(name) or (sep and not source.startswith("@")):
            raise BadInput(f"invalid --secret {item!r}", "write --secret NAME (its value from your environment) or --secret NAME=@FILE")
        if sep:
            path = Path(source[1:]).expanduser().resolve()
            if not path.is_file() or not os.access(path, os.R_OK):
                raise BadInput(f"--secret {name}: {source[1:]} is not a readable file", "name the file that holds the secret's value")
            found[name] = str(path)
        elif name not in os.environ:
            raise BadInput(f"secret {name} is not set in your environment", f"export {name}=... first, or pass --secret {name}=@FILE")
        else:
            found[name] = None
    return found
