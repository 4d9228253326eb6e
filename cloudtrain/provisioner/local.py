"""The embedded default: each node is a real OpenSSH sshd on its own loopback address.

Node i listens on 127.0.0.(i+2) and a free port, accepts only the cluster's key, and presents a
host key cloudtrain generated (so it is pinned before first contact, like a cloud node's
cloud-init key). Its files live under the cluster's provider folder; `CLOUDTRAIN_NODE_ROOT`
is set for every session so node-side code keeps to that folder. No root needed. Each sshd
runs under a keeper (local_keeper.py) that keeps all the node starts in view for `down`;
`up` of an existing cluster restarts an sshd that died (`repair`).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from cloudtrain import keys
from cloudtrain.errors import BadInput, MissingTool, ProvisionError
from cloudtrain.machine import Cluster, Node
from cloudtrain.provisioner.base import Provisioner
from cloudtrain.provisioner.local_processes import stop_node_processes, terminate
from cloudtrain.spec import ClusterSpec
from cloudtrain.state import ClusterDir, ClusterRecord

MAX_NODES = 200  # 127.0.0.2 .. 127.0.0.201


def find_sshd() -> str:
    chosen = os.environ.get("CLOUDTRAIN_SSHD")  # a specific sshd binary, e.g. a newer build
    if chosen:
        if not os.access(chosen, os.X_OK):
            raise MissingTool(f"CLOUDTRAIN_SSHD={chosen} is not an executable sshd", "unset it, or install OpenSSH's server: `apt-get install openssh-server`")
        return chosen
    found = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.access(p, os.X_OK)), None)
    if not found:
        raise MissingTool("sshd is not installed", "install OpenSSH's server: `apt-get install openssh-server` (Debian/Ubuntu)")
    return found


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _pip_env() -> dict[str, object]:
    """This machine's pip configuration (and its uv cache), for the node's installers: a local
    node is this machine, but with a HOME of its own, which would hide the user's pip config
    file, and sshd passes on no PIP_* variables. So both are handed over: where packages come
    from (a mirror, local wheels, a pinned index) is the same as for the user's own `pip install`."""
    env: dict[str, object] = {k: v for k, v in os.environ.items() if k.startswith("PIP_") and '"' not in v and "\n" not in v}
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    user_config = next((f for f in (config_home / "pip/pip.conf", Path.home() / ".pip/pip.conf") if f.is_file()), None)
    if user_config and "PIP_CONFIG_FILE" not in env:
        env["PIP_CONFIG_FILE"] = user_config
    # The download caches are shared, as a speed-up only: pip's, and uv's (the framework's
    # installer, bootstrap/uv.py), so a second node or a replacement installs torch from it in
    # seconds, where an empty cache costs ~20 s more (bench/install.py); it still installs.
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    env.setdefault("PIP_CACHE_DIR", cache_home / "pip")
    uv_cache = os.environ.get("UV_CACHE_DIR", "")
    env["UV_CACHE_DIR"] = uv_cache if uv_cache and '"' not in uv_cache and "\n" not in uv_cache else cache_home / "uv"
    return env


def _q(value: object) -> str:
    # sshd_config splits on whitespace; quoting keeps a home such as "/Users/a b" one argument.
    return f'"{value}"'


def _sshd_config(node_dir: Path, address: str, port: int, user: str) -> str:
    env = {"CLOUDTRAIN_NODE_ROOT": node_dir / "root", "HOME": node_dir / "home", **_pip_env()}
    return "\n".join(
        [
            f"ListenAddress {address}:{port}",
            f"HostKey {_q(node_dir / 'ssh_host_ed25519_key')}",
            f"PidFile {_q(node_dir / 'sshd.pid')}",
            f"AuthorizedKeysFile {_q(node_dir / 'authorized_keys')}",
            f"AllowUsers {user}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            # The node's files sit under the user's home or a temp dir; their own modes are 0600/0700.
            "StrictModes no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "PrintMotd no",
            # A home of its own, as a VM has: what jobs write to ~ (framework configs, caches)
            # stays in the node's folder and goes with it at `down`. pip keeps this machine's
            # configuration (_pip_env).
            "SetEnv " + " ".join(_q(f"{k}={v}") for k, v in env.items()),
            "Subsystem sftp internal-sftp",
            "LogLevel INFO",  # one "Accepted publickey" line per connection: what tests count
            "",
        ]
    )


class LocalProvisioner(Provisioner):
    name = "local"
    can_stop = True  # its processes and sshd stop; its folder stays
    replaces_nodes = True  # a lost node's stand-in: a new node folder (new sshd, port, host key; empty disk)

    def watchdog_stop_command(self, cdir: ClusterDir, record: ClusterRecord, index: int) -> list[str]:
        root = Path(record.provider_state["node_dirs"][index]) / "root"
        return [sys.executable, "-I", "-S", str(Path(__file__).with_name("local_processes.py")), str(root)]

    def watchdog_session_marker(self, root: str) -> str:
        return f"CLOUDTRAIN_NODE_ROOT={root}"  # this machine's own terminals are not the node's

    def observed_stop(self, cdir: ClusterDir, record: ClusterRecord) -> dict | None:
        stops = []
        for entry in record.provider_state.get("node_dirs", []):
            node_dir = Path(entry)
            if self._sshd_running(node_dir):
                continue
            try:
                stops.append(json.loads((node_dir / "root" / "watchdog" / "stopped.json").read_text()))
            except (OSError, ValueError):
                continue
        return min(stops, key=lambda s: s.get("at", 0)) if stops else None

    def start(self, cdir: ClusterDir, record: ClusterRecord) -> list[str]:
        return self.repair(cdir, record)

    def default_name(self, spec_gpu: str | None) -> str:
        return "local"

    def check(self, spec: ClusterSpec) -> None:
        if spec.gpu:
            raise BadInput("the local provider has no GPUs", "leave out --gpu, or choose --provider aws|gcp|azure")
        if spec.nodes > MAX_NODES:
            raise BadInput(f"the local provider runs at most {MAX_NODES} nodes", f"pass --nodes {MAX_NODES} or fewer")

    def describe(self, spec: ClusterSpec) -> str:
        return f"{spec.nodes} local node(s): OpenSSH sshd on 127.0.0.2.. (free, nothing billed)"

    def create(self, spec: ClusterSpec, cdir: ClusterDir, record: ClusterRecord) -> Cluster:
        sshd = find_sshd()
        user = getpass.getuser()
        if os.geteuid() == 0:
            # sshd as root insists on its privilege-separation directory.
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        client_key = cdir.client_public_key()
        nodes: list[Node] = []
        record.provider_state["node_dirs"] = []
        for i in range(spec.nodes):
            record.provider_state["node_dirs"].append(None)
            nodes.append(self._make_node(sshd, cdir, record, i, f"{spec.name}-{i}", cdir.provider_dir / f"{spec.name}-{i}", user, client_key))
        return Cluster(name=spec.name, nodes=tuple(nodes), identity_file=cdir.identity_file)

    def _make_node(self, sshd: str, cdir: ClusterDir, record: ClusterRecord, i: int, name: str, node_dir: Path, user: str, client_key: str) -> Node:
        address = f"127.0.0.{i + 2}"
        (node_dir / "root").mkdir(parents=True, exist_ok=True)
        (node_dir / "home").mkdir(exist_ok=True)
        os.chmod(node_dir, 0o700)
        host_key = keys.write_pair(node_dir / "ssh_host_ed25519_key", comment=name)
        (node_dir / "authorized_keys").write_text(client_key + "\n")
        os.chmod(node_dir / "authorized_keys", 0o600)
        # Record the folder before starting anything, so destroy finds it even after a crash.
        record.provider_state["node_dirs"][i] = str(node_dir)
        cdir.save(record)
        port = self._start(sshd, node_dir, address, user)
        return Node(name=name, host=address, port=port, user=user, host_key=host_key, private_ip=address)

    def lost_nodes(self, cdir: ClusterDir, record: ClusterRecord, marked: list[int] | None = None) -> list[int]:
        """A local node is gone when its sshd is (killed with its processes: the stand-in for a
        preemption), unless its own watchdog stopped it (autostop is not a preemption)."""
        dirs = record.provider_state.get("node_dirs", [])
        return [i for i, d in enumerate(dirs) if not self._sshd_running(Path(d)) and not (Path(d) / "root/watchdog/stopped.json").exists()]

    def replace_nodes(self, cdir: ClusterDir, record: ClusterRecord, lost: list[int]) -> list[str]:
        assert record.cluster is not None
        nodes, lines = list(record.cluster.nodes), []
        for i in lost:
            old = Path(record.provider_state["node_dirs"][i])
            self._stop_pidfile(old / "sshd.pid")
            stop_node_processes(old / "root")
            # Its folder is left for `destroy` to remove: deleting a torch venv and its uv cache
            # file by file would keep the job waiting for minutes on a busy machine.
            lost_dirs = record.provider_state.setdefault("lost_dirs", [])
            lost_dirs.append(str(old))
            cdir.save(record)
            generation = record.provider_state["replacements"] = record.provider_state.get("replacements", 0) + 1
            node_dir = cdir.provider_dir / f"{nodes[i].name}.r{generation}"
            nodes[i] = self._make_node(find_sshd(), cdir, record, i, nodes[i].name, node_dir, nodes[i].user, cdir.client_public_key())
            lines.append(f"{nodes[i].name}: replaced by a new node ({node_dir.name}, port {nodes[i].port})")
        record.cluster = Cluster(name=record.cluster.name, nodes=tuple(nodes), identity_file=record.cluster.identity_file)
        cdir.save(record)
        return lines

    def _start(self, sshd: str, node_dir: Path, address: str, user: str) -> int:
        config = node_dir / "sshd_config"
        for attempt in range(5):  # a free port can be taken between probing and binding
            port = _free_port(address)
            config.write_text(_sshd_config(node_dir, address, port, user))
            try:
                self._launch(sshd, node_dir, address, port)
                return port
            except ProvisionError as e:
                failure = e
        raise failure

    def _launch(self, sshd: str, node_dir: Path, address: str, port: int) -> None:
        """Start the node's sshd from its config under a keeper (local_keeper.py), which keeps
        every process the node starts among its descendants, so `down` can find them all."""
        config = node_dir / "sshd_config"
        keeper = Path(__file__).with_name("local_keeper.py")
        # Absolute paths throughout: sshd re-executes itself and must find its config again.
        argv = [sys.executable, "-I", "-S", str(keeper), sshd, "-f", str(config), "-E", str(node_dir / "sshd.log")]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/", start_new_session=True, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # sshd's start-up status, then end-of-file
        proc.stdout.close()
        status, _, detail = line.partition(" ")
        if status == "0" and self._wait_listening(address, port):
            return
        self._stop_pidfile(node_dir / "sshd.pid")
        log = (node_dir / "sshd.log").read_text(errors="replace").strip().splitlines()[-1:] if (node_dir / "sshd.log").exists() else []
        if status == "no-subreaper":
            detail = "this kernel refuses PR_SET_CHILD_SUBREAPER (Linux 3.4 or later is needed)"
        detail = (detail or (log[0] if log else "no output")).splitlines()[-1]
        raise ProvisionError(f"sshd for {node_dir.name} did not start: {detail}", f"see {node_dir / 'sshd.log'}")

    def repair(self, cdir: ClusterDir, record: ClusterRecord) -> list[str]:
        """Restart the sshd of every node whose sshd is gone, from its own config: same port,
        same client key and host key, so the cluster's record stays true."""
        if record.cluster is None:
            return []
        done = []
        for node, entry in zip(record.cluster.nodes, record.provider_state.get("node_dirs", [])):
            node_dir = Path(entry)
            if self._sshd_running(node_dir):
                continue
            if not (node_dir / "sshd_config").is_file() or not (node_dir / "ssh_host_ed25519_key").is_file():
                raise ProvisionError(f"node {node.name}'s files are gone from {node_dir}", f"recreate the cluster: `cloudtrain down --cluster {record.spec.name} --force`, then `cloudtrain up`")
            self._launch(find_sshd(), node_dir, node.host, node.port)
            done.append(f"{node.name}: its sshd was not running; restarted it (same address, port and keys)")
        return done

    @staticmethod
    def _sshd_running(node_dir: Path) -> bool:
        try:
            pid = int((node_dir / "sshd.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return False
        return str(node_dir / "sshd_config").encode() in cmdline and state != "Z"

    @staticmethod
    def _wait_listening(address: str, port: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((address, port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def destroy(self, cdir: ClusterDir, record: ClusterRecord) -> None:
        for entry in record.provider_state.get("lost_dirs", []):  # nodes replaced by `launch --recover`
            shutil.rmtree(entry, ignore_errors=True)
        for entry in record.provider_state.get("node_dirs", []):
            node_dir = Path(entry)
            self._stop_pidfile(node_dir / "sshd.pid")
            stop_node_processes(node_dir / "root")
            shutil.rmtree(node_dir, ignore_errors=True)

    @staticmethod
    def _stop_pidfile(pidfile: Path) -> None:
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        # A stale pid file (after a reboot) may name someone else's process: only ours is stopped.
        if str(pidfile.parent / "sshd_config").encode() in cmdline:
            terminate([pid])

    # --- a node set found on disk without a record (the record damaged or missing) -----

    def recognizes(self, cdir: ClusterDir) -> bool:
        return any((d / "sshd_config").exists() or (d / "root").is_dir() for d in _subdirs(cdir.provider_dir))

    def destroy_found(self, cdir: ClusterDir) -> None:
        """Every node's processes (its keeper's descendants, then the keeper), then any sshd
        whose config lies in the provider folder (its pid file may be as damaged as the record),
        then the folders. Keepers go last: one stopped early would orphan its daemons to init."""
        node_dirs = _subdirs(cdir.provider_dir)
        for node_dir in node_dirs:
            stop_node_processes(node_dir / "root")
        terminate(_sshd_pids_under(cdir.provider_dir))
        for node_dir in node_dirs:
            shutil.rmtree(node_dir, ignore_errors=True)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()) if folder.is_dir() else []


def _sshd_pids_under(provider_dir: Path) -> list[int]:
    """Processes started with `-f <node folder>/sshd_config` for a node folder in `provider_dir`.
    Matched as a substring: sshd rewrites its command line into one string."""
    needles = [str(d / "sshd_config").encode() for d in _subdirs(provider_dir)]
    found = []
    for entry in Path("/proc").iterdir() if needles else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            found.append(int(entry.name))
    return found
