"""What bills in the clouds under cloudtrain's tag that this machine's records do not know:
`status --cloud` lists it, `down --cluster NAME` of a name with no record removes it.

A record lost with a laptop, a home deleted, a cluster made from another machine: the
`cloudtrain-cluster` tag every resource carries is then the only way to find what still bills.
Listing uses each cloud's `tagged` (any tag value; the billing kinds); removal is the `down`
sweep of leftovers/ (`find` + `remove` by exact tag value, region by region), so it takes the
free kinds (networks, firewalls) too. Which clouds: each one whose credentials are found on
this machine (no network call to guess: a cloud asked by `--provider` uses its SDK's whole
credential chain), each one skipped naming how to give credentials.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from cloudtrain.errors import BadInput, CloudtrainError, ProvisionError
from cloudtrain.provisioner import leftovers
from cloudtrain.provisioner.contract import CLUSTER_TAG
from cloudtrain.provisioner.leftovers.base import Tagged
from cloudtrain.state import Store

Say = Callable[[str], None]
CLOUDS = leftovers.CLOUDS
_HINT = {
    "aws": "run `aws configure` or `aws sso login`, or set AWS_PROFILE / AWS_ACCESS_KEY_ID",
    "gcp": "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a key file",
    "azure": "run `az login`, or set ARM_SUBSCRIPTION_ID with a service principal",
}
_SDK = "install the cloud extra: pip install 'cloudtrain[cloud]'"


@dataclass
class Look:
    """What the clouds asked hold under the tag; the clouds skipped and the failures, one line each."""

    found: list[Tagged] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    conns: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)  # how each asked cloud was reached


def clouds(provider: str | None) -> list[str]:
    if provider is None:
        return list(CLOUDS)
    if provider not in CLOUDS:
        raise BadInput(f"--provider {provider} is not a cloud to look in", f"choose one of {', '.join(CLOUDS)}, or leave it out to ask every cloud with credentials")
    return [provider]


def _signs(cloud: str) -> bool:
    """Whether credentials for `cloud` are on this machine, without a network call (an SDK's
    chain ends at a metadata endpoint that takes seconds to time out off the cloud)."""
    env, home = os.environ, Path.home()
    if cloud == "aws":
        names = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        files = (env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws/credentials", env.get("AWS_CONFIG_FILE") or home / ".aws/config")
    elif cloud == "gcp":
        names = ("GOOGLE_APPLICATION_CREDENTIALS",)
        files = (Path(env.get("CLOUDSDK_CONFIG") or home / ".config/gcloud") / "application_default_credentials.json",)
    else:
        names = ("ARM_CLIENT_ID", "ARM_USE_MSI")
        files = (Path(env.get("AZURE_CONFIG_DIR") or home / ".azure") / "azureProfile.json",)
    return any(env.get(n) for n in names) or any(Path(f).is_file() for f in files)


def connect(cloud: str, asked: bool) -> dict[str, Any]:
    """The keyword arguments the cloud's leftovers functions take to reach it. Raises
    CloudtrainError (one line: which cloud, how to give credentials) when it cannot be asked."""
    if not asked and not _signs(cloud):
        raise CloudtrainError(f"{cloud}: not asked, no credentials found", _HINT[cloud])
    try:
        if cloud == "aws":
            import boto3

            session = boto3.Session()
            if session.get_credentials() is None:
                raise CloudtrainError("aws: not asked, no credentials found", _HINT[cloud])
            return {"session": session}
        if cloud == "gcp":
            from cloudtrain.provisioner.preflight import gcp as login
            from cloudtrain.provisioner.rest import Google

            creds, project = login.project_and_credentials()
            return {"http": Google(creds, timeout=180.0), "project": project}  # the sweep's operations.wait answers within ~2 min
        from cloudtrain.provisioner.preflight import azure as login
        from cloudtrain.provisioner.rest import Bearer

        sub = login.subscription()
        return {"http": Bearer(login.token(sub)), "subscription_id": sub}
    except ImportError as e:
        raise CloudtrainError(f"{cloud}: not asked, its SDK is not installed ({e.name})", _SDK) from e
    except CloudtrainError as e:
        if e.message.startswith(f"{cloud}: "):
            raise
        raise CloudtrainError(f"{cloud}: not asked, {e.message}", e.hint or _HINT[cloud]) from e


def look(names: list[str], asked: bool, conns: dict[str, dict[str, Any]] | None = None) -> Look:
    """Ask each cloud in `names` for what bills under the tag. `conns` gives a cloud's
    connection (tests); the others are found by `connect`."""
    out = Look()
    for cloud in names:
        try:
            kw = (conns or {}).get(cloud) or connect(cloud, asked)
        except CloudtrainError as e:
            out.skipped.append(e.line())
            continue
        out.asked.append(cloud)
        out.conns[cloud] = kw
        mod = leftovers.module(cloud)
        try:
            if cloud == "aws":  # EC2 answers one region at a time
                with ThreadPoolExecutor(8) as pool:
                    for rows in pool.map(lambda r: _region(mod, r, kw, out), mod.regions(kw.get("session"))):
                        out.found += rows
            else:
                out.found += mod.tagged(**kw)
            out.found += mod.tagged_global(**kw)  # buckets, IAM, roles: not per region; a failure keeps the rows above
        except Exception as e:  # noqa: BLE001 - any SDK or HTTP failure: one line, the other clouds go on
            out.failed.append(f"{cloud}: could not list what is tagged {CLUSTER_TAG} ({type(e).__name__}: {e})")
    return out


def _region(mod: Any, region: str, kw: dict[str, Any], out: Look) -> list[Tagged]:
    try:
        return mod.tagged(region, **kw)
    except Exception as e:  # noqa: BLE001 - e.g. a region this account may not use
        out.failed.append(f"aws {region}: could not list what is tagged {CLUSTER_TAG} ({type(e).__name__}: {e})")
        return []


def known(store: Store) -> set[tuple[str | None, str]]:
    """(provider, name) of every cluster with a record here; None where the record is damaged
    (its name then hides that name in every cloud: a careful guess)."""
    out: set[tuple[str | None, str]] = set()
    for name in store.cluster_names():
        cdir = store.cluster_dir(name)
        try:
            out.add((cdir.load().spec.provider, name))
        except CloudtrainError:
            out.add((cdir.provider_name() if cdir.provider_name() in CLOUDS else None, name))
    return out


def unknown(store: Store, provider: str | None, conns: dict[str, dict[str, Any]] | None = None) -> Look:
    """`status --cloud`: what the clouds hold under the tag of clusters the records do not know."""
    seen = look(clouds(provider), asked=provider is not None, conns=_named(provider, conns))
    mine = known(store)
    seen.found = [t for t in seen.found if (t.cloud, t.cluster) not in mine and (None, t.cluster) not in mine]
    seen.found.sort(key=lambda t: (t.cloud, t.cluster, t.where, t.kind, t.id))
    return seen


def _named(provider: str | None, conns: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
    """The cloud named by --provider must be reachable: its failure to connect is the answer."""
    if provider is None or provider in (conns or {}):
        return conns
    return {**(conns or {}), provider: connect(provider, asked=True)}


def price(t: Tagged) -> float | None:
    """The catalog's on-demand $/h for a machine of this type in this region, when it has one."""
    if not t.machine:
        return None
    from cloudtrain.catalog.data import offers

    rows = [o for o in offers() if o.provider == t.cloud and o.instance_type == t.machine]
    prices = {o.price_in(t.region) or o.price_hour for o in rows} - {None}
    return prices.pop() if len(prices) == 1 else None


def lines(found: list[Tagged]) -> list[str]:
    rows = [("CLOUD", "WHERE", "CLUSTER", "KIND", "ID", "STATE", "BILLS")]
    for t in found:
        p = price(t) if t.state.lower() in ("running", "pending", "provisioning", "staging") else None
        rows.append((t.cloud, t.where, t.cluster, t.kind, t.id, t.state, t.bills + (f", ~${p:.2f}/h" if p else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]


def to_json(seen: Look) -> dict[str, Any]:
    return {"unknown": [asdict(t) | {"price_per_hour": price(t)} for t in seen.found], "asked": seen.asked, "skipped": seen.skipped, "failed": seen.failed}


def down_unrecorded(
    store: Store, name: str, say: Say, force: bool, confirm: Callable[[str], str] | None,
    show: Callable[[str], None] = print, conns: dict[str, dict[str, Any]] | None = None, provider: str | None = None,
) -> bool:
    """`down --cluster NAME` of a name with no record here: remove what the clouds hold under
    its tag, after showing it and with --force or the name typed at `confirm` (a terminal's
    prompt; None off a terminal). False when no cloud holds anything by that name."""
    stone = store.tombstone(name)
    if provider is not None:
        names = clouds(provider)
    elif stone is not None:  # destroyed from here: only its own cloud can still hold a leak
        names = [stone["provider"]] if stone.get("provider") in CLOUDS else []
    else:
        names = list(CLOUDS)
    if not names:
        return False
    seen = look(names, asked=provider is not None, conns=_named(provider, conns))
    for line in seen.failed:
        say(f"warning: {line}")
    mine = [t for t in seen.found if t.cluster == name]
    if not mine:
        if stone is None and seen.failed:
            raise CloudtrainError(f"cluster {name!r} has no record here, and a cloud could not be asked for it", "fix the cause above and rerun")
        return False
    show(f"cluster {name} has no record on this machine; the clouds hold under its tag:")
    for line in lines(mine):
        show(f"  {line}")
    if not force:
        if confirm is None:
            raise BadInput(f"not deleting the {len(mine)} resource(s) of cluster {name} listed above without confirmation", f"rerun `cloudtrain down --cluster {name} --force` to delete them")
        if confirm(f"type {name} to delete them (and their networks): ").strip() != name:
            raise BadInput(f"not confirmed: nothing of cluster {name} was deleted", f"rerun `cloudtrain down --cluster {name}` and type its name, or pass --force")
    if store.cluster_dir(name).found():  # an `up` of this name began meanwhile: it is that cluster's now
        raise CloudtrainError(f"cluster {name} was just created on this machine; nothing was deleted", f"use `cloudtrain down --cluster {name}` again to destroy it as a recorded cluster")
    failed: list[str] = []
    for cloud, region in sorted({(t.cloud, t.region) for t in mine}):
        mod, kw = leftovers.module(cloud), seen.conns[cloud]
        try:
            found, _ = mod.find(name, region, **kw)
            say(f"removing {len(found)} resource(s) of cluster {name} in {cloud} {region}")
            failed += mod.remove(found, **kw)
        except Exception as e:  # noqa: BLE001 - SDK or HTTP errors: say what remains, never a traceback
            failed.append(f"what is tagged {name} in {cloud} {region} ({type(e).__name__}: {e})")
    if failed:
        raise ProvisionError(f"could not remove {len(failed)} resource(s) of cluster {name}: {'; '.join(failed)}", f"rerun `cloudtrain down --cluster {name}`, or delete them by hand")
    say(f"cluster {name} is down (it had no record here; what its tag named is removed)")
    return True


def summary(seen: Look) -> str:
    asked = ", ".join(seen.asked) or "none"
    if not seen.found:
        return f"in the clouds (asked: {asked}): nothing tagged {CLUSTER_TAG} that the records here do not know"
    names = sorted({t.cluster for t in seen.found})
    return f"in the clouds (asked: {asked}), tagged {CLUSTER_TAG} but unknown to the records here (`cloudtrain down --cluster NAME` removes them): {', '.join(names)}"
