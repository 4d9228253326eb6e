"""Node side of $CLOUDTRAIN_CHECKPOINT_DIR: which files are complete, and their copy to a bucket.

Standalone (stdlib; boto3 only for `upload-s3`): the caller runs `listing` on the node through
`python -c` (checkpoints.py); on a cloud node the watchdog ships this file beside itself and
calls `upload` each poll with blobs.py's `put` (bootstrap/node/preempt.py), as the node's own
identity (only the cluster's nodes may write to the bucket). `python node_checkpoints.py
upload-s3 FOLDER BUCKET PREFIX` does the same through boto3, where a node has it.

A file is complete when no process holds it open for writing, its size and mtime are the same
as at the previous look, and its name is not one a write-then-rename leaves behind (a leading
`.`, or `.tmp`, `.part`, `.partial`, `~` at the end).
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time

PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", "~")


def looks_partial(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name.startswith(".") or name.endswith(PARTIAL_SUFFIXES)


def open_for_writing(folder: str) -> set[str]:
    """Paths under `folder` some process has open with O_WRONLY or O_RDWR (/proc fdinfo flags)."""
    writing = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(folder + "/"):
                    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                        flags = int(f.read().split("flags:")[1].split()[0], 8)
                    if flags & 3:
                        writing.add(target)
            except (OSError, ValueError, IndexError):
                pass
    return writing


def listing(folder: str) -> list[list]:
    """[relative path, size, mtime_ns, open for writing] for every regular file, hidden folders skipped."""
    d = os.path.realpath(folder)
    writing = open_for_writing(d)
    out = []
    for root, dirs, files in os.walk(d):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        for name in files:
            p = os.path.join(root, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append([os.path.relpath(p, d), st.st_size, st.st_mtime_ns, p in writing])
    return out


def complete(folder: str, previous: dict, final: bool = False) -> tuple[list[str], dict]:
    """The complete files now (relative paths, oldest first), and this look's (size, mtime) for the
    next. `final`: the writer is gone (the job ended, or the node is about to), so stability over
    two looks is not asked for: what is closed and not named like a partial file is complete."""
    now = sorted(listing(folder), key=lambda e: (e[2], e[0]))
    ready = [rel for rel, size, mtime, writing in now
             if not writing and not looks_partial(rel) and ".." not in rel.split("/")
             and (final or tuple(previous.get(rel) or ()) == (size, mtime))]
    return ready, {rel: [size, mtime] for rel, size, mtime, _ in now}


def upload(folder: str, prefix: str, put, state: dict, final: bool = False, newest_first: bool = False) -> list[str]:  # type: ignore[no-untyped-def]
    """One pass: `put(path, key)` each complete file not sent in this state yet; the keys written.
    `state` carries the previous look and what was sent ({"seen": ..., "sent": ...}; JSON-able,
    so a restarted watchdog does not send it all again). `newest_first`: a preemption notice
    leaves seconds, and the newest checkpoint is the one a resumed job wants."""
    ready, state["seen"] = complete(folder, state.get("seen", {}), final)
    sent = state.setdefault("sent", {})
    written = []
    for rel in reversed(ready) if newest_first else ready:
        try:
            st = os.stat(os.path.join(folder, rel))
        except OSError:
            continue  # gone meanwhile
        if sent.get(rel) == [st.st_size, st.st_mtime_ns]:
            continue
        key = f"{prefix.rstrip('/')}/{rel}"
        put(os.path.join(folder, rel), key)
        sent[rel] = [st.st_size, st.st_mtime_ns]
        written.append(key)
    return written


def upload_s3(folder: str, bucket: str, prefix: str, client, state: dict) -> list[str]:  # type: ignore[no-untyped-def]
    """`upload` through a boto3 client (a node that has boto3; the watchdog uses blobs.py)."""
    return upload(folder, prefix, lambda path, key: client.upload_file(path, bucket, key), state)


def restore_s3(folder: str, bucket: str, prefix: str, client) -> list[str]:  # type: ignore[no-untyped-def]
    """Download every object under the prefix into `folder` (each to a temp name, then renamed)."""
    got = []
    base = prefix.rstrip("/") + "/"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(base):]
            if not rel or ".." in rel.split("/") or looks_partial(rel):
                continue
            dest = os.path.join(folder, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.tmp")
            client.download_file(bucket, obj["Key"], tmp)
            os.replace(tmp, dest)
            got.append(rel)
    return got


def main(argv: list[str]) -> int:
    if argv[:1] == ["list"]:
        print(json.dumps(listing(argv[1])))
        return 0
    if argv[:1] == ["upload-s3"] and len(argv) == 4:
        import boto3  # on the node: its instance profile's credentials

        client, state = boto3.client("s3"), {}
        while True:
            try:
                upload_s3(argv[1], argv[2], argv[3], client, state)
            except Exception as e:  # noqa: BLE001 - a failed pass is retried; the job goes on
                print(f"checkpoint upload: {e}", file=sys.stderr, flush=True)
            time.sleep(float(os.environ.get("CLOUDTRAIN_CHECKPOINT_POLL", "10")))
    print("usage: node_checkpoints.py list FOLDER | upload-s3 FOLDER BUCKET PREFIX", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
