"""Every user mistake: one line on stderr, exit code 2, nothing created, nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Cli, one_line_error


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@pytest.fixture
def script(cli: Cli) -> Path:
    path = cli.cwd / "train.py"
    path.write_text("print('hi')\n")
    return path


CASES = {
    "unknown provider": (["up", "--provider", "nimbus"], "unknown provider"),
    "nodes below 1": (["up", "--provider", "local", "--nodes", "0"], "--nodes must be at least 1"),
    "bad cluster name": (["up", "--provider", "local", "--name", "My_Cluster"], "invalid cluster name"),
    # GCP names are RFC 1035 labels: a letter first; 40 characters keep derived names under 63.
    "cluster name with a leading digit": (["up", "--provider", "gcp", "--gpu", "t4", "--name", "4gpus"], "starting with a letter"),
    "cluster name too long": (["up", "--provider", "azure", "--gpu", "t4", "--name", "a" * 41], "Use 1-40 characters"),
    "ipv6 ssh cidr": (["up", "--provider", "aws", "--gpu", "t4", "--ssh-cidr", "2001:db8::/64"], "is not an IPv4 range"),
    "unknown framework": (["up", "--provider", "local", "--framework", "caffe"], "unknown framework"),
    "gpu on local": (["up", "--provider", "local", "--gpu", "t4"], "no GPUs"),
    "script missing": (["run", "nope.py"], "does not exist"),
    "script is a directory": (["run", "."], "is a directory"),
    "script outside workdir": (["run", "train.py", "--workdir", "/usr"], "outside --workdir"),
    "env without =": (["run", "train.py", "--env", "NOEQUALS"], "invalid --env"),
    "output is a file": (["run", "train.py", "--output", "train.py"], "is not a folder"),
    "unknown cluster": (["run", "train.py", "--cluster", "ghost"], "unknown cluster"),
    "no cluster at all": (["run", "train.py"], "no cluster exists"),
    "unknown job": (["logs", "ghost-job"], "unknown job"),
    "unknown option": (["up", "--colour", "blue"], "No such option"),
    "launch unknown provider": (["launch", "train.py", "--provider", "nimbus"], "unknown provider"),
    "launch nodes below 1": (["launch", "train.py", "--nodes", "0"], "--nodes must be at least 1"),
    "ssh with no cluster": (["ssh", "ghost"], "no cluster exists"),
    "ssh a command with no cluster": (["ssh", "--", "ls -la /"], "no cluster exists"),
}


@pytest.mark.parametrize("args,expected", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_exit_2_and_creates_nothing(cli: Cli, script: Path, args: list[str], expected: str) -> None:
    before_home, before_work = _tree(cli.home), _tree(cli.cwd)
    proc = cli(*args, timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert expected in one_line_error(proc)
    assert _tree(cli.home) - before_home <= {"clusters"}, "a refused command created files"
    assert not (cli.home / "clusters").exists() or not any((cli.home / "clusters").iterdir())
    assert _tree(cli.cwd) == before_work


def test_up_with_existing_name_but_different_spec_is_refused(cli: Cli) -> None:
    up = cli("up", "--provider", "local", "--framework", "none", timeout=300)
    try:
        assert up.returncode == 0, up.stderr
        record = (cli.home / "clusters" / "local" / "cluster.json").read_text()
        proc = cli("up", "--provider", "local", "--framework", "none", "--nodes", "2")
        assert proc.returncode == 2
        line = one_line_error(proc)
        assert "exists with a different spec" in line and "nodes: 1 -> 2" in line
        assert (cli.home / "clusters" / "local" / "cluster.json").read_text() == record
        # The same spec again is not an error: the cluster is checked and reused.
        again = cli("up", "--provider", "local", "--framework", "none")
        assert again.returncode == 0, again.stderr
        assert "nothing to do" in again.stderr
    finally:
        assert cli("down").returncode == 0


def test_missing_sshd_names_the_package(cli: Cli) -> None:
    proc = cli("up", "--provider", "local", "--framework", "none", env={"CLOUDTRAIN_SSHD": "/nonexistent/sshd"})
    assert proc.returncode == 1
    assert "apt-get install openssh-server" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert not (cli.home / "clusters" / "local").exists()


def test_down_twice_is_harmless(cli: Cli) -> None:
    assert cli("up", "--provider", "local", "--framework", "none", "--name", "twice", timeout=300).returncode == 0
    first = cli("down", "--cluster", "twice")
    assert first.returncode == 0, first.stderr
    second = cli("down", "--cluster", "twice")
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stderr
    assert not (cli.home / "clusters" / "twice").exists()
