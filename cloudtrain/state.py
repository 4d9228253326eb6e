"""The cloudtrain home: one folder per cluster (record, keys, provider state), job records, locks.

Everything is private (0600 / 0700, whatever the umask) and records are written atomically
and durably (safefile.py). A damaged record is `DamagedRecord`, for that cluster or job only.

Layout under `$CLOUDTRAIN_HOME` (default `~/.cloudtrain`):

    clusters/<name>/cluster.json     ClusterRecord: spec, nodes, provider state, status
    clusters/<name>/provider.txt     which provisioner made it: `down --force` needs it when the
                                     record is damaged
    clusters/.destroyed/<name>.json  tombstone: when a cluster of that name was destroyed
    clusters/<name>/keys/id_ed25519  the cluster's client key (0600 in a 0700 folder)
    clusters/<name>/known_hosts      pinned host keys, OpenSSH format
    clusters/<name>/provider/        the provisioner's own files (local: sshd configs, node roots)
    clusters/<name>/logs/            bootstrap logs that come home with the cluster's records
    jobs/<job-id>.json               where a job ran and where its outputs land
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from cloudtrain import keys, safefile
from cloudtrain.errors import BadInput, DamagedRecord, NotFound
from cloudtrain.machine import Cluster
from cloudtrain.spec import ClusterSpec, check_existing_name


def home() -> Path:
    return Path(os.environ.get("CLOUDTRAIN_HOME") or Path.home() / ".cloudtrain").expanduser().resolve()


@dataclass
class ClusterRecord:
    spec: ClusterSpec
    cluster: Cluster | None = None  # None until the provisioner hands nodes back
    provider_state: dict[str, Any] = field(default_factory=dict)
    status: str = "creating"  # creating | ready | stopped (by its watchdog) | destroying
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None  # the last (re)start; None: created_at
    ran_s: float = 0.0  # running time before the last start: what billed, for "cost so far"

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "cluster": self.cluster.to_dict() if self.cluster else None,
            "provider_state": self.provider_state,
            "status": self.status,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ran_s": self.ran_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClusterRecord":
        return cls(
            spec=ClusterSpec.from_dict(data["spec"]),
            cluster=Cluster.from_dict(data["cluster"]) if data.get("cluster") else None,
            provider_state=data.get("provider_state", {}),
            status=data.get("status", "ready"),
            created_at=data.get("created_at", 0.0),
            started_at=data.get("started_at"),
            ran_s=data.get("ran_s", 0.0),
        )

    def running_s(self, stopped_at: float | None = None) -> float:
        """How long the cluster's machines have run in all: billed time."""
        since = self.started_at or self.created_at
        return self.ran_s + max(0.0, (stopped_at or time.time()) - since)


class ClusterDir:
    """One cluster's folder in the home."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = root.name

    @property
    def record_path(self) -> Path:
        return self.root / "cluster.json"

    @property
    def identity_file(self) -> Path:
        return self.root / "keys" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def provider_dir(self) -> Path:
        return self.root / "provider"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def provider_marker(self) -> Path:
        return self.root / "provider.txt"

    def exists(self) -> bool:
        return self.record_path.exists()

    def found(self) -> bool:
        """Something of this cluster is on disk: a record (maybe damaged) or a provider marker."""
        return self.record_path.exists() or self.provider_marker.exists()

    def create(self, provider: str | None = None) -> None:
        for sub in (self.root, self.provider_dir, self.logs_dir, self.identity_file.parent):
            safefile.private_dir(sub)
        if provider is not None:
            safefile.write_text(self.provider_marker, provider + "\n")
        if not self.identity_file.exists():
            keys.write_pair(self.identity_file, comment=f"cloudtrain-{self.name}")
            os.chmod(self.identity_file.with_suffix(".pub"), safefile.FILE_MODE)

    def provider_name(self) -> str | None:
        """Which provisioner made this cluster, from the marker written at create time."""
        try:
            return self.provider_marker.read_text().strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def client_public_key(self) -> str:
        return keys.public_line(self.identity_file)

    def damaged_hint(self) -> str:
        return f"`cloudtrain down --force --cluster {self.name}` removes the cluster from what its provider can find"

    def load(self) -> ClusterRecord:
        try:
            data = safefile.read_json(self.record_path, f"the record of cluster {self.name}", self.damaged_hint())
        except FileNotFoundError as e:
            raise NotFound(f"unknown cluster {self.name!r}", "see `cloudtrain status` for the clusters that exist") from e
        try:
            if not isinstance(data, dict):
                raise TypeError(f"it holds {json.dumps(data)[:20]}")
            return ClusterRecord.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError, BadInput) as e:
            # Valid JSON of the wrong shape (`{}`, `null`, a field cut off): as damaged as garbage.
            why = f"no field {e}" if isinstance(e, KeyError) else str(e)
            raise DamagedRecord(
                f"the record of cluster {self.name} {self.record_path} is damaged (not a cluster record: {why})",
                self.damaged_hint(),
                str(self.record_path),
            ) from e

    def save(self, record: ClusterRecord) -> None:
        safefile.write_json(self.record_path, record.to_dict())
        if record.cluster:
            self.write_known_hosts(record.cluster)

    def write_known_hosts(self, cluster: Cluster) -> None:
        lines = []
        for node in cluster.nodes:
            key_type, body = keys.key_type_and_body(node.host_key)
            host = node.host if node.port == 22 else f"[{node.host}]:{node.port}"
            lines.append(f"{host} {key_type} {body}")
        safefile.write_text(self.known_hosts, "\n".join(lines) + "\n")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Serialize up/down/bootstrap on one cluster across processes. The lock file sits
        beside the cluster's folder, so waiting for it never makes the folder appear."""
        fd = safefile.open_lock(self.root.parent / f".{self.name}.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


class Store:
    """The whole home: clusters and job records."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or home()

    @property
    def clusters_dir(self) -> Path:
        return self.root / "clusters"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    def cluster_dir(self, name: str) -> ClusterDir:
        return ClusterDir(self.clusters_dir / check_existing_name(name))

    @property
    def tombstones_dir(self) -> Path:
        return self.clusters_dir / ".destroyed"

    def cluster_names(self) -> list[str]:
        """Every cluster found on disk, its record readable or not."""
        if not self.clusters_dir.is_dir():
            return []
        return sorted(p.name for p in self.clusters_dir.iterdir() if not p.name.startswith(".") and ClusterDir(p).found())

    def unknown_cluster(self, name: str) -> NotFound:
        names = self.cluster_names()
        there = f"the clusters that exist: {', '.join(names)}" if names else "no cluster exists"
        return NotFound(f"unknown cluster {name!r}", f"{there} (see `cloudtrain status`)")

    def resolve(self, name: str | None) -> ClusterDir:
        """The named cluster, or the only one when no name is given."""
        if name is not None:
            cdir = self.cluster_dir(name)
            if not cdir.found():
                raise self.unknown_cluster(name)
            return cdir
        names = self.cluster_names()
        if len(names) == 1:
            return self.cluster_dir(names[0])
        if not names:
            raise NotFound("no cluster exists", "create one with `cloudtrain up --provider local`")
        raise BadInput(f"{len(names)} clusters exist ({', '.join(names)})", "pass --cluster NAME")

    def bury(self, name: str, data: dict[str, Any]) -> None:
        """Remember that cluster `name` was destroyed, so a later `down` of it is not a typo."""
        safefile.write_json(self.tombstones_dir / f"{check_existing_name(name)}.json", {**data, "destroyed_at": time.time()})

    def tombstone(self, name: str) -> dict[str, Any] | None:
        path = self.tombstones_dir / f"{check_existing_name(name)}.json"
        try:
            data = safefile.read_json(path, "tombstone", "")
        except FileNotFoundError:
            return None
        except DamagedRecord:
            return {}  # it was destroyed; only the details are lost
        return data if isinstance(data, dict) else {}

    def unbury(self, name: str) -> None:
        (self.tombstones_dir / f"{check_existing_name(name)}.json").unlink(missing_ok=True)

    def save_job(self, job_id: str, data: dict[str, Any]) -> None:
        safefile.write_json(self.jobs_dir / f"{job_id}.json", data)

    def load_job(self, job_id: str) -> dict[str, Any]:
        path = self.jobs_dir / f"{job_id}.json"
        if "/" in job_id or not path.exists():
            raise NotFound(f"unknown job {job_id!r}", "see `cloudtrain status` for recent jobs")
        hint = f"delete {path} if the job's outputs are home; it is skipped meanwhile"
        data = safefile.read_json(path, f"the record of job {job_id}", hint)
        if not isinstance(data, dict):
            raise DamagedRecord(f"the record of job {job_id} {path} is damaged (not a job record)", hint, str(path))
        return data

    def job_ids(self) -> list[str]:
        if not self.jobs_dir.is_dir():
            return []
        return sorted(p.stem for p in self.jobs_dir.glob("*.json"))
