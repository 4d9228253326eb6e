"""Node side of the incremental workdir, its cache: the module sync_node.py imports (stdlib
only); sync.py sends both as one `python3 -c` program, this one's text as that module.

CACHE holds tree/ (the last shipped tree), manifest.json ({"generation", "entries", "node":
each file's size, mtime_ns and mode here}), linked.json (the jobs whose snapshots share the
tree's big files) and, when runs overlap, spare-<generation>/ (a copy made in the background).

A job's snapshot is its own copy of every small file and a hard link to every big one
(LINK_OVER), taken in one pass over the tree without copying the bytes, as long as no job
that shares those links still runs. A hard link is not copy-on-write: a job that writes in
place into a big file changes the tree's copy too. So the tree's files are checked against
the "node" record at every run, and one a job changed is dropped from the manifest: the
client ships it again, and tar unlinks the old one before writing it (the finished job keeps
what it made). While a job that shares the links still runs, the next job instead gets a
real copy (the spare made ahead for it, else a copy now), so running jobs never share a
byte a job could change.
"""

import fcntl
import json
import os
import shutil
import stat
import subprocess
import time
import uuid

SPARE = "spare-"  # CACHE/spare-<generation>: a ready copy of that tree for the next job
SPARE_WAIT_S = 120  # at most this long for a spare being made; then the run copies itself
LINK_OVER = 1 << 20  # files from this size are linked into a snapshot; smaller ones (code, configs) copied
STARTING_S = 600  # a job folder without a pid this young is being started: counted as running
KEEP_TREES = 4  # workdirs whose trees a node keeps (CACHE is one of the folders beside each other)


def node_stat(st):
    return [st.st_size, st.st_mtime_ns, st.st_mode & 0o7777]


def load(cache):
    try:
        with open(os.path.join(cache, "manifest.json")) as f:
            manifest = json.load(f)
        entries = manifest["entries"]
        seen = manifest.get("node", {})
        tree = os.path.join(cache, "tree")
        edited = []
        for rel, entry in entries.items():
            st = os.lstat(os.path.join(tree, rel))
            if entry[0] == "l":
                if not stat.S_ISLNK(st.st_mode) or os.readlink(os.path.join(tree, rel)) != entry[1]:
                    return None
            elif not stat.S_ISREG(st.st_mode):
                return None
            elif seen.get(rel) != node_stat(st):
                edited.append(rel)  # written in place through a job's link (or damaged): ship it again
        for rel in edited:
            del entries[rel]
        return manifest
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None  # missing, damaged or out of step with the tree: ship everything afresh


def remove(path):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def detach():
    """In a forked child: a session of its own, holding none of the SSH session's pipes (that
    session ends when nothing holds them) nor the parent's fds (the cache's lock: the parent's
    run releases it as it exits)."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, 1 << 16)


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def running(work):
    """Whether the job whose snapshot is `work` may still write into it (layout.py's job files)."""
    job = os.path.dirname(work)
    if os.path.exists(os.path.join(job, "exit_code")):
        return False  # written once every process of the job has ended
    try:
        with open(os.path.join(job, "pid")) as f:
            return alive(int(f.read().strip()))
    except (OSError, ValueError):
        try:
            return time.time() - os.stat(job).st_mtime < STARTING_S
        except OSError:
            return False


def load_linked(cache):
    try:
        with open(os.path.join(cache, "linked.json")) as f:
            found = json.load(f)
        return [w for w in found if isinstance(w, str)] if isinstance(found, list) else []
    except (OSError, ValueError):
        return []


def save_linked(cache, works):
    tmp = os.path.join(cache, "linked.json.tmp")
    with open(tmp, "w") as f:
        json.dump(works, f)
    os.replace(tmp, os.path.join(cache, "linked.json"))


def link_tree(tree, dest):
    """dest: tree's folders and links remade, its small files copied, its big files hard-linked."""
    folders = []
    try:
        os.makedirs(dest, exist_ok=True)
        for dirpath, dirnames, filenames in os.walk(tree):
            rel = os.path.relpath(dirpath, tree)
            out = dest if rel == "." else os.path.join(dest, rel)
            for name in dirnames:
                src = os.path.join(dirpath, name)
                if os.path.islink(src):
                    os.symlink(os.readlink(src), os.path.join(out, name))
                else:
                    os.mkdir(os.path.join(out, name))
                    folders.append((src, os.path.join(out, name)))
            for name in filenames:
                src, dst = os.path.join(dirpath, name), os.path.join(out, name)
                st = os.lstat(src)
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(src), dst)
                elif st.st_size >= LINK_OVER:
                    os.link(src, dst)
                else:
                    shutil.copy2(src, dst)
        for src, dst in reversed(folders):  # last: a read-only folder must take its files first
            shutil.copystat(src, dst)
        return True
    except OSError:
        return False


def copy_tree(tree, dest):
    """A real copy of tree's contents into dest (reflinked where the filesystem can)."""
    src = os.path.join(tree, ".")
    if subprocess.call(["cp", "-a", "--reflink=auto", src, dest], stderr=subprocess.DEVNULL) == 0:
        return True
    return subprocess.call(["cp", "-a", src, dest], stderr=subprocess.DEVNULL) == 0


def await_spare(cache, generation):
    """While a child is still making this generation's spare (runs back to back), wait for it
    rather than copy the same tree a second time beside it."""
    prefix = "making-%s-" % generation
    deadline = time.monotonic() + SPARE_WAIT_S
    while time.monotonic() < deadline and not os.path.isdir(os.path.join(cache, SPARE + generation)):
        pids = [n[len(prefix):] for n in os.listdir(cache) if n.startswith(prefix)]
        if not any(p.isdigit() and alive(int(p)) for p in pids):
            break
        time.sleep(0.02)


def claim_spare(cache, generation, work):
    await_spare(cache, generation)
    spare = os.path.join(cache, SPARE + generation)
    try:
        os.rename(spare, work)  # replaces an empty `work`; fails when there is no spare
        return True
    except OSError:
        return False


def make_spare(cache, generation):
    """In a detached child, after the job has its copy: the next run's copy of this tree, made
    now so that an unchanged workdir's next run costs a rename, not a copy of every byte.
    Kept only if no run changed the tree meanwhile (same generation before and after)."""
    if os.fork() != 0:
        return
    try:
        detach()
        wanted = SPARE + generation
        with open(os.path.join(cache, "lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for name in os.listdir(cache):  # under the lock: a spare is never removed as it is claimed
                if name.startswith(SPARE) and name != wanted:
                    os.rename(os.path.join(cache, name), os.path.join(cache, "trash-" + uuid.uuid4().hex))
            current = load(cache)
            needed = current is not None and current.get("generation") == generation and not os.path.exists(os.path.join(cache, wanted))
        for name in os.listdir(cache):
            path = os.path.join(cache, name)
            # Older trees' spares; half-made ones that a killed child left (a day old: not in progress).
            if name.startswith("trash-") or (name.startswith("making-") and time.time() - os.lstat(path).st_mtime > 86400):
                remove(path)
        if not needed:
            os._exit(0)
        tmp = os.path.join(cache, "making-%s-%d" % (generation, os.getpid()))
        os.makedirs(tmp)
        ok = copy_tree(os.path.join(cache, "tree"), tmp)
        # No lock here: a run may hold it waiting for this copy (await_spare). A run that
        # changed the tree meanwhile removed or replaced the manifest first, so the same
        # generation now means the tree was the same throughout the copy.
        current = load(cache)
        if ok and current is not None and current.get("generation") == generation and not os.path.exists(os.path.join(cache, wanted)):
            os.rename(tmp, os.path.join(cache, wanted))
        else:
            remove(tmp)
    finally:
        os._exit(0)


def evict(cache):
    """Beyond KEEP_TREES workdirs, the trees used longest ago go (never one a run holds locked).
    Jobs that linked their files keep them: removing a name never changes an inode."""
    parent = os.path.dirname(cache)
    others = []
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        if path != cache and os.path.isdir(path) and not os.path.islink(path):
            try:
                # Every run writes its header and manifest in the folder: its mtime is its last use.
                others.append((os.stat(path).st_mtime, path))
            except OSError:
                pass
    for used, path in sorted(others)[: max(0, len(others) - (KEEP_TREES - 1))]:
        if time.time() - used < STARTING_S:
            continue  # a run may be between reading this cache and updating it
        try:
            with open(os.path.join(path, "lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                remove(path)
        except OSError:
            pass  # in use, or already gone
