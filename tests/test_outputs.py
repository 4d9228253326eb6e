"""What ships is what the user meant, and where outputs land is checked before the job starts:
the real CLI over a real one-node local cluster (real sshd, real SSH, real files and links)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import Cli, local_cluster, one_line_error

# Lists what arrived in the job's working folder on the node: {path: link target or null}.
INVENTORY = textwrap.dedent(
    """
    import json, os
    seen = {}
    for d, dirs, files in os.walk("."):
        for name in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
            p = os.path.join(d, name)
            seen[os.path.relpath(p)] = os.readlink(p) if os.path.islink(p) else None
    json.dump(seen, open(os.path.join(os.environ["CLOUDTRAIN_OUTPUT_DIR"], "shipped.json"), "w"))
    """
)
FAKE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----\n"
WRITE_ONE = "import os\nopen(os.path.join(os.environ['CLOUDTRAIN_OUTPUT_DIR'], 'model.bin'), 'wb').write(b'm' * 100)\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with local_cluster(tmp_path_factory, "outputs") as (cli, _):
        yield cli


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _jobs(cli: Cli) -> set[str]:
    folder = cli.home / "jobs"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def _node_jobs(cli: Cli) -> set[str]:
    roots = list((cli.home / "clusters" / "local" / "provider").rglob("root/jobs"))
    return {p.name for root in roots for p in root.iterdir()}


def _reported_count(stderr: str) -> int:
    [count] = re.findall(r"; (\d+) file\(s\) in .* \(sha256 verified\)", stderr)
    return int(count)


def test_a_symlinked_script_ships_its_own_folder_never_its_targets(cluster: Cli, tmp_path: Path) -> None:
    other = tmp_path / "other"  # where the link points: a key and a big file that must stay here
    _write(other / "train.py", INVENTORY)
    _write(other / "id_ed25519", FAKE_KEY)
    _write(other / "big.bin", os.urandom(2_000_000))
    proj = tmp_path / "proj"
    _write(proj / "data.txt", "rows")
    _write(proj / "notes.txt", "deploy key below\n" + FAKE_KEY.replace("OPENSSH", "RSA"))  # named innocently
    (proj / "link.py").symlink_to("../other/train.py")
    (proj / "sub").mkdir()
    (proj / "sub" / "alias.txt").symlink_to("../data.txt")  # inside, pointing inside: ships as a link
    (proj / "big").symlink_to(other / "big.bin")  # inside, pointing outside: named, not followed
    out = tmp_path / "out"
    proc = cluster("run", str(proj / "link.py"), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    shipped = json.loads((out / "shipped.json").read_text())
    assert shipped == {"link.py": None, "data.txt": None, "sub/alias.txt": "../data.txt"}
    [warning] = [line for line in proc.stderr.splitlines() if "left out of the upload" in line]
    assert "notes.txt (a private key)" in warning and "big -> " in warning and "not followed" in warning
    assert "shipping 3 file(s)" in proc.stderr


def test_the_home_and_the_ssh_folder_never_ship_whatever_the_workdir(cluster: Cli, tmp_path: Path) -> None:
    base = cluster.home.parent  # holds the cloudtrain home itself (keys, records, the node's root)
    fake_home = base / "someone"
    _write(fake_home / ".ssh" / "config", "Host *\n")  # no key in it: left out for where it is
    script = _write(base / "homecheck" / "list.py", INVENTORY)
    out = tmp_path / "out"
    proc = cluster("run", str(script), "--workdir", str(base), "--output", str(out), env={"HOME": str(fake_home)})
    assert proc.returncode == 0, proc.stderr
    shipped = json.loads((out / "shipped.json").read_text())
    assert "homecheck/list.py" in shipped
    assert not [p for p in shipped if p.startswith(("home/", "someone/"))], shipped
    [warning] = [line for line in proc.stderr.splitlines() if "left out of the upload" in line]
    assert "home/ (the cloudtrain home)" in warning and "someone/.ssh/ (your SSH folder)" in warning


def test_max_upload_refuses_a_bigger_workdir_before_anything_ships(cluster: Cli, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    script = _write(proj / "train.py", WRITE_ONE)
    _write(proj / "weights.bin", os.urandom(3 * 1024 * 1024))
    jobs, node_jobs = _jobs(cluster), _node_jobs(cluster)
    out = tmp_path / "out"
    refused = cluster("run", str(script), "--max-upload", "1M", "--output", str(out))
    assert refused.returncode == 2
    line = one_line_error(refused)
    assert "over --max-upload 1.0 MiB" in line and "weights.bin" in line
    assert _jobs(cluster) == jobs and _node_jobs(cluster) == node_jobs and not out.exists()
    ok = cluster("run", str(script), "--max-upload", "4M", "--output", str(out))
    assert ok.returncode == 0, ok.stderr


def test_a_script_the_ignore_rules_leave_out_is_refused_naming_the_rule(cluster: Cli, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    script = _write(proj / "train_v2.py", WRITE_ONE)
    _write(proj / ".cloudtrainignore", "*.tmp\ntrain_*.py\n")
    jobs = _jobs(cluster)
    proc = cluster("run", str(script))
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "'train_*.py'" in line and str(proj / ".cloudtrainignore") in line
    assert _jobs(cluster) == jobs and not (cluster.cwd / "runs").exists()


def _ro_tmpfs(path: Path, size: str = "4m", ro: bool = True) -> bool:
    path.mkdir()
    opts = f"size={size}" + (",ro" if ro else "")
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("where", ["under-a-file", "under-proc", "read-only-mount", "full-disk"])
def test_an_output_that_cannot_take_the_outputs_is_refused_before_the_job_runs(cluster: Cli, tmp_path: Path, where: str) -> None:
    script = _write(tmp_path / "proj" / "train.py", WRITE_ONE)
    mount = tmp_path / "mnt"
    if where == "under-a-file":
        out, says = _write(tmp_path / "afile", "x") / "out", "is not a folder"
    elif where == "under-proc":
        out, says = Path("/proc/cloudtrain-nowhere/out"), "cannot be written"
    else:
        if not _ro_tmpfs(mount, size="60m" if where == "read-only-mount" else "1m", ro=where == "read-only-mount"):
            pytest.skip("cannot mount a tmpfs here")
        out, says = mount / "out", "cannot be written" if where == "read-only-mount" else "KiB free"
    try:
        jobs = _jobs(cluster)
        proc = cluster("run", str(script), "--output", str(out))
        assert proc.returncode == 2, proc.stderr
        assert says in one_line_error(proc) and f"--output {out}" in proc.stderr
        assert _jobs(cluster) == jobs, "a refused job left a record owing outputs"
        assert not out.exists()
    finally:
        if mount.exists():
            subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_non_empty_output_needs_a_mode_and_the_count_is_the_manifests(cluster: Cli, tmp_path: Path) -> None:
    script = _write(tmp_path / "proj" / "train.py", WRITE_ONE)
    mine = tmp_path / "mine"
    for name in ("notes.txt", "a.txt", "b.txt"):
        _write(mine / name, "the user's own")
    jobs = _jobs(cluster)
    refused = cluster("run", str(script), "--output", str(mine))
    assert refused.returncode == 2 and "is not empty" in one_line_error(refused) and "--output-mode" in refused.stderr
    replace = cluster("run", str(script), "--output", str(mine), "--output-mode", "replace")
    assert replace.returncode == 2 and "did not put there" in one_line_error(replace)
    assert _jobs(cluster) == jobs and sorted(p.name for p in mine.iterdir()) == ["a.txt", "b.txt", "notes.txt"]

    merged = cluster("run", str(script), "--output", str(mine), "--output-mode", "merge")
    assert merged.returncode == 0, merged.stderr
    assert (mine / "notes.txt").read_text() == "the user's own" and (mine / "model.bin").read_bytes() == b"m" * 100
    manifest = json.loads((mine / "manifest.json").read_text())["files"]
    assert set(manifest) == {"model.bin", "log.txt"} and _reported_count(merged.stderr) == 2


def test_replace_empties_a_folder_an_earlier_job_filled(cluster: Cli, tmp_path: Path) -> None:
    first = _write(tmp_path / "a" / "first.py", "import os\nfor n in 'xyz': open(os.path.join(os.environ['CLOUDTRAIN_OUTPUT_DIR'], n), 'w').write(n)\n")
    second = _write(tmp_path / "b" / "second.py", WRITE_ONE)
    out = tmp_path / "out"
    assert cluster("run", str(first), "--output", str(out)).returncode == 0
    again = cluster("run", str(second), "--output", str(out))
    assert again.returncode == 2 and "is not empty" in one_line_error(again)
    replaced = cluster("run", str(second), "--output", str(out), "--output-mode", "replace")
    assert replaced.returncode == 0, replaced.stderr
    assert not any((out / n).exists() for n in "xyz") and (out / "model.bin").exists()
    assert _reported_count(replaced.stderr) == len(json.loads((out / "manifest.json").read_text())["files"]) == 2


def test_logs_follow_brings_outputs_into_another_folder(cluster: Cli, tmp_path: Path) -> None:
    script = _write(tmp_path / "proj" / "redirected.py", "import time\ntime.sleep(1)\n" + WRITE_ONE)
    first, second = tmp_path / "first", tmp_path / "second"
    assert cluster("run", str(script), "--detach", "--output", str(first)).returncode == 0
    [job_id] = [j for j in _jobs(cluster) if j.startswith("redirected-")]
    job_id = job_id.removesuffix(".json")
    proc = cluster("logs", job_id, "-f", "--output", str(second))
    assert proc.returncode == 0, proc.stderr
    assert (second / "model.bin").read_bytes() == b"m" * 100 and (second / "manifest.json").exists()
    assert not first.exists(), "the folder claimed first, holding nothing else, is tidied away"
    assert json.loads((cluster.home / "jobs" / f"{job_id}.json").read_text())["output"] == str(second)
    for extra, says in ((["--output", str(tmp_path / "third")], "-f"), (["-f", "--output", str(tmp_path / "third")], "owes no outputs")):
        refused = cluster("logs", job_id, *extra)
        assert refused.returncode == 2 and says in one_line_error(refused)
    assert not (tmp_path / "third").exists()


def test_launch_refuses_before_creating_anything(cli: Cli, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    script = _write(proj / "train.py", WRITE_ONE)
    _write(proj / "weights.bin", os.urandom(2 * 1024 * 1024))
    for extra, says in ((["--max-upload", "1M"], "over --max-upload"), (["--output", str(_write(tmp_path / "f", "x") / "o")], "is not a folder")):
        proc = cli("launch", str(script), "--provider", "local", "--framework", "none", *extra, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert says in one_line_error(proc)
        assert not (cli.home / "clusters").exists() or not any((cli.home / "clusters").iterdir())


@pytest.mark.parametrize("extra,says", [
    (["--max-upload", "lots"], "invalid --max-upload"),
    (["--max-upload", "0"], "not a positive size"),
    (["--output-mode", "overwrite", "--output", "o"], "unknown --output-mode"),
    (["--output-mode", "merge"], "--output-mode needs --output"),
])
def test_bad_shipping_and_output_flags_are_one_line_exit_2(cli: Cli, extra: list[str], says: str) -> None:
    script = _write(cli.cwd / "train.py", WRITE_ONE)
    proc = cli("run", str(script), *extra, timeout=60)
    assert proc.returncode == 2 and says in one_line_error(proc)
    assert sorted(p.name for p in cli.cwd.iterdir()) == ["train.py"]
