"""Node side of the incremental workdir (sync.py); stdlib only, run as `python3 -c` with
sync_node_cache.py (the cache: its tree, manifest, job snapshots, spares, eviction) made the
module it imports (sync.py's node_program); by hand, as a file beside that one.

    python3 -c SCRIPT CACHE WORK read           print the cache's manifest ({} when it cannot be trusted)
    python3 -c SCRIPT CACHE WORK plan           header on stdin; no file changed: apply it, print {"done": true};
                                                else print the manifest (the client then applies)
    python3 -c SCRIPT CACHE WORK apply HEADER   tar of changed files on stdin: update the cache, then
                                                copy it to WORK (the job's own snapshot)

A header may carry the job's "files" ([path, text, mode]) and "track" (its track.py, started as
the job's session leader) for once WORK is made: an unchanged workdir's run is then one start
on the node, not a read, an apply, three file writes and a start (issue 9).

Both modes hold CACHE/lock, so two runs on one node never interleave.
The manifest is removed before the tree changes and written back only once it is whole again:
a cut upload leaves no manifest, and the next run ships everything into a fresh tree.
"""

import fcntl
import json
import os
import runpy
import subprocess
import sys
import uuid

from sync_node_cache import (claim_spare, copy_tree, detach, evict, link_tree, load, load_linked,
                             make_spare, node_stat, remove, running, save_linked)

CONFLICT = 75  # the cache changed since the client read it: it plans again


def inside(tree, rel):
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        sys.exit("cloudtrain sync: refusing the path %r" % rel)
    return os.path.join(tree, rel)


def deliver(header):
    """The job's files, then its session leader (when this run carries them)."""
    for path, text, mode in header.get("files", []):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, mode)
    if header.get("track"):
        track(header["track"])


def track(job):
    """Start the job's track.py (runner.py's start does it with setsid nohup) in a child forked
    from this process: its interpreter is already up, a fresh one is a start more (issue 9)."""
    open(job["log"], "a").close()
    sys.stdout.flush()  # the child must not inherit (and repeat) what is buffered
    pid = os.fork()
    if pid == 0:
        try:
            detach()  # its pid is the job's session id
            os.chdir(job["dir"])
            sys.argv = ["track.py", ".", str(job["linger"])]
            runpy.run_path("track.py", run_name="__main__")
        finally:
            os._exit(0)
    with open(job["pid"], "w") as f:
        f.write("%d\n" % pid)


def apply(cache, work, header):
    tree = os.path.join(cache, "tree")
    current = load(cache)
    if header["expect"] is not None and (current is None or current.get("generation") != header["expect"]):
        if header["tar"]:
            while sys.stdin.buffer.read(1 << 20):
                pass  # the client is still sending: take it all, then say why it was wasted
        sys.exit(CONFLICT)
    remove(os.path.join(cache, "manifest.json"))
    if header["expect"] is None:
        remove(tree)
    os.makedirs(tree, exist_ok=True)
    for rel in header["delete"]:
        path = inside(tree, rel)
        remove(path)
        parent = os.path.dirname(path)
        while parent != tree:  # empty folders go too: a folder may become a file of that name
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)
    if header["expect"] is None:
        save_linked(cache, [])  # a fresh tree shares nothing with any job
    if header["tar"]:
        # --unlink-first: a file that ships again gets a new inode, never written through a
        # job's link. stdin: the client's tar, untouched.
        # 64 KiB records, short pipe reads reassembled (-B): transfer.UNTAR says why.
        code = subprocess.call(["tar", "-x", "-f", "-", "-b", "128", "-B", "--unlink-first", "-C", tree])
        if code != 0:
            sys.exit("cloudtrain sync: tar exited %d unpacking the workdir" % code)
    # Nothing changed: the tree keeps its generation, and with it the spare made for it.
    unchanged = header["expect"] is not None and not header["tar"] and not header["delete"]
    generation = header["expect"] if unchanged else uuid.uuid4().hex
    tmp = os.path.join(cache, "manifest.json.tmp")
    seen = {}
    for rel, entry in header["entries"].items():
        if entry[0] == "f":
            seen[rel] = node_stat(os.lstat(inside(tree, rel)))
    with open(tmp, "w") as f:
        json.dump({"generation": generation, "entries": header["entries"], "node": seen}, f)
    os.replace(tmp, os.path.join(cache, "manifest.json"))
    os.makedirs(os.path.dirname(work), exist_ok=True)
    # Only sharers that may still write matter: a finished job never runs again here.
    linked = [w for w in load_linked(cache) if os.path.isdir(w) and running(w)]
    if not linked:
        # No job that could write through a link runs: small files copied, big ones linked.
        if not link_tree(tree, work):
            sys.exit("cloudtrain sync: making the job's workdir %s failed" % work)
        save_linked(cache, [work])
        return generation, False
    # A job sharing the links runs: a real copy, the spare made ahead (one rename) or one now.
    if not claim_spare(cache, generation, work):
        os.makedirs(work, exist_ok=True)
        if not copy_tree(tree, work):
            sys.exit("cloudtrain sync: copying the cached workdir into %s failed" % work)
    if any(node_stat(os.lstat(inside(tree, rel))) != was for rel, was in seen.items()):
        # The running job wrote through its links while we copied: the copy may hold half of
        # it. The client ships everything afresh into a new tree, which no job shares.
        remove(os.path.join(cache, "manifest.json"))
        remove(work)
        sys.exit(CONFLICT)
    return generation, True


def main():
    cache, work, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, "lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if mode == "read":
            sys.stdout.write(json.dumps(load(cache) or {}))
            return
        if mode == "plan":  # under the one lock: nothing can change between this read and the apply
            header = json.load(sys.stdin)
            manifest = load(cache) or {}
            have = manifest.get("entries", {})
            if any(have.get(rel) != entry for rel, entry in header["entries"].items()):
                sys.stdout.write(json.dumps(manifest))
                return
            header.update(expect=manifest.get("generation"), tar=False, delete=sorted(rel for rel in have if rel not in header["entries"]))
            generation, copied = apply(cache, work, header)
            sys.stdout.write(json.dumps({"done": True}))
        else:
            with open(sys.argv[4]) as f:
                header = json.load(f)
            os.unlink(sys.argv[4])
            generation, copied = apply(cache, work, header)
        deliver(header)
        sys.stdout.flush()
        evict(cache)
        if copied:  # runs overlap: the next one likely will too, so its copy is made ahead
            make_spare(cache, generation)


main()
