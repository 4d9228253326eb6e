"""Secrets on a real two-node local cluster: the job sees them; no file under the cloudtrain home
(which holds the local nodes' roots), the outputs or the workdir, no process's argv and no log
holds a value; run.json names them only. Detached, then followed, so /proc is read mid-job."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import textwrap
import time
from pathlib import Path

import pytest

from conftest import Cli, local_cluster, one_line_error

JOB = textwrap.dedent(
    """
    import hashlib, json, os, time
    out = os.environ["CLOUDTRAIN_OUTPUT_DIR"]
    seen = {k: hashlib.sha256(os.environ[k].encode()).hexdigest() for k in ("API_KEY", "DB_PASS") if k in os.environ}
    json.dump(seen, open(os.path.join(out, "seen.json"), "w"))
    print("rank", os.environ["CLOUDTRAIN_NODE_RANK"], "saw", sorted(seen), flush=True)
    time.sleep(float(os.environ.get("HOLD_S", "0")))
    """
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with local_cluster(tmp_path_factory, "secrets", nodes=2) as (cli, _):
        yield cli


def _files_holding(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            try:
                data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
            except OSError:
                continue
            found += [f"{path}" for needle in needles if needle in data]
    return found


def _cmdlines_holding(needles: list[bytes], marker: bytes) -> tuple[list[str], bool]:
    """Processes whose argv holds a value; and whether the job's own process was among those read."""
    hits, job_seen = [], False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        job_seen |= marker in argv
        hits += [f"{entry}: {argv[:200]!r}" for needle in needles if needle in argv]
    return hits, job_seen


def test_a_secret_reaches_the_job_on_every_node_and_nothing_else(cluster: Cli, tmp_path: Path) -> None:
    api_key = "ak-" + secrets.token_hex(16)
    db_pass = "pw " + secrets.token_hex(16) + " 'quoted' $HOME"
    needles = [api_key.encode(), db_pass.encode()]
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "secret_job.py").write_text(JOB)
    pass_file = tmp_path / "db_pass.txt"  # outside the workdir, as a user keeps it
    pass_file.write_text(db_pass + "\n")
    out = tmp_path / "out"
    env = {"API_KEY": api_key, "HOLD_S": "3"}
    # HOLD_S is a plain --env; the two secrets come from the environment and from a file.
    proc = cluster("run", str(proj / "secret_job.py"), "--secret", "API_KEY", "--secret", f"DB_PASS=@{pass_file}",
                   "--env", "HOLD_S=3", "--output", str(out), "--detach", env=env)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stderr.split("job ", 1)[1].split(":", 1)[0]

    seen_job, deadline = 0, time.monotonic() + 30
    while seen_job < 3 and time.monotonic() < deadline:  # read argv of every process while the job runs
        hits, job_seen = _cmdlines_holding(needles, b"secret_job.py")
        assert not hits, hits
        seen_job += job_seen
        time.sleep(0.2)
    assert seen_job >= 3, "the job was never seen running"

    follow = cluster("logs", job_id, "-f", env=env)
    assert follow.returncode == 0, follow.stderr
    want = {"API_KEY": hashlib.sha256(api_key.encode()).hexdigest(), "DB_PASS": hashlib.sha256(db_pass.encode()).hexdigest()}
    assert json.loads((out / "seen.json").read_text()) == want  # the job really saw both, the file's newline dropped
    assert json.loads((out / "rank-1" / "seen.json").read_text()) == want
    run = json.loads((out / "run.json").read_text())
    assert run["secret_names"] == ["API_KEY", "DB_PASS"] and run["env_keys"] == ["HOLD_S"]

    # The cloudtrain home holds the local nodes' roots (run.sh, the job's folder, logs), the
    # records and the keys; the outputs and the workdir are the rest of what could.
    for root in (cluster.home, out, proj, cluster.cwd):
        assert not _files_holding(root, needles), root
    for text in (proc.stdout, proc.stderr, follow.stdout, follow.stderr):
        assert api_key not in text and db_pass not in text


def test_secrets_from_a_task_file(cluster: Cli, tmp_path: Path) -> None:
    token = "tf-" + secrets.token_hex(16)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "secret_job.py").write_text(JOB)
    (tmp_path / "key.txt").write_text(token)
    (proj / "task.yaml").write_text("secrets:\n  API_KEY: null\n  DB_PASS: '@../key.txt'\nrun: secret_job.py\n")
    out = tmp_path / "out"
    proc = cluster("run", str(proj / "task.yaml"), "--output", str(out), env={"API_KEY": token})
    assert proc.returncode == 0, proc.stderr
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert json.loads((out / "seen.json").read_text()) == {"API_KEY": digest, "DB_PASS": digest}
    assert not _files_holding(cluster.home, [token.encode()]) and not _files_holding(out, [token.encode()])


def test_a_secret_that_cannot_be_read_is_refused_before_anything_exists(cluster: Cli, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    script = proj / "secret_job.py"
    script.write_text(JOB)
    (proj / "inside.txt").write_text("x")
    jobs = set((cluster.home / "jobs").iterdir()) if (cluster.home / "jobs").exists() else set()
    env = {k: v for k, v in os.environ.items() if k != "NOT_SET_HERE"}
    for flags, words in (
        (["--secret", "NOT_SET_HERE"], "secret not_set_here is not set in your environment"),
        (["--secret", f"API_KEY=@{tmp_path / 'missing.txt'}"], "is not a readable file"),
        (["--secret", "API_KEY=literal"], "invalid --secret"),
        (["--secret", f"API_KEY=@{proj / 'inside.txt'}"], "is inside the workdir and would ship to the nodes"),
    ):
        proc = cluster("run", str(script), *flags, env=env)
        assert proc.returncode == 2, proc.stderr
        assert words in one_line_error(proc).lower()
    assert (set((cluster.home / "jobs").iterdir()) if (cluster.home / "jobs").exists() else set()) == jobs
