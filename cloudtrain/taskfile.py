"""Task files: a YAML task -> the same parameters the flags give, so one ClusterSpec / JobSpec
is built from either (cli/options.py), and a flag given on the command line wins over the file.

Keys follow SkyPilot's task YAML where they mean the same (docs: "SkyPilot YAML"; its schema,
sky/utils/schemas.py): name, workdir, num_nodes, resources (infra or cloud/region/zone,
accelerators, use_spot, disk_size, autostop), envs, secrets, setup, run; plus cloudtrain's own:
framework, cuda, image, outputs. SkyPilot keys cloudtrain cannot honour are refused by name,
never ignored; an unknown key is refused naming the closest known one.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from cloudtrain.errors import BadInput

SUFFIXES = (".yaml", ".yml")
TOP = ("name", "workdir", "num_nodes", "resources", "envs", "secrets", "setup", "run", "framework", "cuda", "image", "outputs")
RESOURCES = ("infra", "cloud", "region", "zone", "accelerators", "use_spot", "disk_size", "autostop")
# SkyPilot's keys that mean something cloudtrain does not do: why, and what to do instead.
REFUSED_TOP = {
    "file_mounts": "mounts and buckets are not supported; put the files in the workdir (it ships) or fetch them in `setup`",
    "storage_mounts": "mounts and buckets are not supported; fetch the data in `setup`",
    "volumes": "volumes are not supported; outputs come home from $CLOUDTRAIN_OUTPUT_DIR",
    "service": "serving is not supported; cloudtrain runs training jobs",
    "pool": "worker pools are not supported",
    "config": "per-task SkyPilot config is not supported",
    "event_callback": "event callbacks are not supported",
    "inputs": "the optimizer's data-size hints are not supported",
    "docker": "container images are not supported; use `image: dl|ubuntu` and `setup`",
}
REFUSED_RESOURCES = {
    "instance_type": "cloudtrain chooses the machine from the GPU; write `accelerators` (see `cloudtrain gpus`)",
    "cpus": "cloudtrain chooses the machine from the GPU; write `accelerators` (see `cloudtrain gpus`)",
    "memory": "cloudtrain chooses the machine from the GPU; write `accelerators` (see `cloudtrain gpus`)",
    "image_id": "a cloud image id is not supported; write top-level `image: dl` or `image: ubuntu`",
    "any_of": "a list of candidate resources is not supported; name one, failover tries the zones itself",
    "ordered": "a list of candidate resources is not supported; name one, failover tries the zones itself",
    "accelerator_args": "accelerator arguments (TPUs) are not supported",
    "disk_tier": "disk tiers are not supported; the clouds' default SSD is used",
    "network_tier": "network tiers are not supported",
    "ports": "opening ports is not supported; only SSH is reachable (tunnel with `cloudtrain ssh`)",
    "labels": "labels are not supported; cloudtrain tags resources with the cluster's name",
    "job_recovery": "managed job recovery is not supported",
    "spot_recovery": "managed job recovery is not supported",
    "priority": "job priorities are not supported",
}
CLOUDS = ("aws", "gcp", "azure", "local")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Task:
    """A task file read and checked: `params` in the flags' own terms (the CLI's parameter
    names, values as a user would type them), so both go through the same checks."""

    def __init__(self, path: Path, params: dict[str, Any]) -> None:
        self.path = path
        self.params = params


def is_task(path: Path | str | None) -> bool:
    return path is not None and Path(path).suffix.lower() in SUFFIXES


def _refuse(where: str, key: str, known: tuple[str, ...], refused: dict[str, str], path: Path) -> None:
    if key in refused:
        raise BadInput(f"{path}: `{where}{key}` is not supported: {refused[key].split(';')[0]}", refused[key].split("; ", 1)[-1])
    close = difflib.get_close_matches(key, list(known) + list(refused), n=1, cutoff=0.5)
    hint = f"did you mean `{where}{close[0]}`?" if close else f"known keys: {', '.join(known)}"
    raise BadInput(f"{path}: unknown key `{where}{key}`", hint)


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise BadInput(f"task file {path} does not exist", "check the path") from e
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read task file {path}: {e.__class__.__name__}", "name a readable YAML file") from e
    import yaml  # here: every `run` of a .py script asks is_task, and yaml is 13 ms to import (issue 9)

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise BadInput(f"task file {path} is not valid YAML{where}: {problem}", "fix the file (a YAML mapping of task keys)") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadInput(f"task file {path} is not a mapping of keys", "write it as `key: value` lines (name, resources, setup, run, ...)")
    return data


def _kind(path: Path, key: str, value: Any, kinds: tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise BadInput(f"{path}: `{key}` must be {what}, got {value!r}"[:300], f"write `{key}` as {what}")
    return value


def _infra(path: Path, res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "infra" in res and any(k in res for k in ("cloud", "region", "zone")):
        raise BadInput(f"{path}: `resources.infra` and `resources.cloud/region/zone` say the same thing twice", "keep `infra: CLOUD/REGION[/ZONE]` only")
    if "infra" in res:
        text = str(_kind(path, "resources.infra", res["infra"], (str,), "CLOUD[/REGION[/ZONE]]"))
        parts = text.strip().lower().split("/")
        cloud, region, zone = (parts + [None, None])[:3]
        if len(parts) > 3 or "" in parts:
            raise BadInput(f"{path}: `resources.infra: {text}` is not CLOUD[/REGION[/ZONE]]", "write e.g. aws/us-east-1 or gcp/us-central1/us-central1-a")
    else:
        cloud, region, zone = (res.get(k) for k in ("cloud", "region", "zone"))
        cloud = None if cloud is None else str(cloud).lower()
    if cloud is not None:
        if cloud not in CLOUDS:
            raise BadInput(f"{path}: cloud {cloud!r} is not supported", f"choose one of {', '.join(CLOUDS)}")
        out["provider"] = cloud
    if region not in (None, "*"):
        out["region"] = str(region)
    if zone is not None:
        out["zone"] = str(zone)
    return out


def _accelerators(path: Path, value: Any) -> str:
    """'T4:1', 'T4', {'T4': 1} -> the --gpu form 't4:1'; several candidates are refused."""
    if isinstance(value, dict):
        if len(value) != 1:
            raise BadInput(f"{path}: `resources.accelerators` names {len(value)} candidates", "name one GPU, e.g. `accelerators: T4:1`")
        (name, count), = value.items()
        count = 1 if count is None else count
        if isinstance(count, bool) or not isinstance(count, int):
            raise BadInput(f"{path}: the GPU count in `resources.accelerators` must be a whole number, got {count!r}", "write e.g. `accelerators: A100:8`")
        return f"{str(name).lower()}:{count}"
    if isinstance(value, (list, set)):
        raise BadInput(f"{path}: `resources.accelerators` names several candidates", "name one GPU, e.g. `accelerators: T4:1`")
    return str(_kind(path, "resources.accelerators", value, (str,), "NAME[:COUNT]")).strip().lower()


def _autostop(path: Path, value: Any) -> str:
    """SkyPilot's forms (true, false, minutes, '10m', {idle_minutes: N}) -> --autostop's."""
    if isinstance(value, dict):
        extra = set(value) - {"idle_minutes", "down", "wait_for"}
        if extra or value.get("down") or value.get("wait_for") not in (None, "jobs_and_ssh"):
            raise BadInput(f"{path}: `resources.autostop` supports only `idle_minutes` here", "cloudtrain's autostop stops the nodes (never tears down) when no job, setup or SSH session is active; `cloudtrain down` removes them")
        value = value.get("idle_minutes", True)
    if value is True:
        return "60m"  # cloudtrain's default on clouds
    if value is False:
        return "off"
    if isinstance(value, int):
        return f"{value}m"
    return str(_kind(path, "resources.autostop", value, (str,), "a duration (30m, 2h) or off"))


def _envs(path: Path, value: Any) -> list[str]:
    envs = _kind(path, "envs", value, (dict,), "a mapping NAME: VALUE")
    out = []
    for name, val in envs.items():
        if val is None:
            raise BadInput(f"{path}: `envs.{name}` has no value", f"pass it with --env {name}=VALUE, or give it one in the file")
        if isinstance(val, (dict, list)):
            raise BadInput(f"{path}: `envs.{name}` must be a plain value, got {type(val).__name__}", f"write `{name}: VALUE`")
        out.append(f"{name}={str(val).lower() if isinstance(val, bool) else val}")
    return out


def _secrets(path: Path, value: Any) -> list[str]:
    """A list of names, or NAME: null (from the caller's environment) / NAME: '@FILE' (a file,
    relative to the task file); a value written into the file is refused: it would sit there."""
    names = {n: None for n in value} if isinstance(value, list) else _kind(path, "secrets", value, (dict,), "a mapping NAME: null or NAME: '@FILE'")
    out = []
    for name, val in names.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise BadInput(f"{path}: `secrets` names {name!r}, which is not a variable name", "write NAME: null, NAME a shell variable name")
        if val is None:
            out.append(name)
        elif isinstance(val, str) and val.startswith("@"):
            out.append(f"{name}=@{(path.parent / Path(val[1:]).expanduser())}")
        else:
            raise BadInput(f"{path}: `secrets.{name}` holds a value; a secret's value does not belong in a file", f"write `{name}: null` and export {name} (or pass --secret {name}=@FILE)")
    return out


def _run(path: Path, workdir: Path, value: Any) -> dict[str, Any]:
    """`run: train.py` (one Python file of the workdir) runs as a script; anything else is a
    shell snippet, run by bash in the workdir."""
    text = _kind(path, "run", value, (str,), "a script path or shell commands")
    one = text.strip()
    if one and "\n" not in one and " " not in one and one.endswith(".py") and (workdir / one).is_file():
        return {"script": workdir / one}
    return {"shell": text}


def load(path: Path | str) -> Task:
    """Read and check a task file: BadInput (exit 2) for anything it cannot mean."""
    path = Path(path).expanduser().absolute()
    data = _read(path)
    for key in data:
        if key not in TOP:
            _refuse("", str(key), TOP, REFUSED_TOP, path)
    res = data.get("resources") or {}
    if not isinstance(res, dict):
        raise BadInput(f"{path}: `resources` must be a mapping", "write e.g. `resources: {infra: aws, accelerators: T4:1}`")
    for key in res:
        if key not in RESOURCES:
            _refuse("resources.", str(key), RESOURCES, REFUSED_RESOURCES, path)
    p: dict[str, Any] = {}
    p.update(_infra(path, res))
    if "name" in data:
        p["task_name"] = str(_kind(path, "name", data["name"], (str,), "a name"))
    workdir = path.parent / Path(str(data["workdir"])).expanduser() if data.get("workdir") is not None else path.parent
    p["workdir"] = workdir.resolve()
    if "num_nodes" in data:
        p["nodes"] = _kind(path, "num_nodes", data["num_nodes"], (int,), "a whole number")
    if res.get("accelerators") is not None:
        p["gpu"] = _accelerators(path, res["accelerators"])
    if "use_spot" in res:
        p["spot"] = _kind(path, "resources.use_spot", res["use_spot"], (bool,), "true or false")
    if "disk_size" in res:
        size = res["disk_size"]
        if isinstance(size, str) and re.fullmatch(r"\s*\d+\s*(GB|G|gb|g)?\s*", size):
            size = int(re.sub(r"\D", "", size))
        p["disk_gb"] = _kind(path, "resources.disk_size", size, (int,), "a size in GB")
    if "autostop" in res:
        p["autostop"] = _autostop(path, res["autostop"])
    for key, flag in (("framework", "framework"), ("cuda", "cuda"), ("image", "image")):
        if key in data:
            p[flag] = str(_kind(path, key, data[key], (str, int, float), "text"))
    if data.get("outputs") is not None:
        folder = _kind(path, "outputs", data["outputs"], (str,), "the folder outputs land in")
        p["output"] = path.parent / Path(folder).expanduser()
    if data.get("envs"):
        p["env"] = _envs(path, data["envs"])
    if data.get("secrets"):
        p["secret"] = _secrets(path, data["secrets"])
    if data.get("setup") is not None:
        p["setup"] = _kind(path, "setup", data["setup"], (str,), "shell commands")
    if data.get("run") is not None:
        p.update(_run(path, p["workdir"], data["run"]))
    return Task(path, p)


MERGED = ("env", "secret")  # the file's and the flags' both apply; a flag's NAME wins


def merge(task: Task, params: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """The command's parameters: each flag given on the command line, else the task file's
    value, else the flag's default. `params` are the command's (click's `ctx.params`)."""
    merged = dict(params)
    for key, value in task.params.items():
        if key in MERGED:
            merged[key] = [*value, *(params.get(key) or [])]
        elif key not in given:
            merged[key] = value
    return merged


def without_gpu(merged: dict[str, Any], path: Path) -> str | None:
    """On a provider without GPUs, the file's GPU is dropped with a note (a SkyPilot file that
    asks for one still runs here, on CPU: what a user trying it locally expects)."""
    gpu = merged.get("gpu")
    if not gpu:
        return None
    merged["gpu"] = None
    return f"note: {path.name} asks for GPU {gpu}; the {merged.get('provider')} provider has none, so it runs on CPU"
