"""Commands that reach no node start without loading paramiko, the bootstrap or pulumi
(issue 9: `--help` and `status` were 5x `import typer` because every command loaded them).
Speed itself is measured by bench/startup.py, not here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import json, sys
from cloudtrain.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = ("paramiko", "pulumi", "cloudtrain.remote", "cloudtrain.bootstrap", "cloudtrain.lifecycle")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m in heavy)), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["status"], ["status", "--json"], ["gpus"]], ids=" ".join)
def test_commands_that_reach_no_node_load_no_ssh_or_cloud_code(tmp_path: Path, args: list[str]) -> None:
    env = {**os.environ, "CLOUDTRAIN_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, timeout=60)
    loaded = json.loads(proc.stderr.strip().splitlines()[-1])
    assert loaded == [], f"`cloudtrain {' '.join(args)}` loaded {loaded}"
