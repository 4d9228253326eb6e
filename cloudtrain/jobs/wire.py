"""The outputs stream: what the node sends (a stdlib-only python3 program) and how it is read here.

One stream carries every file still owed, as frames `tag, u32 length, payload`:

    F [id, size, mtime_ns, start]   a file begins; its bytes from `start` follow (start -1: it is
                                    unchanged since it was verified here, nothing follows)
    D bytes                         the file's next bytes
    H sha256                        the file ends: the digest of all of it, prefix included
    E [id, reason]                  the file could not be read (vanished, unreadable): skip it
    J {name: text or null}          first, when asked: small files of the job's folder (its
                                    out_bytes, ended_by.json), read as the stream starts
    B                               last, when asked: out_bytes says the outputs are not small;
                                    ask again over the bulk path (nothing else was sent)
    Z                               the stream is complete (without it, the stream was cut)

A sender may be started before the job ends (issue 9) as `-c SENDER wait EXIT_CODE_FILE`: it
writes one byte, `.`, as soon as that file exists (the follower wakes on it rather than at its
next poll) or its request has come, then reads the request, and ends without a word when its
stdin ends empty (the request was never needed).

The node hashes each file as it reads it (and the prefix a resumed file already has here), so
the check costs no extra pass over the data on either side. Names travel as hex of their
bytes: any name the node's filesystem allows survives, whatever its encoding.
"""

from __future__ import annotations

import json
import struct
from typing import Iterator

SENDER = r"""
import fcntl, hashlib, json, os, queue, select, socket, stat, struct, sys, threading
if sys.argv[1:2] == ["wait"]:
    pause = 0.005  # a short job's end is told within milliseconds, a long job's within 0.1 s
    while not os.path.exists(sys.argv[2]) and not select.select([0], [], [], pause)[0]:
        pause = min(pause * 1.2, 0.1)
    os.write(1, b".")
raw = sys.stdin.read()
if not raw:  # started ahead of the job's end, and not needed after all
    sys.exit(0)
req = json.loads(raw)
try:  # a deep pipe to sshd, so hashing the next MiB overlaps sshd encrypting this one
    fcntl.fcntl(1, 1031, 1 << 20)  # F_SETPIPE_SZ
except OSError:
    try:
        socket.socket(fileno=os.dup(1)).setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    except OSError:
        pass
frames = queue.Queue(16)
def writer():
    try:
        write()
    except BaseException:  # the reader is gone (a cut connection): end, never linger on the node
        os._exit(1)
def write():
    out = os.fdopen(1, "wb", buffering=0)
    while True:
        item = frames.get()
        if item is None:
            return
        for part in item:
            part = memoryview(part)
            while part:
                part = part[out.write(part):]
thread = threading.Thread(target=writer)
thread.start()
small = bytearray()
def frame(tag, payload):
    # Small frames are batched: one hand-over to the writer thread per MiB, not per file.
    global small
    head = tag + struct.pack(">I", len(payload))
    if len(payload) < 65536:
        small += head + payload
        if len(small) >= 1 << 20:
            flush()
    else:
        flush()
        frames.put((head, payload))
def flush():
    global small
    if small:
        frames.put((bytes(small),))
        small = bytearray()
def send(fid, path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        return frame(b"E", json.dumps([fid, e.strerror or str(e)]).encode())
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return frame(b"E", json.dumps([fid, "not a regular file"]).encode())
        done = req["done"].get(fid)
        if done == [st.st_size, st.st_mtime_ns]:
            return frame(b"F", json.dumps([fid, st.st_size, st.st_mtime_ns, -1]).encode())
        start = req["have"].get(fid, 0)
        start = start if start <= st.st_size else 0
        h = hashlib.sha256()
        left = start
        while left:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
        frame(b"F", json.dumps([fid, st.st_size, st.st_mtime_ns, start]).encode())
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            h.update(chunk)
            frame(b"D", chunk)
        frame(b"H", h.digest())
    except OSError as e:
        frame(b"E", json.dumps([fid, e.strerror or str(e)]).encode())
    finally:
        os.close(fd)
facts = {}
for name, path in sorted(req.get("facts", {}).items()):
    try:
        with open(bytes.fromhex(path), "rb") as f:
            facts[name] = f.read(65536).decode(errors="replace")
    except OSError:
        facts[name] = None
if facts:
    frame(b"J", json.dumps(facts).encode())
sized = (facts.get("out_bytes") or "").strip()
# Outputs not small (or an older job's, without out_bytes) go over the bulk path, as before.
bulk = req.get("bulk_over") is not None and not (sized.isdigit() and int(sized) < req["bulk_over"])
root = bytes.fromhex(req["root"])
if os.path.isdir(root) and not bulk:
    for dirpath, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            fid = "o" + os.path.relpath(path, root).hex()
            try:
                regular = stat.S_ISREG(os.lstat(path).st_mode)
            except OSError as e:  # listed, then gone: say so
                frame(b"E", json.dumps([fid, e.strerror or str(e)]).encode())
                continue
            if regular:  # links stay on the node: they may point anywhere on the machine
                send(fid, path)
for fid, path in sorted(req["extra"].items()) if not bulk else ():
    if os.path.lexists(bytes.fromhex(path)):
        send(fid, bytes.fromhex(path))
frame(b"B" if bulk else b"Z", b"")
flush()
frames.put(None)
thread.join()
"""


class Cut(Exception):
    """The stream ended before its last frame: the connection broke; resume from here."""


def read_frames(chunks: Iterator[bytes]) -> Iterator[tuple[bytes, memoryview]]:
    """(tag, payload) of each frame as chunks arrive; raises Cut when the stream ends early.

    A D frame's bytes come as one or more views into the chunks themselves, never copied:
    at hundreds of MiB/s every copy in Python shows."""
    head = bytearray()
    tag, want, small = b"", 0, bytearray()
    in_data = False
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            if in_data:
                n = min(want, len(view))
                yield b"D", view[:n]
                view, want = view[n:], want - n
                in_data = want > 0
                continue
            if not tag:
                n = min(5 - len(head), len(view))
                head += view[:n]
                view = view[n:]
                if len(head) < 5:
                    continue
                tag, want = bytes(head[:1]), struct.unpack(">I", head[1:])[0]
                head.clear()
                if tag == b"D":
                    in_data, tag = want > 0, b""
                    continue
                if want == 0:  # an empty frame may end a chunk: finish it now
                    if tag == b"Z":
                        return
                    yield tag, memoryview(b"")
                    tag = b""
                    continue
            n = min(want - len(small), len(view))
            small += view[:n]
            view = view[n:]
            if len(small) == want:
                if tag == b"Z":
                    return
                yield tag, memoryview(bytes(small))
                tag = b""
                small.clear()
    raise Cut("the stream ended early")


def decode(payload: memoryview) -> list:
    return json.loads(bytes(payload))


__all__ = ["Cut", "SENDER", "decode", "read_frames"]
