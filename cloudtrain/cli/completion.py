"""Shell completion (`cloudtrain --install-completion`): cluster names and job ids, read from the
cloudtrain home's folder listing only. A completion runs on every Tab press, so nothing here
loads a record, opens a connection or imports paramiko."""

from __future__ import annotations

from cloudtrain.state import Store


def _matching(names: list[str], incomplete: str) -> list[str]:
    return [n for n in names if n.startswith(incomplete)]


def cluster_names(incomplete: str) -> list[str]:
    try:
        return _matching(Store().cluster_names(), incomplete)
    except OSError:  # an unreadable home completes nothing rather than printing a traceback
        return []


def job_ids(incomplete: str) -> list[str]:
    try:
        # Newest first: job ids end in their submit time, the one just started is the one wanted.
        return _matching(sorted(Store().job_ids(), key=_submitted, reverse=True), incomplete)
    except OSError:
        return []


def _submitted(job_id: str) -> str:
    parts = job_id.rsplit("-", 3)  # <script>-YYYYMMDD-HHMMSS-<random>
    return "-".join(parts[1:3]) if len(parts) == 4 else ""
