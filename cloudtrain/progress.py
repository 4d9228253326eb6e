"""What the user sees while a long phase runs: live on a terminal, plain lines elsewhere, or quiet.

Every phase line today goes through one `say` callback (cli/options.py); the reporter here
takes them. On a terminal (stdout and stderr both ttys) the lines scroll above a rich spinner
that shows the latest line with the time since it, and phases that move bytes (shipping,
bringing home) get a bar with bytes, rate and ETA. Anywhere else the lines print as before,
one per line, with no escape codes. `--quiet` keeps errors, warnings and `Result` lines only.

The stand-ins for stdout/stderr while it draws are in progress_streams.py. rich is
imported only once a live display starts, so pipes, `--help` and `status` never pay
for it. Transfers report bytes through `advance()`/`expect()`, which cost a dict lookup when
no byte phase is live on the calling thread.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from cloudtrain.progress_streams import PREFIX, Above, Quiet, Survive

PLAIN, LIVE, QUIET = "plain", "live", "quiet"


class Result(str):
    """A line that is the command's outcome: printed even with --quiet."""


class _Phase:
    """A byte-moving phase on the live display: one row with a bar, bytes, rate and ETA."""

    def __init__(self, reporter: "Reporter", title: str, total: int | None) -> None:
        self.reporter, self.title, self.total, self.done = reporter, title, total, 0
        self.poll: Callable[[], int | None] | None = None
        self.task: Any = None

    def advance(self, n: int) -> None:
        self.done += n
        self.reporter._update(self)

    def expect(self, n: int) -> None:
        self.total = (self.total or 0) + n
        self.reporter._update(self)


_local = threading.local()  # the calling thread's byte phase, if one is live


class Reporter:
    def __init__(self, mode: str = PLAIN, stream: Any = None) -> None:
        self.mode = mode
        self.stream = stream  # None: sys.stderr at the time of writing (tests swap it)
        self._lock = threading.RLock()
        self._progress: Any = None
        self._status: Any = None  # the live row showing the latest line
        self._stdout: Any = None  # the real streams while ours stand in for them
        self._stderr: Any = None

    # -- lines ----------------------------------------------------------------------------
    def say(self, text: str) -> None:
        if self.mode == QUIET and not isinstance(text, Result) and not text.startswith("warning:"):
            return
        with self._lock:
            if self.mode != LIVE:
                self._write(PREFIX + text)
                return
            self._show(PREFIX + text, text)

    def _show(self, line: str, phase: str | None) -> None:
        """Print `line` above the live display; `phase`, when it names one, becomes its row."""
        with self._lock:
            progress = self._live()
            try:
                progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
            except OSError:
                return  # a closed terminal must not turn a teardown into a crash
            if phase is None or phase.startswith((" ", "warning:")):
                return  # a job's log line or a warning: the phase goes on
            if self._status is not None:
                progress.remove_task(self._status)
            # A new row per phase line, so its elapsed time counts from the line that named it.
            self._status = progress.add_task(phase.strip(), total=None, kind="status")

    def _write(self, line: str) -> None:
        from cloudtrain import interrupts

        interrupts.write(line, self.stream or sys.stderr)

    # -- byte phases ----------------------------------------------------------------------
    @contextmanager
    def phase(self, title: str, total: int | None = None) -> Iterator[_Phase]:
        """A phase that moves bytes; on a terminal a bar while it lasts. Elsewhere it prints nothing."""
        phase = _Phase(self, title, total)
        if self.mode != LIVE:
            yield phase
            return
        with self._lock:
            phase.task = self._live().add_task(title[:100], total=total, kind="bytes", phase=phase)
        previous, _local.phase = getattr(_local, "phase", None), phase
        try:
            yield phase
        finally:
            _local.phase = previous
            with self._lock:
                if self._progress is not None:
                    self._progress.remove_task(phase.task)

    def _update(self, phase: _Phase) -> None:
        if phase.task is not None and self._progress is not None:
            self._progress.update(phase.task, completed=phase.done, total=phase.total)

    def _live(self) -> Any:
        if self._progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            from rich.table import Column

            self._progress = Progress(
                SpinnerColumn(),
                # The description takes what the other columns leave, cut with an ellipsis: one row each.
                TextColumn("{task.description}", markup=False, table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
                BarColumn(bar_width=16),
                _BytesColumn(),
                TimeElapsedColumn(),
                expand=True,
                console=Console(file=Survive(self.stream or sys.stderr), force_terminal=True),  # LIVE is chosen on a tty
                transient=True,
                refresh_per_second=8,
                redirect_stdout=False,  # ours below also takes the job's bytes (sys.stdout.buffer)
                redirect_stderr=False,
            )
            self._progress.start()
            # Whatever else writes to the terminal (the job's output, bootstrap's per-node
            # lines) prints above the display, never through it.
            self._stdout, sys.stdout = sys.stdout, Above(self, phases=False)  # type: ignore[assignment]
            self._stderr, sys.stderr = sys.stderr, Above(self, phases=True)  # type: ignore[assignment]
            threading.Thread(target=self._poll, daemon=True, name="cloudtrain-progress").start()
        return self._progress

    def _poll(self) -> None:
        # Phases whose bytes move in another process (the system tar feeding ssh) are read here.
        while self._progress is not None:
            for task in list(self._progress.tasks):
                phase = task.fields.get("phase")
                if phase is not None and phase.poll is not None and (n := phase.poll()) is not None:
                    phase.done = n
                    self._update(phase)
            time.sleep(0.25)

    def close(self) -> None:
        with self._lock:
            if isinstance(sys.stderr, Quiet):
                sys.stderr = self._stderr
            if self._progress is not None:
                if isinstance(sys.stdout, Above):
                    sys.stdout.flush_line()
                    sys.stdout = self._stdout
                if isinstance(sys.stderr, Above):
                    sys.stderr.flush_line()
                    sys.stderr = self._stderr
                progress, self._progress = self._progress, None
                try:
                    progress.stop()
                except OSError:
                    pass


def _bytes_column_class() -> type:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class BytesColumn(ProgressColumn):
        """bytes done / total, rate, ETA for byte phases; nothing for the status row."""

        def render(self, task: Any) -> Text:
            if task.fields.get("kind") != "bytes":
                return Text("")
            done = human(task.completed)
            total = f"/{human(task.total)}" if task.total else ""
            rate = f" {human(task.speed)}/s" if task.speed else ""
            eta = ""
            if task.total and task.speed and task.completed < task.total:
                eta = f" ETA {int((task.total - task.completed) / task.speed)}s"
            return Text(f"{done}{total}{rate}{eta}")

    return BytesColumn


def _BytesColumn() -> Any:  # noqa: N802 - a column built when rich is imported, not before
    return _bytes_column_class()()


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


_reporter = Reporter()


def configure(quiet: bool = False) -> Reporter:
    """The CLI's choice, once per process: quiet, live on a terminal, else plain lines."""
    global _reporter
    _reporter.close()
    if quiet:
        mode = QUIET
    elif sys.stdout.isatty() and sys.stderr.isatty() and os.environ.get("TERM", "") not in ("", "dumb"):
        mode = LIVE
    else:
        mode = PLAIN
    _reporter = Reporter(mode)
    if mode == QUIET:
        # Lines written straight to stderr (bootstrap's per-node ones) obey --quiet too; the
        # reporter's own results go to the real stderr.
        _reporter.stream = _reporter._stderr = sys.stderr
        sys.stderr = Quiet(sys.stderr)  # type: ignore[assignment]
    return _reporter


def reporter() -> Reporter:
    return _reporter


def say(text: str) -> None:
    _reporter.say(text)


def phase(title: str, total: int | None = None):  # type: ignore[no-untyped-def]
    return _reporter.phase(title, total)


def advance(n: int) -> None:
    """Bytes moved by the calling thread's phase (a transfer loop calls this per chunk)."""
    if (current := getattr(_local, "phase", None)) is not None:
        current.advance(n)


def expect(n: int) -> None:
    """More bytes the calling thread's phase will move (a download learns sizes file by file)."""
    if (current := getattr(_local, "phase", None)) is not None:
        current.expect(n)


def poll(fn: Callable[[], int | None]) -> None:
    """Bytes of the calling thread's phase are counted elsewhere: `fn` says how many so far."""
    if (current := getattr(_local, "phase", None)) is not None:
        current.poll = fn


def bytes_read(pid: int) -> int | None:
    """What process `pid` has read so far (Linux's /proc/PID/io); None once it is gone."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def close() -> None:
    _reporter.close()
