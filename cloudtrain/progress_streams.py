"""Stand-ins for sys.stdout / sys.stderr while progress.py draws: lines others write print
above the live display (never through it), a dead terminal drops them, --quiet filters them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudtrain.progress import Reporter

PREFIX = "cloudtrain: "


class Quiet:
    """sys.stderr under --quiet: only lines that carry an error or a warning get through."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        if "error:" in text or "warning:" in text:
            self.stream.write(text)
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class Survive:
    """The live display's terminal: once it is gone (a closed window: EIO), writes are dropped,
    so no refresh, in whichever thread, turns the cleanup that follows into a crash."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.dead = stream, False

    def write(self, text: str) -> int:
        if not self.dead:
            try:
                self.stream.write(text)
            except (OSError, ValueError):
                self._die()
        return len(text)

    def flush(self) -> None:
        if not self.dead:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self._die()

    def _die(self) -> None:
        from cloudtrain import interrupts

        self.dead = True
        interrupts.silence(self.stream)

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", "utf-8") or "utf-8"


class Above:
    """sys.stdout while a live display runs: the job's output, text or bytes, printed line by
    line above the display rather than written through it."""

    def __init__(self, reporter: "Reporter", phases: bool) -> None:
        import codecs

        self.reporter, self.phases, self.pending = reporter, phases, ""
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.buffer = self  # follow writes bytes to sys.stdout.buffer

    def write(self, data: str | bytes) -> int:
        with self.reporter._lock:  # bootstrap's node threads write at once
            text = self.decoder.decode(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
            *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if self.reporter._progress is not None:
                self.reporter._show(line, line.removeprefix(PREFIX) if self.phases else None)
            else:
                try:
                    (self.reporter._stderr if self.phases else self.reporter._stdout).write(line + "\n")
                except (OSError, ValueError):
                    pass
        return len(data)

    def flush_line(self) -> None:
        if self.pending:
            self.write("\n")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return (self.reporter._stderr if self.phases else self.reporter._stdout).fileno()
