"""Commands that reach no node start without loading paramiko, the bootstrap or pulumi, nor
what made them slow to start besides (issue 9: `--help` and `status` were 5x `import typer`):
rich and markdown-it (typer's rich help), pydantic (typer's coercion of a None `--help`),
cryptography (key generation). Speed itself is measured by bench/startup.py, not here."""

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
heavy = ["paramiko", "pulumi", "cloudtrain.remote", "cloudtrain.bootstrap", "cloudtrain.lifecycle"]
if sys.argv[1] != "gpus":  # gpus reads the catalog, and typer checks its --sort with pydantic
    heavy += ["rich", "markdown_it", "pydantic", "cryptography", "cloudtrain.catalog", "cloudtrain.compat"]
heavy = tuple(heavy)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m in heavy)), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["status"], ["status", "--json"], ["gpus"]], ids=" ".join)
def test_commands_that_reach_no_node_load_no_ssh_or_cloud_code(tmp_path: Path, args: list[str]) -> None:
    env = {**os.environ, "CLOUDTRAIN_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, timeout=60)
    loaded = json.loads(proc.stderr.strip().splitlines()[-1])
    assert loaded == [], f"`cloudtrain {' '.join(args)}` loaded {loaded}"


def test_plain_help_keeps_example_lines_and_typer_still_checks_values(tmp_path: Path) -> None:
    """The plain help keeps a docstring's later lines apart (typer's rich help did), and typer's
    value checks still run once a value is given (pydantic is only deferred, not bypassed)."""
    env = {**os.environ, "CLOUDTRAIN_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "cloudtrain.cli"]
    helped = subprocess.run([*cli, "compat", "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    lines = [line.strip() for line in helped.stdout.splitlines()]
    examples = [line for line in lines if line.startswith("Example:")]
    assert len(examples) == 2 and examples[0].endswith("--json"), helped.stdout
    bad = subprocess.run([*cli, "up", "--nodes", "two"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("cloudtrain: error:") and "--nodes" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_bare_cloudtrain_prints_the_help_and_no_error_line(tmp_path: Path) -> None:
    env = {**os.environ, "CLOUDTRAIN_HOME": str(tmp_path / "home")}
    bare = subprocess.run([sys.executable, "-m", "cloudtrain.cli"], env=env, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and bare.stderr == "", bare.stderr
    assert bare.stdout.startswith("Usage:") and "status" in bare.stdout


def test_command_parameters_carry_real_annotations_not_strings() -> None:
    """typer builds every command at each start; a string annotation (`from __future__ import
    annotations` in a command module) is compiled and evaluated there, each time: ~10 ms of a
    20 ms `status` run."""
    import inspect

    from cloudtrain.cli import app

    callbacks = [c.callback for c in app.registered_commands] + [g.typer_instance.registered_callback.callback for g in app.registered_groups if g.typer_instance.registered_callback]
    callbacks += [c.callback for g in app.registered_groups for c in g.typer_instance.registered_commands]
    strings = {f"{cb.__module__}.{cb.__name__}": name for cb in callbacks if cb for name, hint in inspect.get_annotations(cb).items() if isinstance(hint, str)}
    assert len(callbacks) > 10 and strings == {}, strings
