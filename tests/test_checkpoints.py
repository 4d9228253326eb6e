"""$CLOUDTRAIN_CHECKPOINT_DIR on a real local node: only complete checkpoints come home (closed,
unchanged over two polls, not temp-named), and only those are ever restored."""

from __future__ import annotations

import json
import shlex
import textwrap
from pathlib import Path

import pytest

from conftest import Cli, local_cluster

from cloudtrain.jobs import checkpoints
from cloudtrain.layout import NodePaths
from cloudtrain.remote import SshRemote
from cloudtrain.state import Store


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with local_cluster(tmp_path_factory, "ckpt") as (cli, _):
        yield cli


@pytest.fixture
def remote(cluster: Cli):
    record = Store(cluster.home).cluster_dir("local").load()
    assert record.cluster is not None
    with SshRemote(record.cluster.head, record.cluster.identity_file) as r:
        yield r


def test_only_complete_checkpoints_come_home_and_are_restored(remote: SshRemote, tmp_path: Path) -> None:
    paths = NodePaths.of(remote)
    job = paths.job("ckpt-unit")
    folder = checkpoints.node_dir(job)
    q = shlex.quote
    remote.run(f"mkdir -p {q(folder)}/sub && cd {q(folder)} && printf done > good.pt && printf nested > sub/n.pt "
               f"&& printf half > .epoch-3.pt.tmp && printf half > epoch-4.pt.part")
    # A checkpoint still being written: held open for writing by a process on the node.
    remote.run(f"cd {q(folder)} && (setsid sh -c 'exec 3>>open.pt; printf half >&3; sleep 60' </dev/null >/dev/null 2>&1 &)")
    remote.run(f"for i in $(seq 50); do [ -s {q(folder)}/open.pt ] && exit 0; sleep 0.1; done; exit 1")
    said: list[str] = []
    out = tmp_path / "out"
    puller = checkpoints.Puller(remote, NodePaths.of, "ckpt-unit", out, said.append)
    try:
        assert puller.poll() == []  # first sight: nothing is known to be stable yet
        assert sorted(puller.poll()) == ["good.pt", "sub/n.pt"]
        remote.run(f"printf rewritten > {q(folder)}/good.pt")
        assert puller.poll() == []  # changed since the last poll: not yet
        assert puller.poll() == ["good.pt"]
        assert puller.poll(final=True) == []  # even at the end, an open file is not complete
    finally:
        remote.run(f"pkill -f {q('exec 3>>open.pt')}", check=False)
    home = out / "checkpoints"
    assert (home / "good.pt").read_text() == "rewritten"
    assert sorted(p.relative_to(home).as_posix() for p in checkpoints.complete_files(home)) == ["good.pt", "sub/n.pt"]
    assert not list((home / checkpoints.INCOMING).rglob("*.pt"))
    # A half-written copy left at home (a transfer cut off) is never restored.
    (home / checkpoints.INCOMING).mkdir(exist_ok=True)
    (home / checkpoints.INCOMING / "epoch-9.pt").write_text("cut off")
    again = paths.job("ckpt-unit-restored")
    assert sorted(checkpoints.restore(remote, again, home)) == ["good.pt", "sub/n.pt"]
    listed = remote.run(f"cd {q(checkpoints.node_dir(again))} && find . -type f | sort").stdout.split()
    assert listed == ["./good.pt", "./sub/n.pt"]
    assert remote.run(f"cat {q(checkpoints.node_dir(again))}/good.pt").stdout == "rewritten"
    remote.run(f"rm -rf {q(job.dir)} {q(again.dir)}")


JOB = textwrap.dedent(
    """
    import json, os, time
    ck = os.environ["CLOUDTRAIN_CHECKPOINT_DIR"]
    print("restart", os.environ["CLOUDTRAIN_RESTART_COUNT"], flush=True)
    with open(os.path.join(ck, ".e1.tmp"), "w") as f:
        f.write("epoch 1")
    os.replace(os.path.join(ck, ".e1.tmp"), os.path.join(ck, "e1.ckpt"))
    time.sleep(1.5)
    with open(os.path.join(ck, "last.ckpt"), "w") as f:
        f.write("epoch 2")
    json.dump({"ckpt": ck}, open(os.path.join(os.environ["CLOUDTRAIN_OUTPUT_DIR"], "where.json"), "w"))
    """
)


def test_run_brings_the_jobs_checkpoints_home(cluster: Cli, tmp_path: Path) -> None:
    script = tmp_path / "proj" / "job.py"
    script.parent.mkdir()
    script.write_text(JOB)
    out = tmp_path / "out"
    proc = cluster("run", str(script), "--output", str(out), env={"CLOUDTRAIN_CHECKPOINT_POLL": "0.3"})
    assert proc.returncode == 0, proc.stderr
    assert "restart 0" in proc.stdout
    where = json.loads((out / "where.json").read_text())["ckpt"]
    assert where.endswith("/checkpoints") and "/jobs/" in where
    assert (out / "checkpoints" / "e1.ckpt").read_text() == "epoch 1"
    assert (out / "checkpoints" / "last.ckpt").read_text() == "epoch 2"  # closed at the end: taken then
    assert "checkpoint e1.ckpt copied home" in proc.stderr
