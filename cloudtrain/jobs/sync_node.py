"""Node side of the incremental workdir (sync.py); stdlib only, run as `python3 -c`.

    python3 -c SCRIPT CACHE WORK read           print the cache's manifest ({} when it cannot be trusted)
    python3 -c SCRIPT CACHE WORK apply HEADER   tar of changed files on stdin: update the cache, then
                                                copy it to WORK (the job's own snapshot)

CACHE holds tree/ (the last shipped tree) and manifest.json ({"generation", "entries"}). Both
modes hold CACHE/lock, so two runs on one node never interleave. The manifest is removed before
the tree changes and written back only once it is whole again: a cut upload leaves no manifest,
and the next run ships everything into a fresh tree.
"""

import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import uuid

CONFLICT = 75  # the cache changed since the client read it: it plans again


def load(cache):
    try:
        with open(os.path.join(cache, "manifest.json")) as f:
            manifest = json.load(f)
        entries = manifest["entries"]
        tree = os.path.join(cache, "tree")
        for rel, entry in entries.items():
            st = os.lstat(os.path.join(tree, rel))
            if entry[0] == "l":
                if not stat.S_ISLNK(st.st_mode) or os.readlink(os.path.join(tree, rel)) != entry[1]:
                    return None
            elif not stat.S_ISREG(st.st_mode) or st.st_size != entry[1]:
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None  # missing, damaged or out of step with the tree: ship everything afresh


def inside(tree, rel):
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        sys.exit("cloudtrain sync: refusing the path %r" % rel)
    return os.path.join(tree, rel)


def remove(path):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def apply(cache, work, header_path):
    with open(header_path) as f:
        header = json.load(f)
    os.unlink(header_path)
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
    if header["tar"]:
        code = subprocess.call(["tar", "xf", "-", "-C", tree])  # stdin: the client's tar, untouched
        if code != 0:
            sys.exit("cloudtrain sync: tar exited %d unpacking the workdir" % code)
    tmp = os.path.join(cache, "manifest.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"generation": uuid.uuid4().hex, "entries": header["entries"]}, f)
    os.replace(tmp, os.path.join(cache, "manifest.json"))
    # A real copy (reflinked where the filesystem can): a job that edits its workdir
    # changes neither the cache nor the next job's snapshot.
    os.makedirs(work, exist_ok=True)
    src = os.path.join(tree, ".")
    if subprocess.call(["cp", "-a", "--reflink=auto", src, work], stderr=subprocess.DEVNULL) != 0:
        if subprocess.call(["cp", "-a", src, work]) != 0:
            sys.exit("cloudtrain sync: copying the cached workdir into %s failed" % work)


def main():
    cache, work, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, "lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if mode == "read":
            manifest = load(cache)
            sys.stdout.write(json.dumps(manifest or {}))
        else:
            apply(cache, work, sys.argv[4])


main()
