"""Machines the user already has: `up --provider ssh --host user@gpu-box[:port] [--identity KEY]`.

Nothing is created and nothing is destroyed. Each --host is one node, reached with the user's
own key and pinned to the host key the user's known_hosts already holds (hashed entries and the
`[host]:port` form included): a host it does not know is refused with the command that would pin
it, never trusted on first use. cloudtrain's files on the machine live in one folder of its own,
~/.cloudtrain-node/<cluster>-<random> (the node's `root`), apart from the user's files (and from
a cloudtrain home at ~/.cloudtrain, should the machine also run cloudtrain); `down` ends the
jobs cloudtrain started there and removes that folder, and nothing else.
"""

from __future__ import annotations

import re
import secrets
import shlex
from pathlib import Path

import paramiko

from cloudtrain import safefile
from cloudtrain.errors import BadInput, CloudtrainError, DamagedRecord, ProvisionError
from cloudtrain.machine import Cluster, Node
from cloudtrain.provisioner.base import Provisioner
from cloudtrain.remote import SshRemote
from cloudtrain.spec import ClusterSpec
from cloudtrain.state import ClusterDir, ClusterRecord

NODE_DIR = ".cloudtrain-node"  # under the SSH user's home
ROOTS = "roots.json"  # in the cluster's provider folder: what `down --force` finds without the record
CONNECT_TIMEOUT_S = 30.0  # a machine the user owns is either up or not: no boot to wait for
DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")
_HOST = re.compile(r"^(?P<user>[^@\s:/]+)@(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+))(?::(?P<port>[^:]*))?$")
_KEY_PREFERENCE = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "rsa-sha2-512", "ssh-rsa")


def parse_host(text: str) -> tuple[str, str, int]:
    """'user@host[:port]' (or user@[v6]:port) -> (user, host, port); BadInput otherwise."""
    m = _HOST.match(text.strip())
    if not m:
        why = "it names no user" if "@" not in text else "it is not user@host[:port]"
        raise BadInput(f"--host {text!r}: {why}", "write --host USER@HOST or USER@HOST:PORT, e.g. --host ubuntu@gpu-box:22")
    port_text = m.group("port")
    if port_text is None:
        port = 22
    elif not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise BadInput(f"--host {text!r}: port {port_text!r} is not a number from 1 to 65535", "write --host USER@HOST:PORT, e.g. --host ubuntu@gpu-box:2222")
    else:
        port = int(port_text)
    return m.group("user"), m.group("v6") or m.group("host"), port


def known_hosts_file() -> Path:
    return Path.home() / ".ssh" / "known_hosts"


def host_id(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def pinned_key(user: str, host: str, port: int, known_hosts: Path | None = None) -> str:
    """The OpenSSH public key line the user's known_hosts holds for host:port (the strongest
    type when several are there, as OpenSSH prefers); BadInput naming how to pin one if none."""
    path = known_hosts or known_hosts_file()
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        text = ""
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror or e}", f"make {path} a readable known_hosts file") from e
    entries = paramiko.HostKeys()
    revoked = set()  # a key marked @revoked is refused whatever else the file says
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] == "@revoked":
            revoked.add(fields[3])
        if not fields or fields[0].startswith(("#", "@")):
            continue  # comments; @cert-authority needs certificates, which cloudtrain does not check
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(" ".join(fields[:3]))
        except (paramiko.SSHException, paramiko.hostkeys.InvalidHostKey, ValueError):
            continue  # a line OpenSSH would skip too
        for name in entry.hostnames if entry is not None else ():
            entries.add(name, entry.key.get_name(), entry.key)  # a hashed name stays hashed; lookup matches it
    found = entries.lookup(host_id(host, port)) or {}
    keys = {name: key for name, key in found.items() if key.get_base64() not in revoked}
    for name in sorted(keys, key=lambda n: _KEY_PREFERENCE.index(n) if n in _KEY_PREFERENCE else len(_KEY_PREFERENCE)):
        return f"{keys[name].get_name()} {keys[name].get_base64()}"
    port_flag = f" -p {port}" if port != 22 else ""
    raise BadInput(
        f"{host_id(host, port)}'s host key is not in {path}; cloudtrain never trusts a host key on first use",
        f"pin it yourself: `ssh{port_flag} {user}@{host}` (compare the fingerprint it shows with the machine's own, then answer yes), "
        f"or `ssh-keyscan{port_flag} {host} >> {path}` once you trust the network path",
    )


def find_identity(given: str | None) -> Path:
    """The private key to log in with: --identity, else the first of ~/.ssh/id_{ed25519,ecdsa,rsa}."""
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise BadInput(f"--identity {given}: no such file", "pass the path of your SSH private key, e.g. --identity ~/.ssh/id_ed25519")
    else:
        path = next((Path.home() / ".ssh" / n for n in DEFAULT_IDENTITIES if (Path.home() / ".ssh" / n).is_file()), None)
        if path is None:
            raise BadInput("no SSH key found in ~/.ssh (id_ed25519, id_ecdsa, id_rsa)", "pass --identity KEY: the private key that logs you in to --host")
    try:
        paramiko.PKey.from_path(path)
    except TypeError as e:  # cryptography: "Password was not given but private key is encrypted"
        raise BadInput(f"--identity {path} is protected by a passphrase, which cloudtrain cannot type", "pass an unencrypted key kept for this (0600), e.g. `ssh-keygen -t ed25519 -N '' -f ~/.ssh/cloudtrain`") from e
    except (OSError, ValueError, paramiko.SSHException) as e:
        raise BadInput(f"--identity {path} is not an SSH private key cloudtrain can read ({e})", "pass the private key (not the .pub) that logs you in to --host") from e
    return path


# Ends what cloudtrain started under ROOT and removes ROOT (and ~/.cloudtrain-node once empty).
# A job's session leader is its track.py, whose working folder is the job's: only a session whose
# leader is still that process is signalled (pids are reused); then anything whose working
# folder lies under ROOT. TERM, a few seconds' grace, KILL.
_CLEAN = r"""
root=$1
[ -d "$root" ] || exit 0
mine() {
  for d in "$root"/jobs/*/; do
    d=${d%/}; [ -f "$d/pid" ] || continue
    sid=$(tr -dc 0-9 < "$d/pid"); [ -n "$sid" ] || continue
    [ "$(readlink "/proc/$sid/cwd" 2>/dev/null)" = "$d" ] && echo "-$sid"
  done
  for p in /proc/[0-9]*; do
    case "$(readlink "$p/cwd" 2>/dev/null)" in "$root"|"$root"/*) [ "${p#/proc/}" != $$ ] && echo "${p#/proc/}";; esac
  done
}
signal() { for t in $targets; do kill "-$1" "$t" 2>/dev/null; done; }  # dash's kill takes no "--"
targets=$(mine)
if [ -n "$targets" ]; then
  signal TERM
  for i in $(seq 50); do targets=$(mine); [ -z "$targets" ] && break; sleep 0.1; done
  signal KILL
fi
cd / && rm -rf -- "$root" && rmdir -- "$(dirname "$root")" 2>/dev/null
exit 0
"""


class SshProvisioner(Provisioner):
    name = "ssh"
    takes_hosts = True
    # The machines are the user's: cloudtrain cannot power them off (can_stop stays False, so
    # no autostop default), bills nothing for them, and `destroy` removes only its own files.

    def default_name(self, spec_gpu: str | None) -> str:
        return "ssh"

    def check(self, spec: ClusterSpec) -> None:
        if not spec.hosts:
            raise BadInput("--provider ssh needs the machines to use", "add --host USER@HOST[:PORT], once per machine")
        parsed = [parse_host(h) for h in spec.hosts]
        seen = set()
        for text, (user, host, port) in zip(spec.hosts, parsed):
            if (host, port) in seen:
                raise BadInput(f"--host {text!r} is given twice", "name each machine once")
            seen.add((host, port))
        for flag, value in (("--gpu", spec.gpu), ("--region", spec.region), ("--zone", spec.zone), ("--spot", spec.spot or None)):
            if value is not None:
                raise BadInput(f"{flag} chooses a cloud machine; --provider ssh uses the machines you name", f"leave out {flag}")
        find_identity(spec.identity)
        for user, host, port in parsed:
            pinned_key(user, host, port)

    def describe(self, spec: ClusterSpec) -> str:
        return f"{len(spec.hosts)} machine(s) of your own ({', '.join(spec.hosts)}); nothing created or billed, `down` leaves them running"

    def create(self, spec: ClusterSpec, cdir: ClusterDir, record: ClusterRecord) -> Cluster:
        identity = find_identity(spec.identity)
        nodes: list[Node] = []
        record.provider_state["roots"] = []
        for i, text in enumerate(spec.hosts):
            user, host, port = parse_host(text)
            node = Node(name=f"{spec.name}-{i}", host=host, port=port, user=user, host_key=pinned_key(user, host, port), private_ip=host)
            with SshRemote(node, identity, connect_timeout=CONNECT_TIMEOUT_S) as remote:
                home = remote.run('printf %s "$HOME"').stdout.strip()
                if not home.startswith("/"):
                    raise ProvisionError(f"{text} reports no home folder ($HOME={home!r})", "give the SSH user a home folder, or choose another --host user")
                root = f"{home}/{NODE_DIR}/{spec.name}-{secrets.token_hex(4)}"
                # Recorded before it exists: `down` removes it even after a crash right here.
                record.provider_state["roots"].append({"node": node.to_dict(), "root": root, "identity": str(identity)})
                cdir.save(record)
                safefile.write_json(cdir.provider_dir / ROOTS, record.provider_state["roots"])
                remote.run(f"mkdir -p {shlex.quote(root)} && chmod 700 {shlex.quote(root)}")
            nodes.append(Node(**{**node.to_dict(), "root": root}))
        return Cluster(name=spec.name, nodes=tuple(nodes), identity_file=identity)

    def destroy(self, cdir: ClusterDir, record: ClusterRecord) -> None:
        self._clean(record.provider_state.get("roots", []), record.spec.name)

    def _clean(self, entries: list[dict], name: str) -> None:
        failed = []
        for entry in entries:
            node = Node.from_dict(entry["node"])
            try:
                with SshRemote(node, Path(entry["identity"]), connect_timeout=CONNECT_TIMEOUT_S) as remote:
                    remote.run(f"sh -c {shlex.quote(_CLEAN)} clean {shlex.quote(entry['root'])}")
            except CloudtrainError as e:
                failed.append(f"{node.user}@{node.host}:{node.port} ({entry['root']}): {e.message}")
        if failed:
            raise ProvisionError(
                f"could not remove cloudtrain's files from {'; '.join(failed)}",
                f"make the machine reachable and run `cloudtrain down --cluster {name}` again",
            )

    def recognizes(self, cdir: ClusterDir) -> bool:
        return (cdir.provider_dir / ROOTS).is_file()

    def destroy_found(self, cdir: ClusterDir) -> None:
        """`down --force` of a cluster whose record is damaged: the folders from roots.json."""
        path = cdir.provider_dir / ROOTS
        hint = f"remove ~/{NODE_DIR}/{cdir.name}-* on your machines by hand, then delete {cdir.root}"
        try:
            entries = safefile.read_json(path, f"the ssh provider's list of folders {path}", hint)
        except FileNotFoundError:
            return  # written before any folder is made: none was
        try:
            self._clean(entries, cdir.name)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DamagedRecord(f"{path} is damaged too ({e})", hint, str(path)) from e
