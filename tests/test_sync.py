"""Incremental workdir over a real local node (real sshd, real SSH, real tar and cp).

What crossed is measured on the node's side: after a run, the test changes the node's cached copy
of a file (same size, same mtime), so a job that still sees that change proves the file did not
travel again, and a job that sees the workdir's content proves it did."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cloudtrain.jobs import sync
from conftest import Cli, local_cluster

LIST_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    seen = {}
    for dirpath, _, names in os.walk("."):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), ".")
            seen[rel] = open(rel, errors="replace").read() if name.endswith(".txt") else os.path.getsize(rel)
    json.dump(seen, open(os.path.join(os.environ["CLOUDTRAIN_OUTPUT_DIR"], "seen.json"), "w"))
    if "edit" in sys.argv:  # a job that edits its own workdir
        open("a.txt", "a").write("EDITED")
        open("made-by-job.txt", "w").write("job")
    if "scribble" in sys.argv:  # one that writes in place into a big file (a hard link, if shared)
        with open("big.bin", "r+b") as f:
            f.write(b"SCRIBBLED")
    if "hold" in sys.argv:  # one that runs until the test lets it end
        import time
        release = sys.argv[-1]
        for _ in range(1200):
            if os.path.exists(release):
                break
            time.sleep(0.1)
    """
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    with local_cluster(tmp_path_factory, "sync") as (cli, _):
        yield cli, cli.home


def _project(root: Path) -> Path:
    root.mkdir()
    (root / "list.py").write_text(LIST_SCRIPT)
    (root / "a.txt").write_text("aaaa")
    (root / "b.txt").write_text("bbbb")
    (root / "sub").mkdir()
    (root / "sub" / "c.txt").write_text("cccc")
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    return root


def _run(cli: Cli, proj: Path, out: Path, *args: str) -> tuple[dict, str]:
    proc = cli("run", str(proj / "list.py"), "--output", str(out), *(["--", *args] if args else []))
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "seen.json").read_text()), proc.stderr


def _cached(home: Path, rel: str) -> Path:
    """The node's cached tree of the project that ran last (each workdir has its own)."""
    trees = list(home.glob("clusters/**/workdir-cache/*/tree"))
    assert trees, f"no node cache under {home}"
    return max(trees, key=lambda t: (t.parent / "manifest.json").stat().st_mtime_ns) / rel


def _tamper(path: Path, text: str) -> None:
    """Change the node's cached copy without its size or mtime: only a transfer would undo it."""
    st = path.stat()
    assert len(text) == st.st_size
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _tamper_cache(home: Path, rel: str, text: str) -> None:
    """Tamper the cached tree and any spare copy alike: what the next job would get either way."""
    _tamper(_cached(home, rel), text)
    cache = _cached(home, "").parent
    for spare in cache.glob("spare-*"):
        _tamper(spare / rel, text)


def _work(home: Path, out: Path) -> Path:
    job_id = json.loads((out / "run.json").read_text())["job_id"]
    (work,) = home.glob(f"clusters/**/jobs/{job_id}/work")
    return work


def test_unchanged_workdir_ships_nothing_and_one_changed_file_ships_alone(node, tmp_path: Path) -> None:
    cli, home = node
    proj = _project(tmp_path / "proj")
    first, said = _run(cli, proj, tmp_path / "o1")
    assert first == {"list.py": len(LIST_SCRIPT), "a.txt": "aaaa", "b.txt": "bbbb", "sub/c.txt": "cccc", "big.bin": 3 << 20}
    assert "sent 5 of 5 file(s)" in said, said

    _tamper_cache(home, "a.txt", "AAAA")
    _tamper_cache(home, "sub/c.txt", "CCCC")
    second, said = _run(cli, proj, tmp_path / "o2")
    assert (second["a.txt"], second["sub/c.txt"]) == ("AAAA", "CCCC"), "an unchanged file crossed again"
    assert "sent 0 of 5 file(s), 0 B changed" in said, said

    (proj / "b.txt").write_text("b changed, and longer")
    third, said = _run(cli, proj, tmp_path / "o3")
    assert third["b.txt"] == "b changed, and longer"
    assert (third["a.txt"], third["sub/c.txt"]) == ("AAAA", "CCCC"), "files that did not change crossed with the one that did"
    assert "sent 1 of 5 file(s), 21 B changed" in said, said

    # Same size, new content (and so a new mtime): it must ship, whatever its size says.
    (proj / "sub" / "c.txt").write_text("cc22")
    fourth, _ = _run(cli, proj, tmp_path / "o4")
    assert (fourth["sub/c.txt"], fourth["a.txt"]) == ("cc22", "AAAA")


def test_a_deleted_file_is_gone_from_the_cache_and_the_next_job(node, tmp_path: Path) -> None:
    cli, home = node
    proj = _project(tmp_path / "proj")
    _run(cli, proj, tmp_path / "o1")
    assert _cached(home, "sub/c.txt").exists()
    (proj / "sub" / "c.txt").unlink()
    (proj / "sub").rmdir()
    (proj / "sub").write_text("a file where a folder was")  # a folder that becomes a file
    seen, said = _run(cli, proj, tmp_path / "o2")
    assert "sub/c.txt" not in seen and seen["sub"] == len("a file where a folder was")
    assert not _cached(home, "sub/c.txt").exists() and _cached(home, "sub").is_file()
    assert "sent 1 of 5 file(s)" in said, said


def test_runs_alternating_between_two_workdirs_ship_neither_again(node, tmp_path: Path) -> None:
    """Each workdir keeps its own tree on the node: a tiny project run in between does not
    replace the big one's (it did: the next run of the big one shipped everything again)."""
    cli, _ = node
    big, tiny = _project(tmp_path / "big"), tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "list.py").write_text(LIST_SCRIPT)
    _run(cli, big, tmp_path / "o1")
    _run(cli, tiny, tmp_path / "o2")
    seen, said = _run(cli, big, tmp_path / "o3")
    assert "sent 0 of 5 file(s)" in said, said
    assert seen["big.bin"] == 3 << 20 and seen["a.txt"] == "aaaa"
    _, said = _run(cli, tiny, tmp_path / "o4")
    assert "sent 0 of 1 file(s)" in said, said


def test_a_jobs_edits_to_its_workdir_reach_neither_the_cache_nor_the_next_job(node, tmp_path: Path) -> None:
    cli, home = node
    proj = _project(tmp_path / "proj")
    first, _ = _run(cli, proj, tmp_path / "o1", "edit")
    assert first["a.txt"] == "aaaa"
    assert _cached(home, "a.txt").read_text() == "aaaa"
    assert not _cached(home, "made-by-job.txt").exists()
    second, said = _run(cli, proj, tmp_path / "o2")
    assert second["a.txt"] == "aaaa" and "made-by-job.txt" not in second
    assert "sent 0 of 5 file(s)" in said, said


def test_an_unchanged_workdirs_next_job_links_its_big_files_and_copies_its_small_ones(node, tmp_path: Path) -> None:
    """No copy of the bytes per run: a 300 MiB workdir's next run costs a link per big file."""
    cli, home = node
    proj = _project(tmp_path / "proj")
    _run(cli, proj, tmp_path / "o1", "edit")  # the job edits its small a.txt: its own copy
    second, said = _run(cli, proj, tmp_path / "o2")
    assert "sent 0 of 5 file(s)" in said, said
    assert second["a.txt"] == "aaaa" and "made-by-job.txt" not in second
    work = _work(home, tmp_path / "o2")
    assert (work / "big.bin").stat().st_ino == _cached(home, "big.bin").stat().st_ino, "the big file was copied, not linked"
    assert (work / "a.txt").stat().st_ino != _cached(home, "a.txt").stat().st_ino, "a small file was linked, not copied"


def test_a_job_writing_in_place_through_a_link_never_reaches_the_next_job(node, tmp_path: Path) -> None:
    cli, home = node
    proj = _project(tmp_path / "proj")
    original = (proj / "big.bin").read_bytes()
    _run(cli, proj, tmp_path / "o1", "scribble")
    # The job wrote through its hard link: the next run sees the tree's copy changed, ships
    # that file alone again, and tar gives it a new inode (the first job keeps what it made).
    second, said = _run(cli, proj, tmp_path / "o2")
    assert "sent 1 of 5 file(s), 3.0 MiB changed" in said, said
    assert (_work(home, tmp_path / "o2") / "big.bin").read_bytes() == original
    assert (_work(home, tmp_path / "o1") / "big.bin").read_bytes().startswith(b"SCRIBBLED")


def test_a_job_that_overlaps_a_running_one_gets_a_real_copy(node, tmp_path: Path) -> None:
    """While a job that shares the links runs, the next one must not share a byte it could change."""
    cli, home = node
    proj = _project(tmp_path / "proj")
    _run(cli, proj, tmp_path / "o0")
    release = tmp_path / "release"
    held = cli("run", str(proj / "list.py"), "--detach", "--output", str(tmp_path / "o1"), "--", "hold", str(release))
    assert held.returncode == 0, held.stderr
    try:
        second, said = _run(cli, proj, tmp_path / "o2")
        assert "sent 0 of 5 file(s)" in said, said
        work = _work(home, tmp_path / "o2")
        assert (work / "big.bin").stat().st_ino != _cached(home, "big.bin").stat().st_ino, "linked while a sharing job ran"
        assert (work / "big.bin").read_bytes() == (proj / "big.bin").read_bytes()
    finally:
        release.touch()
    job = re.search(r"job (\S+) started", held.stderr).group(1)  # type: ignore[union-attr]
    assert cli("logs", job, "-f", timeout=300).returncode == 0


def test_a_damaged_cache_is_rebuilt_from_a_full_upload(node, tmp_path: Path) -> None:
    cli, home = node
    proj = _project(tmp_path / "proj")
    _run(cli, proj, tmp_path / "o1")
    _cached(home, "b.txt").unlink()  # a file missing from the cache
    seen, said = _run(cli, proj, tmp_path / "o2")
    assert seen["b.txt"] == "bbbb"
    assert "sent 5 of 5 file(s)" in said, said

    manifest = _cached(home, "").parent / "manifest.json"
    manifest.write_text("{not json")  # a damaged manifest
    _tamper(_cached(home, "a.txt"), "XXXX")
    seen, said = _run(cli, proj, tmp_path / "o3")
    assert seen["a.txt"] == "aaaa" and "sent 5 of 5 file(s)" in said, said


def test_two_runs_at_once_each_get_exactly_their_own_workdir(node, tmp_path: Path) -> None:
    """The node's lock and the manifest's generation: two runs updating one cache never mix."""
    cli, home = node
    projects = [_project(tmp_path / "p1"), _project(tmp_path / "p2")]
    (projects[1] / "a.txt").write_text("second project")
    (projects[1] / "only-in-p2.txt").write_text("p2")
    env = {**os.environ, "CLOUDTRAIN_HOME": str(home)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "cloudtrain.cli", "run", str(p / "list.py"), "--output", str(tmp_path / f"o{i}")], cwd=cli.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, p in enumerate(projects)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert " sent " in err, err
    first, second = (json.loads((tmp_path / f"o{i}" / "seen.json").read_text()) for i in range(2))
    assert first["a.txt"] == "aaaa" and "only-in-p2.txt" not in first
    assert second["a.txt"] == "second project" and second["only-in-p2.txt"] == "p2"


def test_a_node_keeps_the_trees_of_the_workdirs_used_last_and_no_more(tmp_path: Path) -> None:
    """The node side alone (no sshd needed): beyond KEEP_TREES workdirs the ones used longest
    ago go; one used in the last minutes stays, as a run may be between its read and update."""
    node = ["-I", "-S", "-c", sync.node_program()]  # what ships
    parent = tmp_path / "workdir-cache"
    now = time.time()
    for i in range(5):  # five old workdirs' trees, used a day ago and earlier
        (parent / f"old{i}" / "tree").mkdir(parents=True)
        os.utime(parent / f"old{i}", (now - 86400 - i, now - 86400 - i))
    (parent / "young" / "tree").mkdir(parents=True)
    cache, work = parent / "new", tmp_path / "jobs" / "j1" / "work"
    subprocess.run([sys.executable, *node, str(cache), str(work), "read"], check=True, capture_output=True)
    header = cache / "incoming.json"
    header.write_text(json.dumps({"expect": None, "entries": {}, "delete": [], "tar": False}))
    subprocess.run([sys.executable, *node, str(cache), str(work), "apply", str(header)], check=True, capture_output=True)
    kept = sorted(p.name for p in parent.iterdir())
    assert kept == ["new", "old0", "old1", "young"], kept  # KEEP_TREES = 4: the newest old ones stay
