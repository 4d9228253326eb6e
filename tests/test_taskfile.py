"""Task files: the same specs as the flags (unit, through the CLI's own parsing), refusals in one
line (real CLI), and a task with setup + a shell `run` on a real two-node local cluster."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest
import typer

from conftest import Cli, local_cluster, one_line_error

from cloudtrain.cli.app import app
from cloudtrain.cli.options import cluster_spec_of, job_spec_of, with_task
from cloudtrain.errors import BadInput

import cloudtrain.cli  # noqa: F401  (registers the commands on `app`)

TASK = """
name: mnist
workdir: .
num_nodes: 2
resources:
  infra: aws/us-east-1/us-east-1a
  accelerators: {T4: 1}
  use_spot: true
  disk_size: 200GB
  autostop:
    idle_minutes: 30
envs:
  SEED: 1
  LR: "0.1"
secrets:
  HF_TOKEN: null
framework: torch==2.13.0
cuda: "12.1"
image: ubuntu
outputs: out
run: train.py
"""


def _specs(args: list[str]):
    """What `cloudtrain launch ARGS` builds, parsed by the CLI's own command and helpers."""
    command = typer.main.get_command(app).commands["launch"]  # type: ignore[attr-defined]
    ctx = command.make_context("launch", list(args))
    p = with_task(ctx, ctx.params["script"])
    return cluster_spec_of(p), job_spec_of(p)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "train.py").write_text("print('hi')\n")
    (proj / "task.yaml").write_text(TASK)
    monkeypatch.chdir(proj)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    return proj


def test_a_task_file_and_the_equivalent_flags_give_the_same_specs(project: Path) -> None:
    from_file = _specs(["task.yaml"])
    from_flags = _specs([
        "train.py", "--provider", "aws", "--region", "us-east-1", "--zone", "us-east-1a", "--gpu", "t4:1", "--spot",
        "--disk-gb", "200", "--autostop", "30m", "--nodes", "2", "--env", "SEED=1", "--env", "LR=0.1", "--secret", "HF_TOKEN",
        "--framework", "torch==2.13.0", "--cuda", "12.1", "--image", "ubuntu", "--output", "out",
    ])
    assert from_file[0] == from_flags[0]
    assert from_file[0].gpu == "t4" and from_file[0].nodes == 2 and from_file[0].autostop_s == 1800 and from_file[0].disk_gb == 200
    # The task's name names its jobs; no flag says that.
    assert from_file[1].name == "mnist"
    assert from_file[1] == dataclasses.replace(from_flags[1], name="mnist")
    assert from_file[1].secrets == {"HF_TOKEN": None} and from_file[1].env == {"SEED": "1", "LR": "0.1"}


def test_flags_given_win_over_the_file_and_envs_merge_by_name(project: Path) -> None:
    cluster, job = _specs(["task.yaml", "--nodes", "3", "--provider", "gcp", "--gpu", "l4", "--env", "SEED=2"])
    assert (cluster.nodes, cluster.provider, cluster.gpu) == (3, "gcp", "l4")
    assert cluster.region == "us-east-1" and cluster.spot  # what no flag said still comes from the file
    assert job.env == {"SEED": "2", "LR": "0.1"}
    # A default the user did not type never overrides the file (the file says aws, not local).
    assert _specs(["task.yaml"])[0].provider == "aws"


def test_skypilot_forms_cloud_region_and_plain_accelerators(project: Path) -> None:
    (project / "old.yaml").write_text("resources:\n  cloud: gcp\n  region: us-central1\n  accelerators: A100:8\n  autostop: false\nrun: train.py\n")
    cluster, job = _specs(["old.yaml"])
    assert (cluster.provider, cluster.region, cluster.gpu, cluster.gpu_count, cluster.autostop_s) == ("gcp", "us-central1", "a100", 8, 0)
    assert job.script == project / "train.py" and job.shell is None


def test_a_run_snippet_and_setup_become_the_job_s_shell_parts(project: Path) -> None:
    (project / "sh.yaml").write_text("setup: pip list\nrun: |\n  python train.py --epochs 3\n")
    cluster, job = _specs(["sh.yaml"])
    assert cluster.provider == "local"
    assert job.shell == "python train.py --epochs 3\n" and job.setup == "pip list" and job.launcher == "none"
    assert job.workdir == project and job.script_rel is None


def _refused_here(project: Path, text: str, *flags: str) -> str:
    """The BadInput the CLI would print (as its one line) for this task file."""
    (project / "bad.yaml").write_text(textwrap.dedent(text))
    with pytest.raises(BadInput) as e:
        _specs(["bad.yaml", *flags])
    return e.value.line().lower()


def test_unknown_and_refused_keys_name_the_key_and_what_to_do(project: Path) -> None:
    assert "unknown key `num_node`" in (line := _refused_here(project, "num_node: 2\nrun: echo hi\n")) and "did you mean `num_nodes`" in line
    assert "did you mean `resources.accelerators`" in _refused_here(project, "resources:\n  accelerator: T4\nrun: echo hi\n")
    assert "`file_mounts` is not supported" in _refused_here(project, "file_mounts:\n  /data: s3://bucket\nrun: echo hi\n")
    assert "`resources.instance_type` is not supported" in _refused_here(project, "resources:\n  instance_type: p3.2xlarge\nrun: echo hi\n")
    assert "`service` is not supported" in _refused_here(project, "service:\n  readiness_probe: /\nrun: echo hi\n")
    assert "is not a mapping" in _refused_here(project, "- just\n- a list\n")
    assert "holds a value" in _refused_here(project, "secrets:\n  TOKEN: abc123\nrun: echo hi\n")
    assert "has no `run`" in _refused_here(project, "num_nodes: 1\n")
    assert "several candidates" in _refused_here(project, "resources:\n  accelerators: [T4, L4]\nrun: echo hi\n")
    assert "cloud 'k8s' is not supported" in _refused_here(project, "resources:\n  infra: k8s/my-context\nrun: echo hi\n")
    (project / "bad.yaml").write_text("run: echo hi\n")
    assert _specs(["bad.yaml", "--gpu", "t4"])[0].gpu == "t4"  # a flag's GPU is never dropped: local then refuses it


def test_a_damaged_or_unknown_task_file_is_one_line_exit_2_through_the_cli(cli: Cli) -> None:
    (cli.cwd / "bad.yaml").write_text("run: echo hi\n  bad: [unclosed\n")
    (cli.cwd / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    (cli.cwd / "typo.yaml").write_text("num_node: 2\nrun: echo hi\n")
    for args, words in ((["launch", "bad.yaml"], "not valid yaml at line 2"), (["up", "bin.yaml"], "cannot read task file"),
                        (["run", "typo.yaml"], "did you mean `num_nodes`")):
        proc = cli(*args)
        assert proc.returncode == 2, proc.stderr
        assert words in one_line_error(proc).lower()
    assert not (cli.home / "clusters").exists() or not any((cli.home / "clusters").iterdir())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """One ready two-node cluster (framework none) shared by this module's end-to-end tests."""
    with local_cluster(tmp_path_factory, "task", nodes=2) as (cli, _):
        yield cli


RUN = """\
run: |
  echo "rank $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES"
  python -c "import os, sys; open(os.environ['CLOUDTRAIN_OUTPUT_DIR'] + '/seen.json', 'w').write(__import__('json').dumps({'seed': os.environ['SEED'], 'python': sys.executable, 'cwd': os.getcwd(), 'made': open(os.environ['VIRTUAL_ENV'] + '/made-by-setup').read()}))"
"""


def _task(folder: Path, setup: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "data.txt").write_text("shipped\n")
    path = folder / "task.yaml"
    path.write_text(f"name: snippet\nenvs:\n  SEED: 42\nsetup: |\n  {setup}\n  echo made > \"$VIRTUAL_ENV/made-by-setup\"\n{RUN}")
    return path


def test_setup_and_a_shell_run_on_a_real_cluster_setup_once_per_distinct_content(cluster: Cli, tmp_path: Path) -> None:
    task = _task(tmp_path / "proj", 'echo "SETUP ONE seed=$SEED"')
    out = tmp_path / "out1"
    first = cluster("run", str(task), "--output", str(out))
    assert first.returncode == 0, first.stderr
    log = (out / "log.txt").read_text()
    assert "SETUP ONE seed=42" in log and "rank 0 of 2" in log
    assert "SETUP ONE" in (out / "rank-1" / "log.txt").read_text()  # setup runs on every node
    for seen_file in (out / "seen.json", out / "rank-1" / "seen.json"):
        seen = json.loads(seen_file.read_text())
        assert seen["seed"] == "42" and seen["made"] == "made\n"
        assert seen["python"].endswith("/venv/bin/python")  # the job's venv is first on PATH
    assert json.loads((out / "run.json").read_text())["script"] == "(task run)"

    # The same setup again: not run (but the job is); a changed setup: run once more.
    again = cluster("run", str(task), "--output", str(tmp_path / "out2"))
    assert again.returncode == 0, again.stderr
    assert "SETUP ONE" not in (tmp_path / "out2" / "log.txt").read_text()
    assert again.stderr.count("setup unchanged, not run again") == 2
    task = _task(tmp_path / "proj", 'echo "SETUP TWO"')
    third = cluster("run", str(task), "--output", str(tmp_path / "out3"))
    assert third.returncode == 0, third.stderr
    assert "SETUP TWO" in (tmp_path / "out3" / "log.txt").read_text()


def test_a_failing_setup_fails_the_run_naming_the_node_and_its_last_line(cluster: Cli, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "task.yaml").write_text("setup: |\n  echo 'no such package: torchh' >&2\n  exit 3\nrun: echo never\n")
    proc = cluster("run", str(proj / "task.yaml"), "--output", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "the task's setup failed on local-" in proc.stderr and "no such package: torchh" in proc.stderr
    assert "Traceback" not in proc.stderr


# SkyPilot's quickstart task (docs "Quickstart", hello_sky.yaml) as a user would have it; only
# `conda env list` is replaced by the training script (no conda here).
HELLO_SKY = """\
resources:
  # Optional; if left out, automatically pick the cheapest cloud.
  cloud: aws
  # 8x NVIDIA A100 GPU
  accelerators: A100:8

# Working directory (optional) containing the project codebase.
# Its contents are synced to ~/sky_workdir/ on the cluster.
workdir: .

# Typical use: pip install -r requirements.txt
# Invoked under the workdir (i.e., can use its files).
setup: |
  echo "Running setup."

# Typical use: make use of resources, such as running training.
# Invoked under the workdir (i.e., can use its files).
run: |
  echo "Hello, SkyPilot!"
  python train.py
"""


def _hello_sky(folder: Path) -> Path:
    folder.mkdir()
    (folder / "hello_sky.yaml").write_text(HELLO_SKY)
    (folder / "train.py").write_text("import os\nopen(os.environ['CLOUDTRAIN_OUTPUT_DIR'] + '/model.txt', 'w').write('trained')\n")
    return folder / "hello_sky.yaml"


def test_a_plain_skypilot_task_file_s_gpu_is_dropped_on_local_with_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(_hello_sky(tmp_path / "hello-sky").parent)
    cluster, job = _specs(["hello_sky.yaml", "--provider", "local", "--framework", "none"])
    assert (cluster.provider, cluster.gpu) == ("local", None)
    assert "hello_sky.yaml asks for GPU a100:8; the local provider has none, so it runs on CPU" in capsys.readouterr().err
    assert _specs(["hello_sky.yaml"])[0].gpu == "a100"  # on the cloud it names, the GPU stands


def test_a_plain_skypilot_task_file_runs_as_it_is(cluster: Cli, tmp_path: Path) -> None:
    task = _hello_sky(tmp_path / "hello-sky")
    proc = cluster("run", task.name, "--output", str(tmp_path / "out"), cwd=task.parent)
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "Running setup." in log and "Hello, SkyPilot!" in log
    assert (tmp_path / "out" / "model.txt").read_text() == "trained"


@pytest.mark.parametrize("name", ["aws", "gcp", "azure", "local"])
def test_the_example_task_files_build_specs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    examples = Path(__file__).resolve().parent.parent / "examples"
    monkeypatch.chdir(examples)
    cluster, job = _specs([f"{name}.yaml"])
    assert cluster.provider == name and job.workdir == examples
    assert (cluster.gpu, job.script_rel) == ((None, None) if name == "local" else ("t4", "mnist.py"))
