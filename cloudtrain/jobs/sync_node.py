"""Node side of the incremental workdir (sync.py); stdlib only, run as `python3 -c`.

    python3 -c SCRIPT CACHE WORK read           print the cache's manifest ({} when it cannot be trusted)
    python3 -c SCRIPT CACHE WORK plan           header on stdin; no file changed: apply it, print {"done": true};
                                                else print the manifest (the client then applies)
    python3 -c SCRIPT CACHE WORK apply HEADER   tar of changed files on stdin: update the cache, then
                                                copy it to WORK (the job's own snapshot)

A header may carry the job's "files" ([path, text, mode]) and "track" (its track.py, started as
the job's session leader) for once WORK is made: an unchanged workdir's run is then one start
on the node, not a read, an apply, three file writes and a start (issue 9).

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
byte a job could change. Both modes hold CACHE/lock, so two runs on one node never interleave.
The manifest is removed before the tree changes and written back only once it is whole again:
a cut upload leaves no manifest, and the next run ships everything into a fresh tree.
"""

import fcntl
import json
import os
import runpy
import shutil
import stat
import subprocess
import sys
import time
import uuid

CONFLICT = 75  # the cache changed since the client read it: it plans again
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
            os.setsid()  # its pid is the job's session id
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # the SSH session ends when nothing holds its pipes
                os.dup2(null, fd)
            os.closerange(3, 1 << 16)  # the cache's lock too
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
        code = subprocess.call(["tar", "xf", "-", "--unlink-first", "-C", tree])
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


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


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
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # the SSH session ends when nothing holds its pipes
            os.dup2(null, fd)
        os.closerange(3, 1 << 16)  # the parent's lock too: its run releases it as it exits
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
