"""Shell completion: typer's protocol (`_CLOUDTRAIN_COMPLETE=complete_bash`, COMP_WORDS and
COMP_CWORD) answered by the real `cloudtrain` entry point, from the home's listing alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloudtrain.cli import completion

CLOUDTRAIN = Path(sys.executable).with_name("cloudtrain")
# Run the entry point as `cloudtrain` (the completion variable's name comes from argv[0]) and
# report, on the way out, whether completing loaded paramiko.
PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('paramiko loaded' if 'paramiko' in sys.modules else 'paramiko not loaded', file=sys.stderr))\n"
    "sys.argv = ['cloudtrain']\n"
    "from cloudtrain.cli import main\n"
    "main()\n"
)


@pytest.fixture
def filled(home: Path) -> Path:
    (home / "clusters" / "alpha").mkdir(parents=True)
    (home / "clusters" / "alpha" / "cluster.json").write_text("{}")  # damaged records still complete
    (home / "clusters" / "beta").mkdir()
    (home / "clusters" / "beta" / "provider.txt").write_text("local\n")
    (home / "clusters" / "empty-dir").mkdir()  # no record, no marker: not a cluster
    (home / "clusters" / ".alpha.lock").write_text("")
    (home / "jobs").mkdir()
    for job in ("train-20261201-101010-ab12", "mnist-ddp-20261202-090000-cd34", "train-20261130-235959-ef56"):
        (home / "jobs" / f"{job}.json").write_text("{}")
    return home


def _complete(words: str, cword: int, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLOUDTRAIN_HOME": str(home), "_CLOUDTRAIN_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)


def test_callbacks(filled: Path) -> None:
    assert completion.cluster_names("") == ["alpha", "beta"]
    assert completion.cluster_names("b") == ["beta"]
    assert completion.job_ids("") == ["mnist-ddp-20261202-090000-cd34", "train-20261201-101010-ab12", "train-20261130-235959-ef56"]
    assert completion.job_ids("train-") == ["train-20261201-101010-ab12", "train-20261130-235959-ef56"]


def test_callbacks_without_a_home(home: Path) -> None:
    assert completion.cluster_names("") == [] and completion.job_ids("") == []


@pytest.mark.parametrize(
    "words, cword, expected",
    [
        ("cloudtrain down --cluster ", 3, ["alpha", "beta"]),
        ("cloudtrain run train.py -c a", 4, ["alpha"]),
        ("cloudtrain ssh ", 2, ["alpha", "beta"]),
        ("cloudtrain logs mnist", 2, ["mnist-ddp-20261202-090000-cd34"]),
    ],
)
def test_bash_protocol(filled: Path, words: str, cword: int, expected: list[str]) -> None:
    proc = _complete(words, cword, filled)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == expected
    assert "paramiko not loaded" in proc.stderr


def test_show_completion_prints_the_bash_hook(home: Path) -> None:
    # typer detects the shell it runs in (shellingham walks the parent processes; a shell name
    # after the flag is not read): run it from bash, as a user's prompt would (`; true` keeps
    # bash from exec-ing it away), not straight from pytest, whose parents need hold no shell.
    proc = subprocess.run(["bash", "-c", f"{CLOUDTRAIN} --show-completion; true"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "_CLOUDTRAIN_COMPLETE=complete_bash" in proc.stdout and "complete -o default -F _cloudtrain_completion cloudtrain" in proc.stdout
    assert "--install-completion" in subprocess.run([str(CLOUDTRAIN), "--help"], capture_output=True, text=True, timeout=120).stdout
