"""One error tree. Every failure a user can see is one of these, with one actionable line.

SDK, paramiko and socket errors are translated into these at the boundary that meets them
(`raise ... from e`), so nothing above that boundary matches on strings or foreign types.
The CLI maps `exit_code` to the process exit status: 2 for bad input (nothing created),
the job's own code for a failed job, 1 for everything else.
"""

from __future__ import annotations

from typing import Any


class CloudtrainError(Exception):
    """Base: `message` says what happened, `hint` what to do about it."""

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        """The one line a user sees."""
        text = self.message.rstrip(".")
        if not self.hint:
            return f"{text}."
        return f"{text}. {self.hint[0].upper()}{self.hint[1:]}"


class BadInput(CloudtrainError):
    """The user asked for something invalid; nothing was created or changed."""

    exit_code = 2


class NotFound(BadInput):
    """An unknown cluster, job or file named by the user."""


class DamagedRecord(CloudtrainError):
    """A record in the cloudtrain home cannot be read (truncated, garbled, wrong shape).
    Exit 1: the user did nothing wrong; the line names the file and what to do."""

    def __init__(self, message: str, hint: str | None = None, path: str | None = None) -> None:
        super().__init__(message, hint)
        self.path = path


class MissingTool(CloudtrainError):
    """A program cloudtrain needs on this machine is absent (sshd, the Pulumi CLI)."""


class ProvisionError(CloudtrainError):
    """Creating or destroying machines failed."""


class PreflightError(CloudtrainError):
    """A check before spending money failed (credentials, quota, offering); nothing created."""


class NotOffered(PreflightError):
    """The cloud's live answer: this size is not offered at this placement (zone/region) for
    this account. Another placement may offer it, so failover moves on instead of stopping."""

    def __init__(self, message: str, hint: str | None = None, placement: str | None = None) -> None:
        super().__init__(message, hint)
        self.placement = placement


class QuotaExceeded(PreflightError):
    """A quota is below what the cluster needs. Not capacity: failover stops, and the line names
    the quota and where to raise it."""


class NoCapacity(ProvisionError):
    """The cloud has no capacity for this size at this placement now (AWS
    InsufficientInstanceCapacity, GCP ZONE_RESOURCE_POOL_EXHAUSTED, Azure AllocationFailed, ...).
    Raised after the failed attempt's resources are removed; failover tries the next placement."""

    def __init__(self, message: str, hint: str | None = None, placement: str | None = None) -> None:
        super().__init__(message, hint)
        self.placement = placement


class RemoteError(CloudtrainError):
    """Talking to a node over SSH failed."""


class HostKeyMismatch(RemoteError):
    """The node presented a host key other than the pinned one: refuse, never trust."""


class CommandFailed(RemoteError):
    """A remote command exited non-zero; carries its `Result`."""

    def __init__(self, message: str, result: Any, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.result = result


class BootstrapError(CloudtrainError):
    """Making a node ready failed; `layer` names what is broken when known."""

    def __init__(self, message: str, hint: str | None = None, layer: str | None = None) -> None:
        super().__init__(message, hint)
        self.layer = layer


class JobFailed(CloudtrainError):
    """The user's job exited non-zero: cloudtrain exits with the job's own code."""

    def __init__(self, message: str, exit_code: int, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.exit_code = exit_code


class TransferError(CloudtrainError):
    """A file came home damaged or incomplete (sha256 mismatch)."""
