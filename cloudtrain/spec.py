"""What the user asked for, typed and validated before anything is created.

Everything here raises `BadInput` (exit 2). Cloud-specific checks (GPU offered, region,
quota) live with the catalog and the provisioners; this module owns what is common.
"""

from __future__ import annotations

import contextvars
import hashlib
import re
import sys
import types
from os import path as os_path
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from cloudtrain.errors import BadInput
from cloudtrain.spec_parse import (  # noqa: F401 - re-exported: callers import them from here
    MIN_DURATION_S,
    api_arg,
    check_cidr,
    cli_flag,
    format_duration,
    parse_duration,
    parse_env,
    parse_gpu,
    parse_secrets,
    parse_size,
    said,
)

FRAMEWORKS = ("torch", "tensorflow", "jax", "none")
IMAGES = ("dl", "ubuntu")
LAUNCHERS = ("auto", "torchrun", "none")  # auto: torchrun for torch on several nodes or GPUs
LOGS = ("rank0", "all")  # what `run` streams: rank 0's log, or every node's with a prefix
# A letter first (GCP resource names are RFC 1035 labels: `[a-z]([-a-z0-9]*[a-z0-9])?`, at most
# 63 characters); 40 at most, so every name a cloud program derives fits its cloud's limit: the
# longest is GCP's `<name>-placement-<7 random>` (57 of 63); Azure's VM and computer names
# `<name>-<rank>` (+ Pulumi's 8-character suffix) stay under its 64.
NAME_MAX = 40
_NAME = re.compile(rf"^[a-z](?:[a-z0-9-]{{0,{NAME_MAX - 2}}}[a-z0-9])?$")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!*-]*$")


# The rule before names had to start with a letter. A cluster made under it must stay reachable
# (`status`, `down`: it may be billing), though no new cluster may take such a name.
_EARLIER_NAME = re.compile(rf"^[a-z0-9](?:[a-z0-9-]{{0,{NAME_MAX - 2}}}[a-z0-9])?$")
_reading_record: contextvars.ContextVar[bool] = contextvars.ContextVar("cloudtrain_reading_record", default=False)


def check_existing_name(name: str) -> str:
    """A name to look a cluster up by on disk: today's rule or the earlier one (a digit first)."""
    if _NAME.match(name) or _EARLIER_NAME.match(name):
        return name
    return check_cluster_name(name)


def check_cluster_name(name: str) -> str:
    if _reading_record.get() and _EARLIER_NAME.match(name):
        return name
    if not _NAME.match(name):
        raise BadInput(
            f"invalid cluster name {name!r}",
            f"use 1-{NAME_MAX} characters from [a-z0-9-], starting with a letter and ending with a letter or digit",
        )
    return name


@dataclass(frozen=True)
class FrameworkSpec:
    name: str  # one of FRAMEWORKS
    version: str | None = None  # exact pin, e.g. "2.13.0"

    @classmethod
    def parse(cls, text: str, flag: str = "--framework") -> "FrameworkSpec":
        name, sep, version = text.strip().partition("==")
        name = name.strip().lower()
        if name not in FRAMEWORKS:
            raise BadInput(
                f"unknown framework {text!r}",
                f"choose one of {', '.join(FRAMEWORKS)}, optionally pinned as NAME==VERSION",
            )
        version = version.strip() or None
        if sep and (version is None or not _VERSION.match(version)):
            raise BadInput(f"invalid framework version in {text!r}", "write it as NAME==VERSION, e.g. torch==2.13.0")
        if name == "none" and version:
            raise BadInput("framework 'none' takes no version", f"write {said(flag, 'none')}")
        return cls(name, version)

    def __str__(self) -> str:
        return f"{self.name}=={self.version}" if self.version else self.name


def check_shape(nodes: int, gpu_count: int, image: str, disk_gb: int, ssh_cidr: str | None, names: Callable[[str], str] = cli_flag) -> None:
    """The ClusterSpec's own checks; `names` (cli_flag, api_arg) names the fields as the caller does."""
    if nodes < 1:
        raise BadInput(f"{names('nodes')} must be at least 1, got {nodes}", f"pass {said(names('nodes'), 1)} or more")
    if gpu_count < 1:
        raise BadInput(f"GPU count must be at least 1, got {gpu_count}", f"write {names('gpu')} as NAME or NAME:COUNT")
    if image not in IMAGES:
        raise BadInput(f"unknown {names('image')} {image!r}", f"choose one of {', '.join(IMAGES)}")
    if not 10 <= disk_gb <= 16384:
        raise BadInput(f"disk size {disk_gb} GB is out of range", f"pass {names('disk_gb')} between 10 and 16384")
    if ssh_cidr is not None:
        check_cidr(ssh_cidr, names("ssh_cidr"))


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    provider: str
    nodes: int = 1
    framework: FrameworkSpec = field(default_factory=lambda: FrameworkSpec("torch"))
    gpu: str | None = None  # catalog name, e.g. "t4"; None on the local provider
    gpu_count: int = 1
    cuda: str | None = None  # requested CUDA "X.Y", else the resolver chooses
    cuda_toolkit: bool = False  # GPU nodes also get a system CUDA toolkit and cuDNN (default: driver only)
    region: str | None = None
    zone: str | None = None
    spot: bool = False
    disk_gb: int = 100
    image: str = "dl"
    ssh_cidr: str | None = None  # None: the caller's public address /32
    autostop_s: int | None = None  # stop after this long idle; 0 = off; None = the provider's default
    max_duration_s: int | None = None  # stop this long after `up` whatever runs; None = no deadline
    hosts: tuple[str, ...] = ()  # the user's own machines, "user@host[:port]" (provider ssh)
    identity: str | None = None  # private key for those machines (absolute path); None: ~/.ssh's

    def __post_init__(self) -> None:
        object.__setattr__(self, "hosts", tuple(self.hosts))  # a record's JSON list compares equal
        check_cluster_name(self.name)
        check_shape(self.nodes, self.gpu_count, self.image, self.disk_gb, self.ssh_cidr)

    def watchdog_settings(self, default_autostop_s: int | None) -> tuple[int, int]:
        """(autostop, deadline) in seconds, 0 meaning off, the provider's default autostop filled in."""
        autostop = (default_autostop_s or 0) if self.autostop_s is None else self.autostop_s
        return autostop, self.max_duration_s or 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["framework"] = str(self.framework)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClusterSpec":
        """A spec read back from a record: its name may follow the earlier naming rule."""
        data = dict(data)
        data["framework"] = FrameworkSpec.parse(data.get("framework", "torch"))
        token = _reading_record.set(True)
        try:
            return cls(**data)
        finally:
            _reading_record.reset(token)


OUTPUT_MODES = ("merge", "replace")
def check_output(output: str | Path | None, mode: str | None) -> Path | None:
    """--output as an absolute path (None: the default ./runs/<job-id>) and its --output-mode."""
    out = Path(output).expanduser().resolve() if output else None
    if out is not None and out.exists() and not out.is_dir():
        raise BadInput(f"--output {output} exists and is not a folder", "name a folder (it is created if missing)")
    if mode is not None and mode not in OUTPUT_MODES:
        raise BadInput(f"unknown --output-mode {mode!r}", "choose merge (keep other files) or replace (empty a folder cloudtrain made)")
    if mode is not None and out is None:
        raise BadInput("--output-mode needs --output", "the default ./runs/<job-id> is new for every job; pass --output DIR with it")
    return out


@dataclass(frozen=True)
class JobSpec:
    script: Path  # absolute path on this machine, inside workdir; a link stays a link (its folder ships)
    workdir: Path  # absolute; shipped to the node
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    output: Path | None = None  # default ./runs/<job-id>
    detach: bool = False
    max_upload: int | None = None  # bytes; a bigger workdir is refused before anything ships
    output_mode: str | None = None  # None: --output must be empty or new; else one of OUTPUT_MODES
    nproc_per_node: int | None = None  # torchrun processes per node; None: the node's GPUs (1 on a CPU node)
    launcher: str = "auto"  # one of LAUNCHERS
    logs: str = "rank0"  # one of LOGS: what `run` streams
    torchrun_restarts: int = 0  # torchrun's --max-restarts: worker-group restarts per node
    # A task file's (taskfile.py): `run` as a shell snippet instead of a script, `setup` run once
    # per node per distinct content, and the job's name (its id's stem).
    shell: str | None = None
    setup: str | None = None
    name: str | None = None
    # Secret NAME -> None (the value is the caller's environment's) or the file holding it. Only
    # where the value comes from: values are read when the job starts (jobs/secrets.py).
    secrets: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        script: str | Path,
        workdir: str | Path | None = None,
        args: list[str] | tuple[str, ...] = (),
        env: list[str] | None = None,
        output: str | Path | None = None,
        detach: bool = False,
        max_upload: str | None = None,
        output_mode: str | None = None,
        nproc_per_node: int | None = None,
        launcher: str = "auto",
        logs: str = "rank0",
        torchrun_restarts: int = 0,
        shell: str | None = None,
        setup: str | None = None,
        name: str | None = None,
        secrets: list[str] | None = None,
    ) -> "JobSpec":
        if shell is not None:
            return cls._shell_job(shell, workdir, args, env, output, detach, max_upload, output_mode, nproc_per_node, launcher, logs, setup, name, secrets)
        # The folder the user named is resolved, the script's own name is not: `run link.py`
        # means "the folder link.py is in", never the folder its target happens to live in.
        plain = Path(os_path.abspath(Path(script).expanduser()))
        path = plain.parent.resolve() / plain.name if plain.name else plain
        if not path.exists():
            raise BadInput(f"script {script} does not exist", "check the path")
        if path.is_dir():
            raise BadInput(f"script {script} is a directory", "name the Python file to run")
        if not path.is_file():
            raise BadInput(f"script {script} is not a regular file", "name the Python file to run")
        wd = Path(workdir).expanduser().resolve() if workdir else path.parent
        if not wd.is_dir():
            raise BadInput(f"--workdir {workdir} is not a directory", "name the folder to ship")
        if not path.is_relative_to(wd):
            raise BadInput(f"script {script} is outside --workdir {wd}", "put the script inside the workdir or choose another --workdir")
        out = check_output(output, output_mode)
        if launcher not in LAUNCHERS:
            raise BadInput(f"unknown --launcher {launcher!r}", f"choose one of {', '.join(LAUNCHERS)}")
        if logs not in LOGS:
            raise BadInput(f"unknown --logs {logs!r}", f"choose one of {', '.join(LOGS)}")
        if nproc_per_node is not None and not 1 <= nproc_per_node <= 1024:
            raise BadInput(f"--nproc-per-node {nproc_per_node} is not a number of processes", "pass 1 or more, e.g. the node's GPU count")
        if not 0 <= torchrun_restarts <= 100:
            raise BadInput(f"--torchrun-restarts {torchrun_restarts} is not a number of restarts", "pass 0 (the default) to 100")
        return cls(
            script=path,
            workdir=wd,
            args=tuple(args),
            env=parse_env(env or []),
            output=out,
            detach=detach,
            max_upload=parse_size(max_upload) if max_upload is not None else None,
            output_mode=output_mode,
            nproc_per_node=nproc_per_node,
            launcher=launcher,
            logs=logs,
            torchrun_restarts=torchrun_restarts,
            setup=setup,
            name=name,
            secrets=parse_secrets(secrets or []),
        )

    @classmethod
    def _shell_job(cls, shell: str, workdir: str | Path | None, args: list[str] | tuple[str, ...], env: list[str] | None, output: str | Path | None,
                   detach: bool, max_upload: str | None, output_mode: str | None, nproc_per_node: int | None, launcher: str, logs: str,
                   setup: str | None, name: str | None, secrets: list[str] | None) -> "JobSpec":
        """A task file's `run` snippet: one bash per node, in the workdir (default: here)."""
        if args:
            raise BadInput("a shell `run` takes no script arguments", "put them in the task file's `run`")
        if launcher == "torchrun" or nproc_per_node is not None:
            raise BadInput("a shell `run` starts one process per node", "call torchrun in the `run` snippet itself, or name a Python script in `run`")
        wd = Path(workdir).expanduser().resolve() if workdir else Path.cwd()
        if not wd.is_dir():
            raise BadInput(f"workdir {workdir} is not a directory", "name the folder to ship")
        if logs not in LOGS:
            raise BadInput(f"unknown --logs {logs!r}", f"choose one of {', '.join(LOGS)}")
        return cls(
            script=wd, workdir=wd, env=parse_env(env or []), output=check_output(output, output_mode), detach=detach,
            max_upload=parse_size(max_upload) if max_upload is not None else None, output_mode=output_mode,
            launcher="none", logs=logs, shell=shell, setup=setup, name=name, secrets=parse_secrets(secrets or []),
        )

    @property
    def script_rel(self) -> str | None:
        """The script, relative to the workdir; None for a shell `run`."""
        return None if self.shell is not None else self.script.relative_to(self.workdir).as_posix()

    @property
    def stem(self) -> Path:
        """What the job id is named after: the task's name, else the script's."""
        return Path(self.name) if self.name else (Path("task") if self.shell is not None else self.script)

    def script_sha256(self) -> str:
        """What ran: the script's bytes, or the shell snippet's."""
        return hashlib.sha256(self.shell.encode() if self.shell is not None else self.script.read_bytes()).hexdigest()


class _CallableModule(types.ModuleType):
    """`cloudtrain.spec(**options)` is the Python API's (api.py, the README), but once imported
    this module holds that name in the package, ahead of the package's lazy lookup: so calling
    the module is calling the API's."""

    def __call__(self, **options: Any) -> ClusterSpec:
        from cloudtrain.api import spec

        return spec(**options)


sys.modules[__name__].__class__ = _CallableModule
