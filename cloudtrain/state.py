"""The cloudtrain home: one folder per cluster (record, keys, provider state), job records, locks.

Layout under `$CLOUDTRAIN_HOME` (default `~/.cloudtrain`):

    clusters/<name>/cluster.json     ClusterRecord: spec, nodes, provider state, status
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
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from cloudtrain import keys
from cloudtrain.errors import BadInput, NotFound
from cloudtrain.machine import Cluster
from cloudtrain.spec import ClusterSpec, check_cluster_name


def home() -> Path:
    return Path(os.environ.get("CLOUDTRAIN_HOME") or Path.home() / ".cloudtrain").expanduser().resolve()


def _write_json(path: Path, data: Any) -> None:
    # Write-then-rename so a crash never leaves a half-written record.
    # A temp name of its own: two processes saving one record must not share a temp file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@dataclass
class ClusterRecord:
    spec: ClusterSpec
    cluster: Cluster | None = None  # None until the provisioner hands nodes back
    provider_state: dict[str, Any] = field(default_factory=dict)
    status: str = "creating"  # creating | ready | destroying
    created_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "cluster": self.cluster.to_dict() if self.cluster else None,
            "provider_state": self.provider_state,
            "status": self.status,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClusterRecord":
        return cls(
            spec=ClusterSpec.from_dict(data["spec"]),
            cluster=Cluster.from_dict(data["cluster"]) if data.get("cluster") else None,
            provider_state=data.get("provider_state", {}),
            status=data.get("status", "ready"),
            created_at=data.get("created_at", 0.0),
        )


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

    def exists(self) -> bool:
        return self.record_path.exists()

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        for sub in (self.provider_dir, self.logs_dir):
            sub.mkdir(exist_ok=True)
        if not self.identity_file.exists():
            keys.write_pair(self.identity_file, comment=f"cloudtrain-{self.name}")

    def client_public_key(self) -> str:
        return keys.public_line(self.identity_file)

    def load(self) -> ClusterRecord:
        try:
            return ClusterRecord.from_dict(json.loads(self.record_path.read_text()))
        except FileNotFoundError as e:
            raise NotFound(f"unknown cluster {self.name!r}", "see `cloudtrain status` for the clusters that exist") from e

    def save(self, record: ClusterRecord) -> None:
        _write_json(self.record_path, record.to_dict())
        if record.cluster:
            self.write_known_hosts(record.cluster)

    def write_known_hosts(self, cluster: Cluster) -> None:
        lines = []
        for node in cluster.nodes:
            key_type, body = keys.key_type_and_body(node.host_key)
            host = node.host if node.port == 22 else f"[{node.host}]:{node.port}"
            lines.append(f"{host} {key_type} {body}")
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Serialize up/down/bootstrap on one cluster across processes."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root.parent / f".{self.name}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


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
        return ClusterDir(self.clusters_dir / check_cluster_name(name))

    def cluster_names(self) -> list[str]:
        if not self.clusters_dir.is_dir():
            return []
        return sorted(p.name for p in self.clusters_dir.iterdir() if (p / "cluster.json").exists())

    def resolve(self, name: str | None) -> ClusterDir:
        """The named cluster, or the only one when no name is given."""
        if name is not None:
            cdir = self.cluster_dir(name)
            if not cdir.exists():
                raise NotFound(f"unknown cluster {name!r}", "see `cloudtrain status` for the clusters that exist")
            return cdir
        names = self.cluster_names()
        if len(names) == 1:
            return self.cluster_dir(names[0])
        if not names:
            raise NotFound("no cluster exists", "create one with `cloudtrain up --provider local`")
        raise BadInput(f"{len(names)} clusters exist ({', '.join(names)})", "pass --cluster NAME")

    def save_job(self, job_id: str, data: dict[str, Any]) -> None:
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.jobs_dir / f"{job_id}.json", data)

    def load_job(self, job_id: str) -> dict[str, Any]:
        path = self.jobs_dir / f"{job_id}.json"
        if "/" in job_id or not path.exists():
            raise NotFound(f"unknown job {job_id!r}", "see `cloudtrain status` for recent jobs")
        return json.loads(path.read_text())

    def job_ids(self) -> list[str]:
        if not self.jobs_dir.is_dir():
            return []
        return sorted(p.stem for p in self.jobs_dir.glob("*.json"))
