"""SIGTERM and SIGHUP stop a command the way Ctrl-C does, and nothing stops a teardown.

The CLI installs `install()` once, in the main thread. The first of SIGINT, SIGTERM or SIGHUP
raises KeyboardInterrupt there, so every command's existing Ctrl-C path runs: `up` removes
what it made, `launch` brings outputs home and tears down, `run` detaches. Later signals
only say, once, that cloudtrain is already stopping: the cleanup the first one started must
not be cut off half-way (a cloud VM left up bills). The exit code is 128 + the first signal.

A closed terminal (SIGHUP) also kills stdout/stderr (EIO, or EPIPE for a closed pipe):
`write` never lets a dead stream turn a teardown into a crash.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import IO, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_first: int | None = None  # the signal that started the stop
_shielded = 0  # > 0 while a teardown that must finish runs
_deferred = False  # a signal came in while shielded and nothing was raised for it yet
_told = False  # "already stopping" was said
_outcome: str | None = None  # what the stopped command did, for the last line
_holding = False  # the command is over and cloudtrain is exiting: signals change nothing now


def install() -> None:
    """Handle SIGINT, SIGTERM and SIGHUP in this process (call from the main thread)."""
    global _first, _deferred, _told, _outcome, _holding
    _first, _deferred, _told, _outcome, _holding = None, False, False, None, False
    for sig in SIGNALS:
        # An ignored signal stays ignored: `nohup cloudtrain launch ...` must outlive its
        # terminal, and a shell's background job does not take the terminal's Ctrl-C.
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, _handle)


def _handle(signum: int, frame: object) -> None:
    global _first, _deferred, _told
    if _holding:
        return
    if _first is None and not _shielded:
        _first = signum
        raise KeyboardInterrupt
    if _first is None:
        _first, _deferred = signum, True
    if not _told:
        _told = True
        # os.write, not print: the main thread may be inside a write to stderr right now,
        # and a reentrant buffered write raises, which would abort the cleanup.
        _raw(b"cloudtrain: already stopping; cleaning up first, then exiting\n")


def _raw(data: bytes) -> None:
    try:
        os.write(2, data)
    except OSError:
        pass


def hold() -> None:
    """The command is over: a signal from now on must not raise while the exit is reported."""
    global _holding
    _holding = True


def signalled() -> int | None:
    """The signal that stopped this command, if any."""
    return _first


def exit_code() -> int:
    """128 + signal: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + (_first or signal.SIGINT)


def note(outcome: str) -> None:
    """Record what the stopped command did, for the last line it prints."""
    global _outcome
    _outcome = outcome


def last_line() -> str:
    how = "interrupted" if _first in (None, signal.SIGINT) else f"stopped by {signal.Signals(_first).name}"
    return f"{how}; {_outcome}" if _outcome else how


@contextmanager
def shielded() -> Iterator[None]:
    """Run a teardown to its end: a signal during it is taken (and said) but raised after."""
    global _shielded, _deferred
    _shielded += 1
    try:
        yield
    finally:
        _shielded -= 1
    if _deferred and not _shielded:
        _deferred = False
        raise KeyboardInterrupt


def write(text: str, stream: IO[str] | None = None) -> None:
    """Print a line, surviving a dead stream (a closed terminal or pipe)."""
    out = stream if stream is not None else sys.stderr
    try:
        out.write(text + "\n")
        out.flush()
    except (OSError, ValueError):
        silence(out)


_silence_lock = threading.Lock()


def silence(stream: IO[str]) -> None:
    """Point a dead stream's descriptor at /dev/null, so the data still buffered in it and
    every later write (other threads, the interpreter's flush at exit) succeed unseen."""
    with _silence_lock:
        try:
            fd = stream.fileno()
        except (OSError, ValueError, AttributeError):
            return
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
            stream.flush()
        except (OSError, ValueError):
            pass


def flush_std() -> None:
    """Flush stdout and stderr before exit; a dead one is silenced rather than failing the
    exit status (Python turns a failed flush at exit into status 120)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            silence(stream)
