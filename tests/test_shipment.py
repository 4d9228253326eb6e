"""The pure parts of what ships and where outputs land: sizes, key detection, which rule leaves a
file out, links in the tar, the destination's checks and claim. Real files, links and git."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from cloudtrain.errors import BadInput
from cloudtrain.jobs import destination, shipment
from cloudtrain.jobs.session import verified_count
from cloudtrain.jobs.workdir import ignored_by, write_tar
from cloudtrain.spec import JobSpec, parse_size


def _write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_sizes_are_powers_of_1024_and_nonsense_is_refused() -> None:
    assert parse_size("500M") == 500 * 2**20
    assert parse_size("2G") == parse_size("2GiB") == parse_size("2gb") == 2 * 2**30
    assert parse_size("1.5k") == 1536 and parse_size("123") == 123
    for bad in ("", "M", "abc", "-1M", "0", "5X", "1e9"):
        with pytest.raises(BadInput, match="--max-upload"):
            parse_size(bad)


@pytest.mark.parametrize("header", [
    "-----BEGIN OPENSSH PRIVATE KEY-----", "-----BEGIN RSA PRIVATE KEY-----", "-----BEGIN EC PRIVATE KEY-----",
    "-----BEGIN PRIVATE KEY-----", "-----BEGIN ENCRYPTED PRIVATE KEY-----", "-----BEGIN PGP PRIVATE KEY BLOCK-----",
    "PuTTY-User-Key-File-3: ssh-ed25519",
])
def test_private_keys_are_known_by_content(tmp_path: Path, header: str) -> None:
    assert shipment.holds_private_key(_write(tmp_path / "innocent.txt", f"Bag Attributes\n{header}\nAAAA\n"))


def test_public_keys_certificates_and_mentions_are_not_private_keys(tmp_path: Path) -> None:
    for i, text in enumerate((
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "-----BEGIN CERTIFICATE-----\nAAAA\n",
        "ssh-ed25519 AAAAC3Nza user@host\n",
        'HEADER = "-----BEGIN RSA PRIVATE KEY-----"  # a script that looks for keys\n',
    )):
        assert not shipment.holds_private_key(_write(tmp_path / f"f{i}", text)), text


def test_the_rule_that_leaves_a_file_out_is_named(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    _write(wd / ".cloudtrainignore", "# scratch\n*.tmp\n")
    _write(wd / ".gitignore", "build/\n")
    _write(wd / "sub" / ".gitignore", "/gen_*.py\n")
    assert "'*.tmp' in " + str(wd / ".cloudtrainignore") in ignored_by(wd, "a.tmp")
    assert str(wd / ".gitignore") in ignored_by(wd, "build/x.py")
    assert "'/gen_*.py' in " + str(wd / "sub" / ".gitignore") in ignored_by(wd, "sub/gen_1.py")
    assert "built-in rule '.venv/'" in ignored_by(wd, ".venv/bin/x.py")
    assert "outputs never ship back up" in ignored_by(wd, "out/run.py", exclude=[wd / "out"])
    assert ignored_by(wd, "train.py") is None
    subprocess.run(["git", "init", "-q"], cwd=wd, check=True)  # in a repository git itself says which
    assert "'/gen_*.py' in " + str(wd / "sub" / ".gitignore") + " (line 1)" in ignored_by(wd, "sub/gen_1.py")
    assert ignored_by(wd, "train.py") is None


def test_links_ship_relative_when_their_target_ships_and_the_script_as_its_content(tmp_path: Path) -> None:
    outside = _write(tmp_path / "elsewhere" / "train.py", "print('real')\n")
    wd = tmp_path / "wd"
    _write(wd / "data" / "rows.csv", "1,2\n")
    (wd / "run.py").symlink_to(outside)
    (wd / "latest.csv").symlink_to(wd / "data" / "rows.csv")  # absolute: would dangle on a node
    (wd / "d").symlink_to("data")
    (wd / "loop").symlink_to("loop")
    said: list[str] = []
    plan = shipment.plan(JobSpec.build(wd / "run.py"), [], said.append)
    assert plan.files == ["d", "data/rows.csv", "latest.csv", "run.py"]
    [line] = said
    assert "loop -> loop (a link to something that does not ship; not followed)" in line
    buf = io.BytesIO()
    write_tar(wd, plan.files, buf)
    buf.seek(0)
    members = {m.name: m for m in tarfile.open(fileobj=buf)}
    assert members["latest.csv"].issym() and members["latest.csv"].linkname == "data/rows.csv"
    assert members["d"].issym() and members["d"].linkname == "data"
    assert members["run.py"].isreg() and members["run.py"].size == outside.stat().st_size


def test_a_big_workdir_is_announced_before_it_ships(tmp_path: Path) -> None:
    script = _write(tmp_path / "train.py")
    said: list[str] = []
    shipment.plan(JobSpec.build(script), [], said.append)
    assert said == []
    with open(tmp_path / "weights.bin", "wb") as f:  # sparse: costs no disk
        f.truncate(shipment.ANNOUNCE_OVER + 1)
    shipment.plan(JobSpec.build(script), [], said.append)
    [line] = said
    assert "100.0 MiB to ship" in line and "weights.bin" in line and "--max-upload" in line


def test_a_script_that_is_a_key_or_points_into_the_home_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "ct-home"
    monkeypatch.setenv("CLOUDTRAIN_HOME", str(home))
    (tmp_path / "wd").mkdir()
    (tmp_path / "wd" / "run.py").symlink_to(_write(home / "clusters" / "x" / "hook.py"))
    with pytest.raises(BadInput, match="the cloudtrain home"):
        shipment.plan(JobSpec.build(tmp_path / "wd" / "run.py"), [], print)
    key = _write(tmp_path / "k" / "train.py", "-----BEGIN OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(BadInput, match="a private key"):
        shipment.plan(JobSpec.build(key), [], print)


def test_checking_a_destination_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    destination.check(target, None, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_of_two_jobs_claiming_one_folder_the_second_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    destination.check(out, None, tmp_path / "wd")
    destination.check(out, None, tmp_path / "wd")  # both looked before either claimed
    destination.claim(out, None, "job-a", tmp_path / "wd")
    with pytest.raises(BadInput):
        destination.claim(out, None, "job-b", tmp_path / "wd")
    assert json.loads((out / destination.MARKER).read_text()) == {"job_id": "job-a"}


def test_replace_never_empties_a_folder_holding_the_workdir_or_someone_elses_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    destination.claim(out, None, "job-a", tmp_path / "elsewhere")
    _write(out / "wd" / "train.py")
    with pytest.raises(BadInput, match="holds the workdir"):
        destination.check(out, "replace", out / "wd")
    theirs = tmp_path / "theirs"
    _write(theirs / "manifest.json", "{}")  # a common name: not enough to call it cloudtrain's
    with pytest.raises(BadInput, match="did not put there"):
        destination.check(theirs, "replace", tmp_path / "wd")
    old = tmp_path / "old"  # filled by a job before the marker existed
    _write(old / "run.json", json.dumps({"job_id": "j"}))
    _write(old / "manifest.json", json.dumps({"files": {}}))
    _write(old / "rank-1" / "log.txt")
    destination.claim(old, "replace", "job-b", tmp_path / "wd")
    assert sorted(p.name for p in old.iterdir()) == [destination.MARKER]


def test_the_reported_count_is_the_manifests(tmp_path: Path) -> None:
    _write(tmp_path / "manifest.json", json.dumps({"files": {"a": {}, "log.txt": {}}}))
    for name in ("x", "y", "z"):
        _write(tmp_path / name)
    assert verified_count(tmp_path) == 2
    _write(tmp_path / "manifest.json", "{damaged")
    assert verified_count(tmp_path) is None
