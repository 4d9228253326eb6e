"""`cloudtrain` command line: thin commands over the library, and the one error handler."""

from __future__ import annotations

import importlib
import sys

import typer

from cloudtrain import interrupts, progress
from cloudtrain.cli.app import app
from cloudtrain.errors import CloudtrainError

try:  # recent typer vendors click; older ones depend on it
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

_NO_ARGS = getattr(click_errors, "NoArgsIsHelpError", ())  # typer's own click; () matches nothing

# Command modules register themselves on `app` when imported.
for _name in ("cluster", "jobs", "catalog", "compat", "runs"):
    importlib.import_module(f"cloudtrain.cli.{_name}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: every user-facing failure becomes one line and an exit code.

    SIGTERM and SIGHUP take Ctrl-C's path (see `cloudtrain.interrupts`); the exit code is then
    128 + the signal, after whatever cleanup the command does on the way out."""
    interrupts.install()
    try:
        try:
            code = app(args=argv, standalone_mode=False)
        finally:
            interrupts.hold()  # done: a signal now would only turn the exit into a traceback
            progress.close()  # the live display ends before any error line prints
        if interrupts.signalled() is not None:
            code = _interrupted()  # typer turns the KeyboardInterrupt into a plain 130
    except CloudtrainError as e:
        _error(e.line())
        code = e.exit_code
    except _NO_ARGS as e:  # bare `cloudtrain`: the help, on stdout as `--help` prints it
        print(e.format_message())
        code = 2
    except click_errors.UsageError as e:
        where = f"cloudtrain {e.ctx.command_path.split(' ', 1)[1]}" if e.ctx and " " in e.ctx.command_path else "cloudtrain"
        _error(f"{e.format_message()} (see `{where} --help`)")
        code = 2
    except (typer.Abort, KeyboardInterrupt):
        code = _interrupted()
    except OSError:
        # click echoes a newline to stderr on Ctrl-C; after a hang-up that write fails, and the
        # OSError replaces the interrupt that caused it.
        if interrupts.signalled() is None:
            raise
        code = _interrupted()
    interrupts.flush_std()
    sys.exit(code if isinstance(code, int) else 0)


def _error(line: str) -> None:
    interrupts.write(f"cloudtrain: error: {line}", sys.stderr)


def _interrupted() -> int:
    interrupts.write(f"cloudtrain: {interrupts.last_line()}", sys.stderr)
    return interrupts.exit_code()


__all__ = ["app", "main"]
