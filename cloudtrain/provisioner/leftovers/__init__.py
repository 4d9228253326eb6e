"""After a stack's destroy: what still carries `cloudtrain-cluster=<name>`, found by tag.

Pulumi destroys what its state knows. A create that an interrupted update left pending (the
cloud accepted it; state never got its ID) is dropped from state by ClusterStack.destroy, and
only its tag can find it then. Each cloud module has the same names: `SWEEPS` (whether it can
list and remove by tag), `console_filter(cluster, where)`, and where SWEEPS, `find` (-> leftovers, kinds it could
not list) and `remove` (-> what it could not remove); `tagged` and `tagged_global` (the machines, then buckets, IAM and roles, any tag
value) are `status --cloud`'s. Region `base.GLOBAL` asks for the kinds no region holds alone.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Callable

from cloudtrain.errors import ProvisionError

Say = Callable[[str], None]
CLOUDS = ("aws", "gcp", "azure")


def module(provider: str) -> ModuleType:
    return importlib.import_module(f"cloudtrain.provisioner.leftovers.{provider}")


def sweep(provider: str, cluster: str, where: str | None, say: Say, state_lost: bool = False) -> None:
    """Remove what carries this cluster's tag in `where` (its region; GCP's project comes from
    the user's application default credentials, as in pre-flight). Raises ProvisionError naming
    what remains, so `down` keeps the record and a rerun sweeps again. Where the cloud has no
    sweep yet, says where to look when state lost a create (`state_lost`)."""
    if provider not in CLOUDS:  # a damaged settings file: nothing to look in
        return
    mod = module(provider)
    if not mod.SWEEPS:
        if state_lost:
            say(f"warning: an interrupted update may have left a machine that state never recorded; look with {mod.console_filter(cluster, where)} and delete what it lists")
        return
    if where is None:
        say(f"warning: the region of cluster {cluster} is unknown, so nothing was looked for by tag; look with {mod.console_filter(cluster, '<region>')}")
        return
    try:
        found, unchecked = mod.find(cluster, where)
    except Exception as e:  # noqa: BLE001 - SDK errors of any cloud; the line says what to do
        raise ProvisionError(
            f"the stack is destroyed, but cloudtrain could not look for leftovers tagged {cluster} in {where} ({type(e).__name__}: {e})",
            f"look with {mod.console_filter(cluster, where)}, or fix the cause and rerun `cloudtrain down --cluster {cluster}`",
        ) from e
    if unchecked and (found or state_lost):
        say(f"warning: could not look for {', '.join(unchecked)} tagged {cluster} in {where} (they do not bill); look with {mod.console_filter(cluster, where)}")
    if not found:
        return
    say(f"found {len(found)} resource(s) of cluster {cluster} that Pulumi state did not know: {', '.join(x.line() for x in found)}; removing them")
    failed = mod.remove(found)
    if failed:
        raise ProvisionError(
            f"could not remove {len(failed)} leftover(s) of cluster {cluster}: {'; '.join(failed)}",
            f"rerun `cloudtrain down --cluster {cluster}`, or delete them by hand (list: {mod.console_filter(cluster, where)})",
        )
