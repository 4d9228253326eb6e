"""Cluster commands: up, down, status, ssh, ssh-config, bootstrap."""

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from cloudtrain import provisioner as provisioners
from cloudtrain.cli import completion
from cloudtrain.cli.app import app
from cloudtrain.cli.options import ClusterOpt, UpOptions, cluster_spec_of, say, with_task
from cloudtrain.errors import BadInput, CloudtrainError, DamagedRecord, MissingTool, NotFound
from cloudtrain.jobs.record import all_jobs
from cloudtrain.reachability import mark_silent_nodes, silent_line
from cloudtrain.spec import ClusterSpec, format_duration
from cloudtrain.state import ClusterDir, Store

O = UpOptions


@app.command()
def up(
    ctx: typer.Context,
    task: Optional[Path] = O.task,
    provider: str = O.provider,
    nodes: int = O.nodes,
    name: Optional[str] = O.name,
    framework: str = O.framework,
    gpu: Optional[str] = O.gpu,
    cuda: Optional[str] = O.cuda,
    cuda_toolkit: bool = O.cuda_toolkit,
    region: Optional[str] = O.region,
    zone: Optional[str] = O.zone,
    spot: bool = O.spot,
    disk_gb: int = O.disk_gb,
    image: str = O.image,
    ssh_cidr: Optional[str] = O.ssh_cidr,
    autostop: Optional[str] = O.autostop,
    max_duration: Optional[str] = O.max_duration,
    host: Optional[List[str]] = O.host,
    identity: Optional[Path] = O.identity,
    preview: bool = typer.Option(False, "--preview", help="Show what would be created (clouds) and create nothing."),
) -> None:
    """Create a cluster and make it ready (bootstrapped).

    Example: cloudtrain up --provider local --nodes 2 --framework torch==2.13.0  (or: cloudtrain up task.yaml)

    Your own machines: cloudtrain up --provider ssh --host me@gpu-box --identity ~/.ssh/id_ed25519
    """
    from cloudtrain import lifecycle  # here, not at the top: `--help` and `status` stay fast

    store = Store()
    spec = cluster_spec_of(with_task(ctx, task, only_task=True))
    if preview:
        lifecycle.check(store, spec)
        prov = provisioners.get(spec.provider)
        if not prov.supports_preview:
            print(prov.describe(spec))
            return
        cdir = store.cluster_dir(spec.name)
        print(prov.preview(spec, cdir))
        return
    lifecycle.up(store, spec, say)
    print(spec.name)


@app.command()
def down(
    cluster: Optional[str] = ClusterOpt,
    force: bool = typer.Option(False, "--force", help="Destroy even if some outputs could not be brought home, or the record is damaged."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Bring owed outputs into DIR/<job-id> instead of each job's recorded --output."),
    provider: Optional[str] = typer.Option(None, "--provider", help="For a NAME with no record here: ask only this cloud for what its tag names (default: every cloud with credentials here)."),
) -> None:
    """Bring home any outputs still owed, then destroy the cluster. Running it twice is harmless;
    a name never created is an error (exit 2), unless a cloud with credentials here holds
    resources tagged with it: those are listed, then removed with --force or the name typed.

    Example: cloudtrain down --cluster local --output /data/runs
    """
    from cloudtrain import lifecycle

    confirm = _typed if sys.stdin.isatty() and sys.stdout.isatty() else None
    lifecycle.down(Store(), cluster, say, force=force, output=output.absolute() if output else None, confirm=confirm, provider=provider)


def _typed(prompt: str) -> str:
    try:
        return input(prompt)
    except EOFError:  # Ctrl-D: not confirmed
        return ""


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    cloud: bool = typer.Option(False, "--cloud", help="Also list what the clouds hold under cloudtrain's tag that no record here knows."),
    provider: Optional[str] = typer.Option(None, "--provider", help="With --cloud: ask only this cloud (default: every cloud with credentials here)."),
) -> None:
    """Show clusters and recent jobs.

    Example: cloudtrain status --json   (or: cloudtrain status --cloud --provider aws)
    """
    store = Store()
    if provider is not None and not cloud:
        raise BadInput("--provider is for `status --cloud`", "add --cloud, or leave --provider out")
    seen = None
    if cloud:
        from cloudtrain.provisioner import inventory

        seen = inventory.unknown(store, provider)
        for line in seen.skipped + [f"warning: {x}" for x in seen.failed]:
            say(line)
    clusters, damaged = [], []
    for name in store.cluster_names():
        try:
            record = store.cluster_dir(name).load()
        except (DamagedRecord, NotFound) as e:  # NotFound: a marker whose record never got written
            # One bad record hides nothing else: name it, with what to do, and list the rest.
            damaged.append({"name": name, "status": "damaged", "error": e.line()})
            say(f"warning: {e.line()}")
            continue
        price = _hourly_price(record.spec)
        prov = provisioners.get(record.spec.provider)
        stop = prov.observed_stop(store.cluster_dir(name), record) if record.status == "ready" else None
        running_s = record.running_s(stopped_at=stop.get("at") if stop else None)
        hours = running_s / 3600
        autostop_s, deadline_s = record.spec.watchdog_settings(prov.default_autostop_s)
        clusters.append(
            {
                "name": name,
                "provider": record.spec.provider,
                "status": "stopped" if stop else record.status,
                "stopped": stop,  # {"reason": "autostop" | "max-duration", "at": epoch seconds}
                "uptime_s": round(running_s),
                "autostop_s": autostop_s if prov.can_stop else 0,
                "max_duration_s": deadline_s if prov.can_stop else 0,
                "framework": str(record.spec.framework),
                "gpu": f"{record.spec.gpu}:{record.spec.gpu_count}" if record.spec.gpu else None,
                "nodes": [n.to_dict() for n in record.cluster.nodes] if record.cluster else [],
                "created_at": record.created_at,
                # What is billing now, so a forgotten cluster shows up in plain sight.
                "price_per_hour": price,
                "cost_so_far": None if price is None else round(price * hours, 2),
                "disks": _disk_cost(record.spec) if stop and not stop.get("terminated") else None,  # what still bills
            }
        )
    mark_silent_nodes(clusters)  # a quick SSH-banner probe of each ready cluster's nodes
    jobs = all_jobs(store, warn=say)
    jobs.sort(key=lambda j: j.submitted_at)
    job_rows = [
        {"job_id": j.job_id, "cluster": j.cluster, "status": j.status, "exit_code": j.exit_code, "output": j.output,
         **({"recovery": j.extra["recovery"]} if "recovery" in j.extra else {})}  # launch --recover: restarts, preemptions
        for j in jobs[-20:]
    ]
    if as_json:
        print(json.dumps({"clusters": clusters, "damaged": damaged, "jobs": job_rows} | ({"cloud": inventory.to_json(seen)} if seen else {}), indent=2))
        return
    if not clusters and not damaged:
        print("no clusters")
    for d in damaged:
        print(f"{d['name']:<20} {'?':<6} {'damaged':<10} {d['error']}")
    for c in clusters:
        age = time.time() - c["created_at"]
        if c["price_per_hour"] is None:
            cost = "price unknown"
        elif c["price_per_hour"] == 0:
            cost = "free"
        else:
            cost = f"${c['price_per_hour']:.2f}/h, ~${c['cost_so_far']:.2f} so far"
        state = c["status"]
        if c["stopped"]:
            state = f"stopped ({c['stopped'].get('reason', '?')}, {time.strftime('%H:%M', time.localtime(c['stopped'].get('at') or 0))})"
        watch = [f"autostop {format_duration(c['autostop_s'])}"] if c["autostop_s"] else ["autostop off"]
        watch += [f"deadline {format_duration(c['max_duration_s'])}"] if c["max_duration_s"] else []
        print(f"{c['name']:<20} {c['provider']:<6} {state:<10} {len(c['nodes'])} node(s)  {c['gpu'] or 'cpu'}  {c['framework']}  ran {format_duration(c['uptime_s'])} (created {age / 60:.0f} min ago)  {cost}  {', '.join(watch)}")
        if c["stopped"] and c["stopped"].get("terminated"):
            print("  a node was terminated (a spot node cannot stop): its disk and any outputs not brought home are gone; the rest still bills until `cloudtrain down --force`")
        elif c["stopped"] and c["stopped"].get("still_billing"):
            print("  its OS is shut down but the VM is still allocated, and billed: `cloudtrain down` (or deallocate it in the portal); the watchdog's selfstop.json on the node says why it could not deallocate")
        elif c["stopped"]:
            print(f"  stopped by its watchdog: the machines no longer bill, their disks do{'' if c['price_per_hour'] else ' (nothing, on local)'}; `cloudtrain up` with the same options starts it, `cloudtrain down` brings owed outputs home and destroys it")
        if c["disks"]:
            print(f"  {c['disks']['line']}")
        if silent := silent_line(c):
            print(silent)
    if job_rows:
        print()
        for j in job_rows:
            code = "" if j["exit_code"] is None else f"exit {j['exit_code']}"
            print(f"{j['job_id']:<40} {j['cluster']:<20} {j['status']:<8} {code:<8} {j['output']}")
            if rec := j.get("recovery"):
                lost = ", ".join(f"{'+'.join(e['nodes'])} at {time.strftime('%H:%M', time.localtime(e['at']))} (ran {format_duration(e['attempt_s'])}"
                                 + (f", ${e['attempt_cost']:.2f}" if e.get("attempt_cost") is not None else "") + ")" for e in rec["preemptions"])
                print(f"  preempted {len(rec['preemptions'])}x, restarted {rec['restarts']} of {rec['max_restarts']}" + (f": {lost}" if lost else ""))
    if seen is not None:
        print()
        print(inventory.summary(seen))
        for line in inventory.lines(seen.found) if seen.found else ():
            print(f"  {line}")


def _hourly_price(spec: ClusterSpec) -> float | None:
    try:
        return provisioners.get(spec.provider).hourly_price(spec)
    except CloudtrainError:  # e.g. a catalog row that changed since the cluster was made
        return None


def _disk_cost(spec: ClusterSpec) -> dict | None:
    from cloudtrain.catalog.disks import stopped_cost  # here: a `status` with nothing stopped loads no catalog

    cost = stopped_cost(spec)
    return cost.to_dict() | {"line": cost.line()} if cost else None


def _ssh_args(cdir: ClusterDir, node_name: Optional[str]) -> tuple[list[str], str]:
    record = cdir.load()
    if record.cluster is None:
        raise BadInput(f"cluster {cdir.name} has no nodes yet", "wait for `cloudtrain up` to finish")
    node = record.cluster.head
    if node_name is not None:
        try:
            node = record.cluster.node(node_name)
        except KeyError as e:
            names = ", ".join(n.name for n in record.cluster.nodes)
            raise NotFound(f"cluster {cdir.name} has no node {node_name!r}", f"choose one of {names}") from e
    ssh = shutil.which("ssh")
    if ssh is None:
        raise MissingTool("the OpenSSH client `ssh` is not installed", "install it: `apt-get install openssh-client`")
    args = [
        ssh, "-i", str(record.cluster.identity_file), "-p", str(node.port),
        "-o", "IdentitiesOnly=yes",
        "-o", f'UserKnownHostsFile="{cdir.known_hosts}"',  # quoted: the option takes a list of files
        "-o", "StrictHostKeyChecking=yes",
        "-o", "GlobalKnownHostsFile=/dev/null",
        f"{node.user}@{node.host}",
    ]
    return args, node.name


@app.command()
def ssh(
    cluster: Optional[str] = typer.Argument(None, help="Cluster name; may be left out when exactly one exists.", autocompletion=completion.cluster_names),
    node: Optional[str] = typer.Option(None, "--node", help="Node name (default: the first node)."),
    command: Optional[List[str]] = typer.Argument(None, help="A command to run instead of a shell (after --)."),
) -> None:
    """Open a shell on a node with plain OpenSSH, host key checking on.

    Example: cloudtrain ssh local -- nvidia-smi
    """
    store = Store()
    names = store.cluster_names()
    if cluster is not None and cluster not in names and len(names) <= 1:
        # `cloudtrain ssh -- CMD` with one cluster (or none, which resolve then names): the first
        # word is the command, not a cluster.
        command, cluster = [cluster, *(command or [])], None
    cdir = store.resolve(cluster)
    args, _ = _ssh_args(cdir, node)
    if command:
        args += ["--", *command]
    sys.stdout.flush()
    os.execv(args[0], args)


@app.command("ssh-config")
def ssh_config(cluster: Optional[str] = ClusterOpt) -> None:
    """Print an OpenSSH config block for every node (pinned known_hosts, strict checking),
    so plain ssh, scp and rsync reach the nodes.

    Example: ssh -F <(cloudtrain ssh-config) local-0 hostname
    """
    store = Store()
    names = [store.resolve(cluster).name] if cluster else store.cluster_names()
    blocks = []
    for name in names:
        cdir = store.cluster_dir(name)
        try:
            record = cdir.load()
        except (DamagedRecord, NotFound) as e:
            if cluster:  # asked for by name: its error is the answer
                raise
            say(f"warning: skipping cluster {name}: {e.line()}")  # the others stay reachable
            continue
        for node in record.cluster.nodes if record.cluster else ():
            blocks.append(
                "\n".join(
                    [
                        f"Host {node.name}",
                        f"    HostName {node.host}",
                        f"    Port {node.port}",
                        f"    User {node.user}",
                        f'    IdentityFile "{record.cluster.identity_file}"',
                        "    IdentitiesOnly yes",
                        f'    UserKnownHostsFile "{cdir.known_hosts}"',
                        "    GlobalKnownHostsFile /dev/null",
                        "    StrictHostKeyChecking yes",
                    ]
                )
            )
    print("\n\n".join(blocks))


@app.command()
def bootstrap(
    cluster: Optional[str] = ClusterOpt,
    plan: bool = typer.Option(False, "--plan", help="Print the plan for each node and change nothing."),
    cuda_toolkit: bool = typer.Option(False, "--cuda-toolkit", help="Add a system CUDA toolkit and cuDNN to GPU nodes this time, though `up` did not ask for them."),
) -> None:
    """Make a cluster's nodes ready again (idempotent), or show the plan with --plan.

    Example: cloudtrain bootstrap --cluster local --plan
    """
    from cloudtrain import lifecycle
    from cloudtrain.bootstrap.cluster import plan_cluster

    cdir = Store().resolve(cluster)
    record = cdir.load()
    if record.cluster is None:
        raise BadInput(f"cluster {cdir.name} has no nodes yet", "wait for `cloudtrain up` to finish")
    spec = dataclasses.replace(record.spec, cuda_toolkit=True) if cuda_toolkit else record.spec
    request = lifecycle.request_of(spec)
    if plan:
        for node, _facts, steps in plan_cluster(record.cluster, request):
            print(f"{node.name}:")
            for step in steps:
                print(f"  {step.plan_line()}")
        return
    with cdir.lock():
        lifecycle.run_bootstrap(record.cluster, spec, cdir)


