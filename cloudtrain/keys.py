"""ed25519 key pairs: the per-cluster client key and the host keys cloudtrain pins."""

from __future__ import annotations

import os
from pathlib import Path



def generate(comment: str = "") -> tuple[str, str]:
    """A new key pair as (OpenSSH private key text, OpenSSH public key line)."""
    # Here, not at the top: `status` and `--help` load this module and never make a key.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return private, f"{public} {comment}".strip()


def write_pair(private_path: Path, comment: str = "") -> str:
    """Write a new pair at `private_path` (0600, folder 0700) and `.pub` beside it; return the public line."""
    private_path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(private_path.parent, 0o700)
    private, public = generate(comment)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private)
    private_path.with_suffix(".pub").write_text(public + "\n")
    return public


def public_line(private_path: Path) -> str:
    return private_path.with_suffix(".pub").read_text().strip()


def key_type_and_body(public: str) -> tuple[str, str]:
    """'ssh-ed25519 AAAA... comment' -> ('ssh-ed25519', 'AAAA...')."""
    parts = public.split()
    return parts[0], parts[1]
