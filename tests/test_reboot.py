"""A bootstrap step that asks for a reboot, applied by the real `bootstrap.apply` over real SSH
to a real local node. Only `reboot` is a stand-in (nothing here may reboot): it takes the node
down (its sshd and every session), then, unless told not to, brings it back with a new boot id,
as a VM does. The node's sessions find it on PATH and read the boot id under CLOUDTRAIN_SYSROOT,
both set through the node's own sshd config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import Cli

from cloudtrain.bootstrap import apply as applier
from cloudtrain.bootstrap.steps import Step
from cloudtrain.errors import BootstrapError
from cloudtrain.provisioner.local import find_sshd
from cloudtrain.remote import SshRemote
from cloudtrain.state import Store

BOOT_ID = "proc/sys/kernel/random/boot_id"

# Runs detached (the reboot outlives the session that asked for it). Its settings come through
# the environment, so no process's command line names the sshd config the stand-in kills by.
REBOOT = textwrap.dedent(
    """\
    #!/usr/bin/env bash
    echo "$(date +%s)" >> "$SYSROOT/reboots"
    setsid bash -c '
      sleep "$DELAY"
      listener=$(cat "$NODE_DIR/sshd.pid")
      pkill -KILL -P "$listener"; kill "$listener"   # the node is down: sessions and sshd
      while kill -0 "$listener" 2>/dev/null; do sleep 0.2; done
      sleep 3
      [ "$COME_BACK" = yes ] || exit 0
      echo "boot-$(date +%s%N)" > "$SYSROOT/BOOT_ID"
      "$SSHD" -f "$NODE_DIR/sshd_config" -E "$NODE_DIR/sshd.log"
    ' >/dev/null 2>&1 < /dev/null &
    """
).replace("BOOT_ID", BOOT_ID)


class Node:
    """The module cluster's one node, with the test's hold on its sshd and stand-ins."""

    def __init__(self, cli: Cli, base: Path) -> None:
        record = Store(cli.home).cluster_dir("local").load()
        assert record.cluster is not None
        self.cluster = record.cluster
        self.dir = Path(record.provider_state["node_dirs"][0])
        self.root = self.dir / "root"
        self.bin = base / "bin"
        self.sysroot = base / "sysroot"
        self.bin.mkdir()
        (self.sysroot / BOOT_ID).parent.mkdir(parents=True)
        (self.sysroot / BOOT_ID).write_text("boot-first\n")
        config = self.dir / "sshd_config"
        lines = config.read_text().splitlines()
        extra = f' "PATH={self.bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "CLOUDTRAIN_SYSROOT={self.sysroot}"'
        config.write_text("\n".join(line + extra if line.startswith("SetEnv ") else line for line in lines) + "\n")
        os.kill(self.listener(), signal.SIGHUP)  # sshd re-executes itself and rereads its config
        self._wait_for_new_config()

    def _wait_for_new_config(self) -> None:
        # sshd handles SIGHUP in its main loop; a session accepted before it re-executed still has
        # the old SetEnv (seen once in CI). Wait until a new session sees the new environment.
        deadline = time.monotonic() + 60
        while True:
            try:
                with self.remote(connect_timeout=10) as remote:
                    if remote.run('printf %s "${CLOUDTRAIN_SYSROOT:-}"', timeout=30).stdout == str(self.sysroot):
                        return
            except Exception:  # the listener is between execs; try again
                pass
            assert time.monotonic() < deadline, "the node's sshd never took the new SetEnv"
            time.sleep(0.5)

    def listener(self) -> int:
        return int((self.dir / "sshd.pid").read_text())

    def stand_in(self, delay: float, come_back: bool) -> None:
        settings = {"SYSROOT": self.sysroot, "NODE_DIR": self.dir, "SSHD": find_sshd(), "DELAY": delay, "COME_BACK": "yes" if come_back else "no"}
        exports = "".join(f"export {k}='{v}'\n" for k, v in settings.items())
        script = self.bin / "reboot"
        script.write_text(REBOOT.replace("#!/usr/bin/env bash\n", "#!/usr/bin/env bash\n" + exports))
        script.chmod(0o755)

    def no_op_reboot(self) -> None:
        script = self.bin / "reboot"
        script.write_text(f'#!/usr/bin/env bash\necho "$(date +%s)" >> "{self.sysroot}/reboots"\n')
        script.chmod(0o755)

    def reboots(self) -> int:
        path = self.sysroot / "reboots"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def start_sshd_if_down(self) -> None:
        try:
            os.kill(self.listener(), 0)
            return
        except (OSError, ValueError):
            pass
        subprocess.run([find_sshd(), "-f", str(self.dir / "sshd_config"), "-E", str(self.dir / "sshd.log")], check=True)

    def remote(self, connect_timeout: float = 120.0) -> SshRemote:
        return SshRemote(self.cluster.head, self.cluster.identity_file, connect_timeout=connect_timeout)

    def applied(self) -> dict:
        path = self.root / "bootstrap" / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("reboot")
    work = base / "work"
    work.mkdir()
    cli = Cli(base / "home", work)
    proc = cli("up", "--provider", "local", "--framework", "none", timeout=300)
    assert proc.returncode == 0, proc.stderr
    try:
        yield Node(cli, base)
    finally:
        down = cli("down", timeout=120)
        assert down.returncode == 0, down.stderr


def _steps(tag: str) -> list[Step]:
    record = f'cat "$CLOUDTRAIN_SYSROOT/{BOOT_ID}" >> "$CLOUDTRAIN_NODE_ROOT/boots-{tag}"'
    return [
        Step(f"{tag}-driver", "stands for a driver install", script=record, reboot_after=True),
        Step(f"{tag}-toolkit", "stands for the step after the reboot", script=record),
    ]


@pytest.fixture()
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(applier, "REBOOT_POLL", 1.0)


def test_the_next_step_waits_for_the_new_boot_even_when_shutdown_is_slow(
    node: Node, quick_polls: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The node keeps answering from its old boot for 17 s after `reboot`, longer than a
    # fixed wait would allow; the step after the reboot must still run on the new boot.
    monkeypatch.setattr(applier, "REBOOT_TIMEOUT", 180.0)  # a failure fails in minutes, not 15
    node.stand_in(delay=17, come_back=True)
    before = node.reboots()
    said: list[str] = []
    with node.remote() as remote:
        outcomes = applier.apply(remote, _steps("slow"), {"is_root": True}, say=said.append)
    assert [o.status for o in outcomes] == ["ran", "ran"]
    assert node.reboots() == before + 1
    first, second = (node.root / "boots-slow").read_text().split()
    assert first != second and second == (node.sysroot / BOOT_ID).read_text().strip()
    assert set(node.applied()) >= {"slow-driver", "slow-toolkit"}
    assert any("rebooting" in line for line in said)

    # A second apply finds both steps done: no step runs and nothing reboots.
    with node.remote() as remote:
        again = applier.apply(remote, _steps("slow"), {"is_root": True}, say=said.append)
    assert [o.status for o in again] == ["done before", "done before"] and node.reboots() == before + 1


def test_a_node_that_never_comes_back_fails_the_bootstrap_and_its_step_stays_undone(
    node: Node, quick_polls: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(applier, "REBOOT_TIMEOUT", 15.0)
    node.stand_in(delay=0, come_back=False)
    try:
        with node.remote(connect_timeout=3) as remote:
            with pytest.raises(BootstrapError) as raised:
                applier.apply(remote, _steps("gone"), {"is_root": True}, say=lambda _: None)
            # The logs' fetch after a failure must not replace the failure with its own error.
            applier.fetch_logs(remote, node.dir.parent / "fetched")
    finally:
        node.start_sshd_if_down()
    assert "did not come back from its reboot" in str(raised.value) and raised.value.layer == "reboot"
    assert "serial console" in (raised.value.hint or "")
    # The driver step ran, but with its reboot unfinished it is not recorded as done, and the
    # step after the reboot never ran.
    assert "gone-driver" not in node.applied()
    assert (node.root / "boots-gone").read_text().split() == [(node.sysroot / BOOT_ID).read_text().strip()]


def test_a_reboot_that_does_nothing_is_named_as_such(node: Node, quick_polls: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(applier, "REBOOT_TIMEOUT", 4.0)
    node.no_op_reboot()
    before = node.reboots()
    started = time.monotonic()
    with node.remote() as remote:
        with pytest.raises(BootstrapError) as raised:
            applier.apply(remote, _steps("stuck"), {"is_root": True}, say=lambda _: None)
    assert time.monotonic() - started < 60
    assert node.reboots() == before + 1
    assert "did not reboot" in str(raised.value) and "same boot" in str(raised.value)
    assert "`reboot` had no effect" in (raised.value.hint or "")
    assert "stuck-driver" not in node.applied() and len((node.root / "boots-stuck").read_text().split()) == 1


def test_a_step_that_says_no_reboot_is_needed_is_not_rebooted(node: Node, quick_polls: None) -> None:
    # The nvidia-driver step on a node whose driver is already loaded (a first-boot installer
    # finished it) prints the line; the next step runs on the same boot, and both are recorded.
    node.stand_in(delay=0, come_back=True)
    before = node.reboots()
    steps = _steps("kept")
    steps[0] = Step("kept-driver", "a driver found loaded", reboot_after=True,
                    script=steps[0].script + "; echo 'cloudtrain-reboot: not needed (driver 580.82.07 already loaded)'")
    with node.remote() as remote:
        outcomes = applier.apply(remote, steps, {"is_root": True}, say=lambda _: None)
    assert [o.status for o in outcomes] == ["ran", "ran"] and node.reboots() == before
    first, second = (node.root / "boots-kept").read_text().split()
    assert first == second and set(node.applied()) >= {"kept-driver", "kept-toolkit"}
