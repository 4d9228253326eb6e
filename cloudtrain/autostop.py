"""Installing the node-side watchdog (bootstrap/node/watchdog.py) that enforces `--autostop` and
`--max-duration` without the user's machine.

The provisioner says how a node stops itself (`watchdog_stop_command`) and how the watchdog is
kept running (`watchdog_systemd`: a systemd unit on VMs, so it survives reboots; otherwise a
detached process, as on local nodes). Durations can be shrunk for tests with
CLOUDTRAIN_WATCHDOG_SCALE (a factor) and CLOUDTRAIN_WATCHDOG_POLL (seconds between looks);
the flags themselves never go under a minute. CLOUDTRAIN_METADATA_URL points a node's metadata
calls (preemption notice, credentials) at a stand-in: for tests only.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from importlib import resources
from typing import Callable

from cloudtrain.errors import BadInput, CloudtrainError
from cloudtrain.layout import NodePaths
from cloudtrain.machine import Cluster, Node
from cloudtrain.remote import SshRemote
from cloudtrain.spec import ClusterSpec, format_duration
from cloudtrain.state import ClusterDir, ClusterRecord

Say = Callable[[str], None]
POLL_S = 10.0
GRACE_S = 30.0  # between a deadline's TERM and its KILL: time for a job to write a checkpoint
UNIT = "cloudtrain-watchdog.service"
# bootstrap/node/: the watchdog, how a cloud VM stops itself, its preemption notice and bucket
# writes; and jobs/node_checkpoints.py, which says which checkpoints are complete.
NODE_SCRIPTS = ("watchdog.py", "selfstop.py", "preempt.py", "blobs.py")
JOB_SCRIPTS = ("node_checkpoints.py",)


def check(spec: ClusterSpec, prov: object) -> None:
    """Refuse, before anything is created, an autostop or deadline this provider cannot enforce."""
    asked = bool(spec.autostop_s) or bool(spec.max_duration_s)
    if asked and not getattr(prov, "can_stop", False):
        raise BadInput(
            f"the {getattr(prov, 'name', '?')} provider cannot stop its nodes yet, so --autostop/--max-duration cannot be enforced",
            "leave them out (and run `cloudtrain down` yourself), or choose another --provider",
        )


def observed_stop(cdir: ClusterDir, record: ClusterRecord) -> dict | None:
    from cloudtrain import provisioner as provisioners

    return provisioners.get(record.spec.provider).observed_stop(cdir, record)


def stop_phrase(stop: dict) -> str:
    """'autostop, 03:12': why and when a watchdog stopped the cluster."""
    return f"{stop.get('reason', '?')}, {time.strftime('%H:%M', time.localtime(stop.get('at') or 0))}"


def refuse_if_stopped(cdir: ClusterDir, record: ClusterRecord) -> None:
    """`run` / `logs` on a cluster its watchdog stopped: say so, and how to reach its outputs."""
    stop = observed_stop(cdir, record)
    if stop is not None:
        raise CloudtrainError(
            f"cluster {cdir.name} is stopped ({stop_phrase(stop)}); its jobs' outputs stay on its disks",
            f"`cloudtrain up` with its options starts it again; `cloudtrain down --cluster {cdir.name}` starts it, brings the outputs home and destroys it",
        )


def _scaled(seconds: float) -> float:
    try:
        return seconds * float(os.environ.get("CLOUDTRAIN_WATCHDOG_SCALE", "1"))
    except ValueError:
        return seconds


def _poll() -> float:
    try:
        return float(os.environ.get("CLOUDTRAIN_WATCHDOG_POLL", POLL_S))
    except ValueError:
        return POLL_S


def install(cluster: Cluster, record: ClusterRecord, cdir: ClusterDir, prov: object, say: Say) -> None:
    """(Re)start the watchdog on every node, with the cluster's settings; stop one that is no
    longer wanted. Idempotent: a watchdog already running with these settings is left alone,
    so its idle clock and deadline go on."""
    autostop, deadline = record.spec.watchdog_settings(getattr(prov, "default_autostop_s", None))
    if not getattr(prov, "can_stop", False):
        if autostop or deadline:
            say(f"warning: the {record.spec.provider} provider cannot stop its nodes yet; nothing stops this cluster but `cloudtrain down`")
        return
    scripts = node_scripts()
    for index, node in enumerate(cluster.nodes):
        with SshRemote(node, cluster.identity_file) as remote:
            _install_one(remote, node, index, record, cdir, prov, scripts, autostop, deadline)
    what = [f"autostop after {format_duration(autostop)} idle"] if autostop else []
    what += [f"stops {format_duration(deadline)} after start"] if deadline else []
    extra = preemption_settings(record, prov)
    what += [f"reads {extra['preempt']}'s preemption notice"] if extra.get("preempt") else []
    what += [f"copies checkpoints to {extra['checkpoints'].get('bucket')}"] if extra.get("checkpoints") else []
    if what:
        say(f"cluster {record.spec.name}: watchdog on every node: {', '.join(what)}")


def node_scripts() -> dict[str, str]:
    """The files the watchdog's folder holds on a node: name -> text."""
    here = resources.files("cloudtrain.bootstrap").joinpath("node")
    jobs = resources.files("cloudtrain.jobs")
    return {**{name: here.joinpath(name).read_text() for name in NODE_SCRIPTS},
            **{name: jobs.joinpath(name).read_text() for name in JOB_SCRIPTS}}


def preemption_settings(record: ClusterRecord, prov: object) -> dict:
    """What the watchdog needs beyond autostop: the notice to read (a spot cluster on a cloud
    that preempts) and the bucket its nodes copy checkpoints to (where the cluster has one)."""
    preempt = getattr(prov, "node_preempt", None) if record.spec.spot else None
    store = prov.checkpoint_store(record) if hasattr(prov, "checkpoint_store") else None
    return {k: v for k, v in {"preempt": preempt, "checkpoints": store}.items() if v}


def _install_one(remote: SshRemote, node: Node, index: int, record: ClusterRecord, cdir: ClusterDir, prov: object, scripts: dict[str, str], autostop: int, deadline: int) -> None:
    root = NodePaths.of(remote).root
    folder = f"{root}/watchdog"
    config = {
        "root": root,
        "autostop_s": _scaled(autostop),
        "max_duration_s": _scaled(deadline),
        "poll_s": _poll(),
        "grace_s": _scaled(GRACE_S),
        "session_marker": prov.watchdog_session_marker(root),  # type: ignore[attr-defined]
        # "{watchdog}": the folder the node's own stop helper (node/selfstop.py) is shipped to.
        "stop_command": [a.replace("{watchdog}", folder) for a in prov.watchdog_stop_command(cdir, record, index)],  # type: ignore[attr-defined]
        **preemption_settings(record, prov),
    }
    if os.environ.get("CLOUDTRAIN_METADATA_URL") and (config.get("preempt") or config.get("checkpoints")):
        config["metadata_url"] = os.environ["CLOUDTRAIN_METADATA_URL"]  # tests: a stand-in for the clouds' metadata servers
    text = json.dumps(config, sort_keys=True)
    q = shlex.quote
    current = remote.run(f"cat {q(folder)}/config.json 2>/dev/null; true").stdout.strip()
    if current == text and _running(remote, folder):
        return
    _stop(remote, folder)
    if not (autostop or deadline or config.get("preempt") or config.get("checkpoints")):
        return
    remote.run(f"mkdir -p {q(folder)} && rm -f {q(folder)}/stopped.json {q(folder)}/state.json {q(folder)}/preempted.json")
    for name, body in scripts.items():
        remote.write_text(f"{folder}/{name}", body, mode=0o644)
    remote.write_text(f"{folder}/config.json", text, mode=0o644)
    if getattr(prov, "watchdog_systemd", False):
        remote.write_text(f"{folder}/{UNIT}", systemd_unit(folder))
        remote.run(f"sudo install -m 0644 {q(folder)}/{UNIT} /etc/systemd/system/{UNIT} && sudo systemctl daemon-reload && sudo systemctl enable --now {UNIT}")
    else:
        # Its own session, no terminal, no tie to this SSH connection.
        # The whole group in the background with its output redirected: nothing holds the channel open.
        remote.run(f"(cd / && exec setsid python3 {q(folder)}/watchdog.py {q(folder)}) </dev/null >>{q(folder)}/out.txt 2>&1 &")
        remote.run(f"for i in $(seq 50); do [ -e {q(folder)}/pid.json ] && exit 0; sleep 0.1; done; exit 1")


def disarm(cluster: Cluster, prov: object) -> None:
    """Stop the watchdog on every node that can be reached (before `down` fetches outputs)."""
    if not getattr(prov, "can_stop", False):
        return
    for node in cluster.nodes:
        try:
            with SshRemote(node, cluster.identity_file, connect_timeout=15) as remote:
                _stop(remote, f"{NodePaths.of(remote).root}/watchdog")
        except CloudtrainError:
            pass  # unreachable: bringing home its outputs reports that, with what to do


def systemd_unit(folder: str) -> str:
    return "\n".join(
        [
            "[Unit]",
            "Description=cloudtrain watchdog: autostop and deadline",
            "After=network-online.target",
            "",
            "[Service]",
            f"ExecStart=/usr/bin/python3 {folder}/watchdog.py {folder}",
            "Restart=on-failure",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def _running(remote: SshRemote, folder: str) -> bool:
    q = shlex.quote(folder)
    return remote.run(f"pid=$(sed 's/[^0-9]//g' {q}/pid.json 2>/dev/null); [ -n \"$pid\" ] && grep -q watchdog.py /proc/$pid/cmdline 2>/dev/null", check=False).ok


def _stop(remote: SshRemote, folder: str) -> None:
    q = shlex.quote(folder)
    remote.run(
        f"systemctl is-enabled {UNIT} >/dev/null 2>&1 && sudo systemctl disable --now {UNIT}; "
        f"pid=$(sed 's/[^0-9]//g' {q}/pid.json 2>/dev/null); "
        f"[ -n \"$pid\" ] && grep -q watchdog.py /proc/$pid/cmdline 2>/dev/null && kill $pid; rm -f {q}/pid.json; true"
    )
