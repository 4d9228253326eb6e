"""Without the cloud extra (issue 10 item 8): the CLI run as a real process in a real venv that
holds cloudtrain's base dependencies and nothing else.

The venv is built offline from what is installed here: every file of the distributions that
cloudtrain's base requirements pull in (paramiko, typer, pathspec and theirs, read from their
metadata), copied into a fresh `venv --without-pip`, with the source tree on its path. pulumi,
boto3 and google-auth are simply not there, as after `pip install cloudtrain`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

from conftest import one_line_error

ROOT = Path(__file__).resolve().parents[1]
EXTRA = "pip install 'cloudtrain[cloud]'"


def base_distributions() -> list[metadata.Distribution]:
    """cloudtrain's base requirements and theirs, as installed (extras left out)."""
    todo = [r for r in metadata.requires("cloudtrain") or [] if "extra ==" not in r]
    found: dict[str, metadata.Distribution] = {}
    while todo:
        name = re.match(r"[A-Za-z0-9._-]+", todo.pop()).group(0)
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # excluded by a marker on this Python
            continue
        found[key] = dist
        todo += [r for r in dist.requires or [] if "extra ==" not in r]
    return list(found.values())


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("no-cloud-extra") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for dist in base_distributions():
        for rel in dist.files or []:
            if rel.parts[0] == ".." or "__pycache__" in rel.parts:  # scripts outside site-packages; caches
                continue
            src = Path(dist.locate_file(rel))
            if src.is_file():
                (site / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, site / rel)
    (site / "cloudtrain-source.pth").write_text(f"{ROOT}\n")
    # The venv must really lack the cloud extra, and really have the base install.
    probe = "import importlib.util as u; print([m for m in ('pulumi', 'boto3', 'google', 'paramiko', 'typer') if u.find_spec(m)])"
    present = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True).stdout.strip()
    assert present == "['paramiko', 'typer']", present
    assert sysconfig.get_path("purelib") != str(site)
    return python


def run(python: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["CLOUDTRAIN_HOME"] = str(home)
    return subprocess.run([str(python), "-m", "cloudtrain.cli", *args], env=env, cwd=home.parent,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_up_on_a_cloud_names_the_extra_and_creates_nothing(bare_python, home, provider):
    proc = run(bare_python, home, "up", "--provider", provider, "--gpu", "t4", "--framework", "none")
    line = one_line_error(proc)
    assert proc.returncode == 2
    assert line.startswith("cloudtrain: error: ") and EXTRA in line and f"--provider {provider}" in line
    assert not (home / "clusters").exists() or not any((home / "clusters").iterdir())


def test_launch_and_install_pulumi_name_the_extra(bare_python, home, tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    for args in (("launch", str(script), "--provider", "gcp", "--gpu", "t4"), ("install-pulumi",)):
        proc = run(bare_python, home, *args)
        assert proc.returncode == 2 and EXTRA in one_line_error(proc), args


def test_gpus_and_compat_work_without_it(bare_python, home):
    gpus = run(bare_python, home, "gpus")
    assert gpus.returncode == 0, gpus.stderr
    assert "t4" in gpus.stdout and "gcp" in gpus.stdout
    compat = run(bare_python, home, "compat", "--gpu", "t4", "--framework", "none")
    assert compat.returncode == 0, compat.stderr
    assert compat.stdout.strip()
