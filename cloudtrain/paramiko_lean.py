"""paramiko, imported without what cloudtrain never uses (issue 9: a no-op `run`'s start-up).

paramiko imports invoke (a third of its import time) only to run an ssh_config's `Match exec`
lines, and cloudtrain never hands paramiko an ssh_config: it loads without it (and says so if
such a line is ever parsed). It reads its own version with importlib.metadata, which loads the
email parser and scans every installed package (~20 ms of CPU) for one string in its SSH
banner: the name of its dist-info folder beside it says the same. Where either is already
loaded, or the folder is not found, the real one is used.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types


def _version() -> str | None:
    """paramiko's version from its dist-info folder's name, None where that is not clear."""
    try:
        spec = importlib.util.find_spec("paramiko")
        if spec is None or not spec.origin:
            return None
        site = os.path.dirname(os.path.dirname(spec.origin))
        found = [n[len("paramiko-"):-len(".dist-info")] for n in os.listdir(site) if n.startswith("paramiko-") and n.endswith(".dist-info")]
    except (OSError, ImportError, ValueError):
        return None
    return found[0] if len(found) == 1 else None


def _load() -> types.ModuleType:
    stand_ins: dict[str, object] = {}
    if "paramiko" not in sys.modules:
        if "invoke" not in sys.modules:
            stand_ins["invoke"] = None  # makes `import invoke` raise ImportError
        if "importlib.metadata" not in sys.modules and (version := _version()) is not None:
            metadata = types.ModuleType("importlib.metadata")
            metadata.version = lambda name: version  # type: ignore[attr-defined]  # asked for "paramiko" only
            stand_ins["importlib.metadata"] = metadata
    sys.modules.update(stand_ins)  # type: ignore[arg-type]
    try:
        import paramiko
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]  # a later `import` of it gets the real one
    return paramiko


paramiko = _load()

__all__ = ["paramiko"]
