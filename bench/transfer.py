#!/usr/bin/env python3
"""cloudtrain's file transfer against OpenSSH's own tools, measured in the same run.

    .venv/bin/python bench/transfer.py            # full: 256 MiB file, 512 MiB output, 2,000 small files, mixed workdir
    .venv/bin/python bench/transfer.py --quick    # small sizes, one run each: a smoke check in < 1 min
    .venv/bin/python bench/transfer.py --json out.json   # also write the ratios and the table as JSON

One local node (`cloudtrain up --provider local`, a real sshd on loopback) serves every tool.
Upload: cloudtrain's wire (select_files + transfer.upload_tree, one tar written into ssh) vs
`scp -r` and `rsync -a` through `cloudtrain ssh-config`. Download: transfer.download_tree (one
stream home over ssh, every file's sha256 checked as it arrives) vs the same tools back. Each timing is the best of N;
peak RSS comes from a fresh child per measurement (resource.getrusage(RUSAGE_CHILDREN)).
Ratios are printed instead of absolute pass/fail because these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CLUSTER = "bench"
DOWNLOAD_ONLY = {"big-output"}
MiB = 1 << 20
HERE = Path(__file__).resolve()
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.0f}s] {message}", flush=True)


# -- children ---------------------------------------------------------------------------------
# Every measured transfer runs in its own child so that its peak RSS is its own; a "meter"
# process sits between us and the tool because RUSAGE_CHILDREN only ever grows (it is the max
# over all children ever waited for), so a fresh meter per measurement keeps the numbers apart.


def meter(cmd: list[str]) -> int:
    """Run `cmd`, then print its wall time, peak RSS (with its own children, e.g. scp's ssh) and stdout."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.decode(errors="replace"))
        return proc.returncode
    print(json.dumps({"wall": wall, "peak_kib": peak_kib, "stdout": proc.stdout.decode(errors="replace")}))
    return 0


def cloudtrain_child(op: str, a: str, b: str) -> int:
    """The cloudtrain side of one measurement, timed in-process (interpreter start and imports
    excluded: a `cloudtrain run` pays them once whatever it ships)."""
    from cloudtrain.jobs import transfer
    from cloudtrain.jobs.workdir import select_files
    from cloudtrain.remote import SshRemote
    from cloudtrain.state import Store

    cluster = Store().cluster_dir(CLUSTER).load().cluster
    assert cluster is not None
    out: dict[str, float | int] = {}
    start = time.perf_counter()
    with SshRemote(cluster.head, cluster.identity_file) as remote:
        if op == "upload":
            # The wire runner.submit's upload takes (select the files, one tar into ssh), without
            # the node-side workdir cache and the job's copy of it (jobs/sync.py).
            src = Path(a)
            files = select_files(src)
            out["select_s"] = time.perf_counter() - start
            transfer.upload_tree(remote, src, files, b)
        elif op == "download":
            got = transfer.download_tree(remote, a, Path(b))
            out["files"] = len(got.files)
        elif op == "idle":  # baseline: interpreter + cloudtrain + paramiko, connected, nothing moved
            remote.run("true")
        else:
            raise SystemExit(f"unknown op {op}")
    out["seconds"] = time.perf_counter() - start
    print(json.dumps(out))
    return 0


# -- datasets ---------------------------------------------------------------------------------


def _write_random(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(rng.randbytes(n))  # incompressible, like weights or already-compressed data
            left -= n


def make_datasets(root: Path, quick: bool) -> dict[str, Path]:
    rng = random.Random(1234)  # the same bytes every run
    big_size = (16 if quick else 256) * MiB
    n_small = 200 if quick else 2000
    sets = {"big-file": root / "big-file", "big-output": root / "big-output", "small-files": root / "small-files", "mixed": root / "mixed"}

    _write_random(sets["big-file"] / "blob.bin", big_size, rng)
    # Downloads only: a model-sized output (512 MiB: where paramiko used to re-key and stall).
    _write_random(sets["big-output"] / "model.bin", 2 * big_size, rng)

    for i in range(n_small):  # 100 per folder, as a dataset of shards or images would be laid out
        _write_random(sets["small-files"] / f"d{i // 100:02d}" / f"f{i:05d}.bin", 4096, rng)

    # A training workdir: source, configs, a compressible CSV, an incompressible checkpoint.
    mixed = sets["mixed"]
    n_src, csv_rows, ckpt = (40, 30_000, 2 * MiB) if quick else (300, 600_000, 32 * MiB)
    for i in range(n_src):
        body = "".join(f"def f{i}_{j}(x):\n    return x * {rng.randint(1, 999)} + {j}\n\n" for j in range(rng.randint(20, 120)))
        (mixed / "src" / f"pkg{i // 50}").mkdir(parents=True, exist_ok=True)
        (mixed / "src" / f"pkg{i // 50}" / f"mod{i}.py").write_text(body)
    (mixed / "configs").mkdir()
    for i in range(20):
        (mixed / "configs" / f"exp{i}.yaml").write_text(f"lr: {rng.random():.5f}\nbatch: {rng.choice([32, 64, 128])}\nseed: {i}\n")
    (mixed / "train.py").write_text("print('train')\n")
    (mixed / "requirements.txt").write_text("numpy\n")
    (mixed / "data").mkdir()
    with open(mixed / "data" / "train.csv", "w") as f:
        f.write("id,a,b,c,label\n")
        for i in range(csv_rows):
            f.write(f"{i},{rng.random():.6f},{rng.random():.6f},{rng.gauss(0, 1):.6f},{rng.randint(0, 9)}\n")
    _write_random(mixed / "checkpoints" / "init.pt", ckpt, rng)
    return sets


def tree_stats(root: Path) -> tuple[int, int]:
    """(files, bytes) under root: every tool's result is checked against the source's."""
    files = size = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(dirpath, name))
    return files, size


# -- measuring --------------------------------------------------------------------------------


@dataclass
class Row:
    dataset: str
    direction: str
    tool: str
    seconds: list[float] = field(default_factory=list)
    peak_mib: float = 0.0
    note: str = ""


def measure(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, the tool's stdout) of one run of `cmd` under a fresh meter."""
    proc = subprocess.run([sys.executable, str(HERE), "--meter", "--", *cmd], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed: {proc.stderr.strip()[-2000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return data["wall"], data["peak_kib"] / 1024, data["stdout"]


def ensure_rsync() -> str | None:
    """rsync's path, installing it with apt-get only when it is missing; None if that fails."""
    found = shutil.which("rsync")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in (["apt-get", "install", "-y", "-q", "rsync"], ["sh", "-c", "apt-get update -q && apt-get install -y -q rsync"]):
        say(f"rsync is missing; trying: {shlex.join(attempt)}")
        subprocess.run(attempt, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        if found := shutil.which("rsync"):
            return found
    return None


def cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "cloudtrain.cli", *args], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"cloudtrain {' '.join(args)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc.stdout


def _fresh(path: Path) -> Path:
    # Every run starts from an absent destination: scp -r then copies the folder itself, and
    # rsync cannot skip files a previous run left behind. The node is on loopback, so its
    # paths are ours to clear.
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def run_bench(base: Path, quick: bool, runs: int, only: set[str] | None = None) -> dict:
    """Every dataset, or `only` those (bench/issue9.py takes the two its ratios name); the
    cluster stays up for the caller to take down."""
    say(f"building datasets in {base}")
    sets = make_datasets(base / "data", quick)
    if only is not None:
        sets = {name: path for name, path in sets.items() if name in only}
    stats = {name: tree_stats(path) for name, path in sets.items()}

    say(f"cloudtrain up --provider local --framework none --name {CLUSTER}")
    cli("up", "--provider", "local", "--framework", "none", "--name", CLUSTER)
    config = base / "ssh_config"
    config.write_text(cli("ssh-config", "--cluster", CLUSTER))
    host = next(line.split()[1] for line in config.read_text().splitlines() if line.startswith("Host "))
    ssh = f"ssh -F {shlex.quote(str(config))}"

    rsync = ensure_rsync()
    if rsync is None:
        say("rsync is not installed and could not be installed: rsync rows are skipped")

    me = [sys.executable, str(HERE), "--cloudtrain"]
    _, idle_mib, _ = measure([*me, "idle", "-", "-"])
    # What one OpenSSH connection costs here: for small datasets it is most of scp's time.
    connect_s = min(measure(["ssh", "-F", str(config), host, "true"])[0] for _ in range(max(runs, 2)))
    node = base / "node"  # the node's side of every transfer (same disk: the node is loopback)
    home = base / "home-side"
    rows: list[Row] = []

    for name, src in sets.items():
        up_dst, down_src, down_dst = node / "up" / name, node / "src" / name, home / name
        # The download source is on the node already, so every download tool reads the same tree.
        shutil.copytree(src, _fresh(down_src))
        # (tool, direction) -> (destination, command). Tools interleave within each repetition
        # so that a burst of load from a neighbour hits all of them, not one.
        plan: dict[tuple[str, str], tuple[Path, list[str]]] = {
            ("cloudtrain", "upload"): (up_dst, [*me, "upload", str(src), str(up_dst)]),
            ("scp", "upload"): (up_dst, ["scp", "-q", "-r", "-F", str(config), str(src), f"{host}:{up_dst}"]),
            ("cloudtrain", "download"): (down_dst, [*me, "download", str(down_src), str(down_dst)]),
            ("scp", "download"): (down_dst, ["scp", "-q", "-r", "-F", str(config), f"{host}:{down_src}", str(down_dst)]),
        }
        if name in DOWNLOAD_ONLY:
            plan = {k: v for k, v in plan.items() if k[1] == "download"}
        if rsync:
            plan[("rsync", "upload")] = (up_dst, [rsync, "-a", "-e", ssh, f"{src}/", f"{host}:{up_dst}/"])
            plan[("rsync", "download")] = (down_dst, [rsync, "-a", "-e", ssh, f"{host}:{down_src}/", f"{down_dst}/"])
            if name in DOWNLOAD_ONLY:
                del plan[("rsync", "upload")]
        by_key = {key: Row(name, key[1], key[0]) for key in plan}
        for rep in range(runs):
            for key, (dst, cmd) in plan.items():
                _fresh(dst)
                # A settled disk for every tool: the previous one's hundreds of MiB are still being
                # written back (and the folder just removed discarded), which would slow whoever runs next.
                os.sync()
                wall, peak, out = measure(cmd)
                row = by_key[key]
                if key[0] == "cloudtrain":
                    info = json.loads(out.strip().splitlines()[-1])
                    wall = info["seconds"]
                    if key[1] == "upload" and wall < min(row.seconds, default=float("inf")):  # the best run's split
                        row.note = f"file selection {info['select_s']:.2f}s"
                got = tree_stats(dst)
                if got != stats[name]:
                    raise RuntimeError(f"{key[0]} {key[1]} of {name}: got {got} (files, bytes), expected {stats[name]}")
                row.seconds.append(wall)
                row.peak_mib = max(row.peak_mib, peak)
                say(f"{name:<11} {key[1]:<8} {key[0]:<10} run {rep + 1}/{runs}: {wall:6.2f}s  {peak:6.1f} MiB")
            shutil.rmtree(up_dst, ignore_errors=True)
            shutil.rmtree(down_dst, ignore_errors=True)
        shutil.rmtree(down_src, ignore_errors=True)
        rows += sorted(by_key.values(), key=lambda r: (r.direction != "upload", ["cloudtrain", "scp", "rsync"].index(r.tool)))

    print_table(rows, stats, idle_mib, connect_s, runs, rsync)
    return summary(rows, stats, idle_mib, connect_s, runs)


def summary(rows: list[Row], stats: dict[str, tuple[int, int]], idle_mib: float, connect_s: float, runs: int) -> dict:
    """The three figures the transfer contract names, plus every row, for --json."""
    by = {(r.dataset, r.direction, r.tool): r for r in rows}

    def ratio(dataset: str, direction: str) -> float:
        return min(by[(dataset, direction, "cloudtrain")].seconds) / min(by[(dataset, direction, "scp")].seconds)

    ours = [r for r in rows if r.tool == "cloudtrain"]
    result = {
        "download_big_output_vs_scp": round(ratio("big-output", "download"), 3),
        "upload_big_file_vs_scp": round(ratio("big-file", "upload"), 3),
        "peak_rss_mib": {"min": round(min(r.peak_mib for r in ours), 1), "max": round(max(r.peak_mib for r in ours), 1), "idle": round(idle_mib, 1)},
    }
    print()
    print(f"download {stats['big-output'][1] / MiB:.0f} MiB vs scp: {result['download_big_output_vs_scp']:.2f}x   "
          f"upload {stats['big-file'][1] / MiB:.0f} MiB vs scp: {result['upload_big_file_vs_scp']:.2f}x   "
          f"cloudtrain peak RSS {result['peak_rss_mib']['min']:.0f}-{result['peak_rss_mib']['max']:.0f} MiB whatever the size")
    return {
        **result,
        "when": f"{dt.datetime.now():%Y-%m-%d %H:%M}",
        "cpus": os.cpu_count(),
        "load_1min_at_end": round(os.getloadavg()[0], 2),
        "runs": runs,
        "ssh_connect_s": round(connect_s, 3),
        "datasets": {n: {"files": f, "bytes": b} for n, (f, b) in stats.items()},
        "rows": [{"dataset": r.dataset, "direction": r.direction, "tool": r.tool, "seconds": r.seconds, "peak_mib": round(r.peak_mib, 1)} for r in rows],
    }


def print_table(rows: list[Row], stats: dict[str, tuple[int, int]], idle_mib: float, connect_s: float, runs: int, rsync: str | None) -> None:
    scp = {(r.dataset, r.direction): r for r in rows if r.tool == "scp"}
    print()
    print("datasets: " + "; ".join(f"{n} = {f} files, {b / MiB:.1f} MiB" for n, (f, b) in stats.items()))
    print(f"seconds = best of {runs}; MiB/s = dataset bytes / seconds; ratios = tool / scp (time: > 1 is slower; RSS: > 1 is more memory)")
    print(f"one OpenSSH connection (`ssh HOST true`): {connect_s:.2f}s, included in every scp/rsync time")
    print(f"cloudtrain child at rest (python + cloudtrain + paramiko, connected, nothing moved): {idle_mib:.1f} MiB RSS")
    if rsync is None:
        print("rsync: not available on this machine, skipped")
    # A Markdown table, so a run can be pasted into bench/README.md as it is.
    table = [["dataset", "direction", "tool", "seconds", "MiB/s", "time vs scp", "peak RSS MiB", "RSS vs scp", "note"]]
    for r in rows:
        best, ref = min(r.seconds), scp[(r.dataset, r.direction)]
        table.append([
            r.dataset, r.direction, r.tool, f"{best:.2f}", f"{stats[r.dataset][1] / MiB / best:.1f}",
            f"{best / min(ref.seconds):.2f}x", f"{r.peak_mib:.1f}", f"{r.peak_mib / ref.peak_mib:.2f}x", r.note,
        ])
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    numeric = set(range(3, 8))
    for n, line in enumerate(table):
        print("| " + " | ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 1) + ":" if i in numeric else "-" * (w + 2) for i, w in enumerate(widths)) + "|")


def leftovers(base: Path) -> list[str]:
    """Processes whose command line mentions our temp folder (e.g. the node's sshd)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(base) in cmdline and int(pid) != os.getpid():
            found.append(f"{pid} {cmdline[:160]}")
    return found


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--meter":  # internal: `--meter -- CMD...`
        return meter(sys.argv[3:])
    if len(sys.argv) == 5 and sys.argv[1] == "--cloudtrain":  # internal: `--cloudtrain OP A B`
        return cloudtrain_child(*sys.argv[2:5])

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small datasets and one run each (under a minute)")
    parser.add_argument("--runs", type=int, help="runs per tool and dataset; the best counts (default 3, --quick 1)")
    parser.add_argument("--json", type=Path, help="write the ratios, peak memory and every timing to this JSON file")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)

    # A plain `kill` should clean up too, not only Ctrl-C: make SIGTERM unwind through `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = Path(tempfile.mkdtemp(prefix="cloudtrain-bench-"))
    # A private cloudtrain home: the user's clusters are never touched; children inherit it.
    os.environ["CLOUDTRAIN_HOME"] = str(base / "ct-home")
    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    print(f"{dt.datetime.now():%Y-%m-%d %H:%M}  {os.cpu_count()} CPUs  load {os.getloadavg()[0]:.2f}  {ssh_version}  Python {platform.python_version()}", flush=True)
    try:
        result = run_bench(base, args.quick, runs)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
            print(f"wrote {args.json}")
    finally:
        # Always give the node back, so no sshd outlives the benchmark, then drop every temp file.
        try:
            cli("down", "--cluster", CLUSTER, "--force")
        except Exception as e:  # noqa: BLE001 - report, keep cleaning up
            print(f"cloudtrain down failed: {e}", file=sys.stderr)
        left = leftovers(base)
        if left:
            print("processes still running from this benchmark:\n  " + "\n  ".join(left), file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
