"""`--provider ssh`: a machine the user already has, here an OpenSSH sshd this test starts
itself (its own sshd_config, host key, authorized key and home), not the local provider.

Its host key comes from the user's known_hosts only; `down` ends cloudtrain's jobs and removes
cloudtrain's folder, and leaves the machine (its sshd, its files, a cloudtrain home on it) alone."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import paramiko
import pytest

from conftest import Cli, one_line_error

from cloudtrain import keys
from cloudtrain.errors import BadInput
from cloudtrain.provisioner import ssh as sshprov

SLEEPER = textwrap.dedent(
    """
    import os, time
    out = os.environ["CLOUDTRAIN_OUTPUT_DIR"]
    open(os.path.join(out, "pid"), "w").write(str(os.getpid()))
    open(os.path.join(out, "started.txt"), "w").write("yes")
    time.sleep(600)
    """
)
WRITER = textwrap.dedent(
    """
    import json, os
    out = os.environ["CLOUDTRAIN_OUTPUT_DIR"]
    open(os.path.join(out, "model.txt"), "w").write("trained on " + os.uname().nodename)
    json.dump({"loss": 0.25}, open(os.path.join(out, "metrics.json"), "w"))
    print("running in", os.getcwd(), flush=True)
    """
)


class Box:
    """A running sshd on 127.0.0.1 that stands for the user's GPU machine."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "box"
        self.home = self.dir / "home"  # the SSH user's home on "the machine"
        self.home.mkdir(parents=True)
        self.user = getpass.getuser()
        self.host_key = keys.write_pair(self.dir / "ssh_host_ed25519_key", comment="box")
        self.client_dir = base / "client"  # the user's own computer: HOME with ~/.ssh
        ssh_dir = self.client_dir / ".ssh"
        self.identity = ssh_dir / "id_ed25519"
        client_pub = keys.write_pair(self.identity, comment="me")
        (self.dir / "authorized_keys").write_text(client_pub + "\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        (self.dir / "sshd_config").write_text(
            "\n".join(
                [
                    f"ListenAddress 127.0.0.1:{self.port}",
                    f"HostKey {self.dir / 'ssh_host_ed25519_key'}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    f"SetEnv HOME={self.home}",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sshd, "-D", "-f", str(self.dir / "sshd_config"), "-E", str(self.dir / "sshd.log")])
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def target(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def pin(self, line: str | None = None, hashed: bool = False) -> None:
        """Write the client's known_hosts: the box's key (or `line`'s), plain or hashed."""
        name = f"[127.0.0.1]:{self.port}"
        if hashed:
            name = paramiko.HostKeys.hash_host(name)
        key_type, body = keys.key_type_and_body(line or self.host_key)
        (self.client_dir / ".ssh" / "known_hosts").write_text(f"other.example ssh-ed25519 {body}\n{name} {key_type} {body}\n")

    def env(self) -> dict[str, str]:
        return {"HOME": str(self.client_dir)}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory):
    b = Box(tmp_path_factory.mktemp("sshprov"))
    yield b
    b.stop()


def _nothing_created(home: Path) -> None:
    clusters = home / "clusters"  # a lock file (hidden) may stay; no cluster folder may
    assert not clusters.exists() or not [p for p in clusters.iterdir() if not p.name.startswith(".")]


# --- bad input: exit 2, one line, nothing created ----------------------------------------


@pytest.mark.parametrize(
    "args, says",
    [
        (["--host", "gpu-box"], "names no user"),
        (["--host", "me@gpu-box:99999"], "port '99999'"),
        (["--host", "me@gpu-box", "--identity", "/nonexistent/key"], "--identity /nonexistent/key: no such file"),
    ],
)
def test_bad_input_is_one_line_exit_2(cli: Cli, home: Path, box: Box, args: list[str], says: str) -> None:
    args = [str(box.identity) if a == "IDENTITY" else a for a in args]
    proc = cli("up", "--provider", "ssh", "--framework", "none", *args, env=box.env())
    assert proc.returncode == 2, proc.stderr
    assert says in one_line_error(proc)
    _nothing_created(home)


def test_host_with_another_provider_is_refused(cli: Cli, home: Path, box: Box) -> None:
    proc = cli("up", "--provider", "local", "--framework", "none", "--host", box.target, env=box.env())
    assert proc.returncode == 2
    assert "--provider ssh" in one_line_error(proc)
    _nothing_created(home)


def test_spec_checks(tmp_path: Path, box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `check` refuses before anything exists (in process: each CLI start costs seconds)."""
    from cloudtrain.spec import ClusterSpec

    prov = sshprov.SshProvisioner()
    monkeypatch.setenv("HOME", str(box.client_dir))
    box.pin()
    locked = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret-phrase", "-f", str(locked)], check=True)
    cases = {
        "needs the machines": ClusterSpec(name="ssh", provider="ssh"),
        "given twice": ClusterSpec(name="ssh", provider="ssh", hosts=("me@gpu", "me@gpu:22")),
        "passphrase": ClusterSpec(name="ssh", provider="ssh", hosts=(box.target,), identity=str(locked)),
        "not an SSH private key": ClusterSpec(name="ssh", provider="ssh", hosts=(box.target,), identity=str(locked) + ".pub"),
        "--gpu chooses a cloud machine": ClusterSpec(name="ssh", provider="ssh", hosts=(box.target,), gpu="t4"),
    }
    for says, spec in cases.items():
        with pytest.raises(BadInput, match=says):
            prov.check(spec)
    prov.check(ClusterSpec(name="ssh", provider="ssh", hosts=(box.target,)))  # ~/.ssh/id_ed25519 by default


def test_unknown_host_key_is_refused_with_the_command_that_pins_it(cli: Cli, home: Path, box: Box) -> None:
    (box.client_dir / ".ssh" / "known_hosts").write_text(f"127.0.0.1 {box.host_key}\n")  # port 22's, not this one's
    accepted = (box.dir / "sshd.log").read_text().count("Accepted")
    proc = cli("up", "--provider", "ssh", "--framework", "none", "--host", box.target, "--identity", str(box.identity), env=box.env())
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert f"ssh-keyscan -p {box.port} 127.0.0.1 >> {box.client_dir}/.ssh/known_hosts" in line
    assert f"ssh -p {box.port} {box.user}@127.0.0.1" in line
    _nothing_created(home)
    assert (box.dir / "sshd.log").read_text().count("Accepted") == accepted  # not even logged in


def test_a_different_host_key_is_refused_and_nothing_is_left(cli: Cli, home: Path, box: Box, tmp_path: Path) -> None:
    _, impostor = keys.generate("impostor")
    box.pin(impostor)
    proc = cli("up", "--provider", "ssh", "--framework", "none", "--host", box.target, "--identity", str(box.identity), env=box.env())
    assert proc.returncode == 1, proc.stderr
    assert "not the pinned one" in proc.stderr
    _nothing_created(home)
    assert not (box.home / sshprov.NODE_DIR).exists()


def test_known_hosts_lookup(tmp_path: Path) -> None:
    """Hashed names, the [host]:port form, @revoked keys, the strongest type first."""
    _, ed = keys.generate()
    _, ed2 = keys.generate()
    rsa = paramiko.RSAKey.generate(2048)
    rsa_line = f"ssh-rsa {rsa.get_base64()}"
    f = tmp_path / "known_hosts"
    f.write_text(
        f"# mine\n{paramiko.HostKeys.hash_host('[gpu]:2222')} {rsa_line}\n"
        f"{paramiko.HostKeys.hash_host('[gpu]:2222')} {ed}\n"
        f"gpu,10.0.0.5 {ed2}\n@revoked gpu {ed2}\n"
    )
    assert sshprov.pinned_key("u", "gpu", 2222, f) == ed
    f.write_text(f"[gpu]:2222 {rsa_line}\n")
    assert sshprov.pinned_key("u", "gpu", 2222, f) == rsa_line
    f.write_text(f"gpu,10.0.0.5 {ed2}\n@revoked gpu {ed2}\n")
    with pytest.raises(BadInput, match="not in"):
        sshprov.pinned_key("u", "10.0.0.5", 22, f)  # revoked, whichever name it is looked up by
    with pytest.raises(BadInput) as refused:
        sshprov.pinned_key("u", "gpu", 22, tmp_path / "absent")
    assert f"ssh-keyscan gpu >> {tmp_path / 'absent'}" in refused.value.line() and "`ssh u@gpu`" in refused.value.line()


def test_parse_host() -> None:
    assert sshprov.parse_host("ubuntu@gpu-box") == ("ubuntu", "gpu-box", 22)
    assert sshprov.parse_host("me@10.1.2.3:2222") == ("me", "10.1.2.3", 2222)
    assert sshprov.parse_host("me@[fe80::1]:2200") == ("me", "fe80::1", 2200)
    for bad in ("gpu-box", "me@", "me@box:0", "me@box:", "@box"):
        with pytest.raises(BadInput):
            sshprov.parse_host(bad)


# --- a real cluster on the box -------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def test_up_run_down_leaves_the_machine_and_its_files(cli: Cli, home: Path, box: Box, tmp_path: Path) -> None:
    box.pin(hashed=True)
    sentinel = box.home / "my-data.txt"
    sentinel.write_text("the user's own")
    own_home = box.home / ".cloudtrain" / "clusters"  # the machine's own cloudtrain home, if it has one
    own_home.mkdir(parents=True)
    (own_home / "keep.txt").write_text("theirs")
    work = tmp_path / "project"
    work.mkdir()
    (work / "train.py").write_text(WRITER)
    (work / "sleep.py").write_text(SLEEPER)
    env = box.env()

    up = cli("up", "--provider", "ssh", "--framework", "none", "--host", box.target, "--identity", str(box.identity), env=env)
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == "ssh"
    roots = list((box.home / sshprov.NODE_DIR).iterdir())
    assert len(roots) == 1 and roots[0].name.startswith("ssh-")
    assert (roots[0] / "venv" / "bin" / "python").exists()  # bootstrap ran there, as on any node

    status = json.loads(cli("status", "--json", env=env).stdout)
    (row,) = status["clusters"]
    assert row["provider"] == "ssh" and row["autostop_s"] == 0 and row["price_per_hour"] == 0
    assert row["nodes"][0]["root"] == str(roots[0])

    run = cli("run", "train.py", "--output", str(tmp_path / "out"), cwd=work, env=env)
    assert run.returncode == 0, run.stderr
    assert f"running in {roots[0]}/jobs/" in run.stdout  # in cloudtrain's folder on the machine
    assert (tmp_path / "out" / "model.txt").read_text().startswith("trained on")
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == {"loss": 0.25}

    detached = cli("run", "sleep.py", "--detach", "--output", str(tmp_path / "sleeping"), cwd=work, env=env)
    assert detached.returncode == 0, detached.stderr
    deadline = time.monotonic() + 60
    while not (pidfiles := list((roots[0] / "jobs").glob("*/out/pid"))):
        assert time.monotonic() < deadline, "the detached job never started"
        time.sleep(0.1)
    time.sleep(0.2)  # the pid written, not only created
    pid = int(pidfiles[0].read_text())
    assert _alive(pid)

    # A process of cloudtrain's no job record names (a bootstrap step's straggler, say): its
    # working folder is cloudtrain's, so `down` ends it too.
    stray = subprocess.Popen(["sleep", "600"], cwd=roots[0] / "venv", start_new_session=True)

    down = cli("down", env=env)
    assert down.returncode == 0, down.stderr
    assert not _alive(pid)  # cloudtrain's job ended
    assert stray.wait(timeout=30) == -15  # TERMed by down
    assert (tmp_path / "sleeping" / "started.txt").read_text() == "yes"  # its outputs came home
    assert not (box.home / sshprov.NODE_DIR).exists()  # cloudtrain's files are gone
    assert sentinel.read_text() == "the user's own"  # the machine's are not
    assert (own_home / "keep.txt").read_text() == "theirs"
    assert box.proc.poll() is None  # the machine itself still runs
    socket.create_connection(("127.0.0.1", box.port), timeout=5).close()
    _nothing_created(home)


def test_down_force_with_a_damaged_record_removes_cloudtrains_folder(cli: Cli, home: Path, box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folders are listed in the provider folder too: `down --force` finds them without the
    record. (The provisioner's create in process, then the real CLI: no bootstrap needed.)"""
    from cloudtrain.spec import ClusterSpec
    from cloudtrain.state import ClusterRecord, Store

    monkeypatch.setenv("HOME", str(box.client_dir))
    box.pin()
    spec = ClusterSpec(name="broken", provider="ssh", hosts=(box.target,), identity=str(box.identity))
    cdir = Store().cluster_dir("broken")
    cdir.create(provider="ssh")
    record = ClusterRecord(spec=spec)
    record.cluster = sshprov.SshProvisioner().create(spec, cdir, record)
    cdir.save(record)
    (root,) = list((box.home / sshprov.NODE_DIR).iterdir())
    assert root.name.startswith("broken-")
    cdir.record_path.write_text('{"spec": ')  # cut off
    proc = cli("down", "--force", "--cluster", "broken", env=box.env())
    assert proc.returncode == 0, proc.stderr
    assert "destroying what the ssh provider can find" in proc.stderr
    assert not (box.home / sshprov.NODE_DIR).exists()
    _nothing_created(home)
