"""The Python API (cloudtrain/api.py) on real local clusters, and its runnable example."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import cloudtrain
import cloudtrain.api
from cloudtrain.errors import BadInput, CloudtrainError, JobFailed

ROOT = Path(__file__).resolve().parents[1]
FAIL = textwrap.dedent(
    """
    import json, os, sys
    out = os.environ["CLOUDTRAIN_OUTPUT_DIR"]
    json.dump({"loss": float(os.environ["LOSS"])}, open(os.path.join(out, "metrics.json"), "w"))
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        for step in range(3):
            f.write(json.dumps({"step": step, "loss": 1.0 / (step + 1)}) + "\\n")
    print("args", sys.argv[1:], flush=True)
    sys.exit(int(os.environ["CODE"]))
    """
)
SLEEP = "import os, time\nopen(os.path.join(os.environ['CLOUDTRAIN_OUTPUT_DIR'], 'half.txt'), 'w').write('x')\ntime.sleep(600)\n"


def test_import_cloudtrain_stays_light() -> None:
    """`import cloudtrain` and reaching `cloudtrain.up` load neither paramiko nor typer."""
    code = (
        "import sys, cloudtrain\n"
        "assert 'paramiko' not in sys.modules and 'cloudtrain.api' not in sys.modules\n"
        "up = cloudtrain.up\n"
        "assert callable(up) and cloudtrain.Cluster and cloudtrain.Job\n"
        "assert 'paramiko' not in sys.modules and 'typer' not in sys.modules, sorted(m for m in sys.modules if 'paramiko' in m)\n"
        "try:\n    cloudtrain.nothing_here\nexcept AttributeError:\n    print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_bad_spec_is_bad_input_and_creates_nothing(home: Path) -> None:
    with pytest.raises(BadInput, match="unknown provider"):
        cloudtrain.up(provider="nope")
    with pytest.raises(BadInput, match="unknown framework"):
        cloudtrain.up(provider="local", framework="tensorflaw")
    with pytest.raises(BadInput, match="machines you own"):
        cloudtrain.up(provider="local", hosts=["me@box"])
    assert not (home / "clusters").exists() or not [p for p in (home / "clusters").iterdir() if not p.name.startswith(".")]


# One mistake each, as each caller writes it: the API's error names its keyword argument, the
# CLI's its flag (spec_build.py builds both callers' specs).
SPEC_MISTAKES = {
    "gpu count": ({"gpu": "t4:x"}, "invalid GPU count in gpu='t4:x'", "invalid GPU count in --gpu 't4:x'"),
    "nodes": ({"nodes": 0}, "pass nodes=1 or more", "pass --nodes 1 or more"),
    "disk": ({"disk_gb": 5}, "pass disk_gb between 10 and 16384", "pass --disk-gb between 10 and 16384"),
    "autostop": ({"autostop": "0m"}, "pass autostop='1m' or longer", "pass --autostop 1m or longer"),
    "max duration": ({"max_duration": "off"}, "invalid max_duration='off'", "invalid --max-duration 'off'"),
    "framework": ({"framework": "none==1"}, "write framework='none'", "write --framework none"),
    "ssh cidr": ({"ssh_cidr": "0.0.0.0/0"}, "ssh_cidr='0.0.0.0/0' opens SSH", "--ssh-cidr 0.0.0.0/0 opens SSH"),
    "hosts": ({"hosts": ["me@box"]}, "hosts and identity name machines you own; provider='local'", "--host and --identity name machines you own; --provider local"),
}


def test_cloudtrain_spec_is_the_apis_whatever_was_imported_first() -> None:
    """The module cloudtrain/spec.py takes the package's name `spec` once imported (here it
    is): `cloudtrain.spec(...)` must still be the API's builder, as the README says."""
    import cloudtrain.spec as module

    assert cloudtrain.spec(provider="local", framework="none", nodes=2) == cloudtrain.api.spec(provider="local", framework="none", nodes=2)
    assert module.ClusterSpec is cloudtrain.api.ClusterSpec  # and it is still the module


@pytest.mark.parametrize("options, api_says, cli_says", SPEC_MISTAKES.values(), ids=SPEC_MISTAKES.keys())
def test_spec_errors_name_options_as_each_caller_writes_them(options: dict, api_says: str, cli_says: str) -> None:
    import inspect

    from cloudtrain.cli.options import cluster_spec_of
    from cloudtrain.spec_build import cluster_spec

    with pytest.raises(BadInput) as api:
        cloudtrain.api.spec(**options)
    api_line = api.value.line()
    assert api_says.lower() in api_line.lower() and "--" not in api_line, api_line
    flags = {k: p.default for k, p in inspect.signature(cluster_spec).parameters.items() if k != "names"}  # the CLI's defaults
    flags.update(options)
    flags["host"] = flags.pop("hosts")  # the CLI's repeated --host
    with pytest.raises(BadInput) as cli:
        cluster_spec_of(flags)
    assert cli_says.lower() in cli.value.line().lower(), cli.value.line()


def test_up_run_metrics_and_down_in_process(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text(FAIL)
    (tmp_path / "sleep.py").write_text(SLEEP)
    lines: list[str] = []
    with cloudtrain.up(provider="local", framework="none", name="api-test", log=lines.append) as c:
        assert [n["name"] for n in c.nodes] == ["api-test-0"]
        job = c.run("train.py", ["--lr", "0.1"], env={"LOSS": "0.5", "CODE": "0"}, output=tmp_path / "ok")
        assert (job.exit_code, job.status) == (0, "fetched")
        assert job.metrics == {"loss": 0.5}
        assert [row["step"] for row in job.series] == [0, 1, 2]
        assert "args ['--lr', '0.1']" in job.log

        with pytest.raises(JobFailed) as failed:
            c.run("train.py", env={"LOSS": "2", "CODE": "3"}, output=tmp_path / "bad")
        assert failed.value.exit_code == 3
        assert json.loads((tmp_path / "bad" / "metrics.json").read_text()) == {"loss": 2.0}  # outputs home anyway
        unchecked = c.run("train.py", env={"LOSS": "2", "CODE": "4"}, output=tmp_path / "bad2", check=False)
        assert unchecked.exit_code == 4

        # A detached job whose outputs cannot come home: leaving the block must not lose them.
        owed = c.run("sleep.py", output=tmp_path / "owed", detach=True)
        assert owed.status in ("starting", "running")
        shutil.rmtree(tmp_path / "owed")
        (tmp_path / "owed").write_text("a file where the folder should be")
        with pytest.raises(CloudtrainError, match="could not bring home"):
            c.__exit__(None, None, None)
        assert cloudtrain.cluster("api-test").name == "api-test"  # still up, its job still owed
        (tmp_path / "owed").unlink()
    # The block's own exit: this time the outputs come home, then the cluster goes.
    assert (tmp_path / "owed" / "half.txt").read_text() == "x"
    assert not (home / "clusters" / "api-test").exists()
    assert [j.exit_code for j in cloudtrain.runs(cluster="api-test")][:3] == [0, 3, 4]
    assert any("is ready" in line for line in lines) and any("is down" in line for line in lines)


def test_example_runs_on_a_local_cluster(home: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "api.py")],
        cwd=tmp_path, env={**os.environ, "CLOUDTRAIN_HOME": str(home)}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "runs" / "api-example"
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["epochs"] == 30 and summary["loss"] < 0.05 and abs(summary["w"] - 3) < 0.1
    assert f"final metrics: {summary}" in proc.stdout
    assert "epochs recorded: 30" in proc.stdout
    assert "cluster api-example is down" in proc.stderr  # downed on the way out of the block
    assert not (home / "clusters" / "api-example").exists()
