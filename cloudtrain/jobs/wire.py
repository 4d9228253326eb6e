"""The outputs stream: what the node sends (a stdlib-only python3 program) and how it is read here.

One stream carries every file still owed, as frames `tag, u32 length, payload`:

    F [id, size, mtime_ns, start]   a file begins; its bytes from `start` follow (start -1: it is
                                    unchanged since it was verified here, nothing follows)
    D bytes                         the file's next bytes
    H sha256                        the file ends: the digest of all of it, prefix included
    E [id, reason]                  the file could not be read (vanished, unreadable): skip it
    Z                               the stream is complete (without it, the stream was cut)

The node hashes each file as it reads it (and the prefix a resumed file already has here), so
the check costs no extra pass over the data on either side. Names travel as hex of their
bytes: any name the node's filesystem allows survives, whatever its encoding.
"""

from __future__ import annotations

import json
import struct
from typing import BinaryIO, Iterator

SENDER = r"""
import hashlib, json, os, stat, struct, sys
req = json.loads(sys.stdin.read())
out = sys.stdout.buffer
def frame(tag, payload):
    out.write(tag + struct.pack(">I", len(payload)))
    out.write(payload)
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
root = bytes.fromhex(req["root"])
if os.path.isdir(root):
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
for fid, path in sorted(req["extra"].items()):
    if os.path.lexists(bytes.fromhex(path)):
        send(fid, bytes.fromhex(path))
frame(b"Z", b"")
out.flush()
"""


class Cut(Exception):
    """The stream ended before its last frame: the connection broke; resume from here."""


def read_frames(stream: BinaryIO) -> Iterator[tuple[bytes, bytes]]:
    """(tag, payload) of each frame; raises Cut when the stream ends early."""
    while True:
        head = stream.read(5)
        if len(head) < 5:
            raise Cut("the stream ended mid-frame" if head else "the stream ended early")
        tag, size = head[:1], struct.unpack(">I", head[1:])[0]
        payload = stream.read(size) if size else b""
        if len(payload) < size:
            raise Cut("the stream ended mid-frame")
        if tag == b"Z":
            return
        yield tag, payload


def decode(payload: bytes) -> list:
    return json.loads(payload)


__all__ = ["Cut", "SENDER", "decode", "read_frames"]
