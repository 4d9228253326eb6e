"""`cloudtrain` command line: thin commands over the library, and the one error handler."""

from __future__ import annotations

import importlib
import sys

import typer

from cloudtrain.cli.app import app, fail
from cloudtrain.errors import CloudtrainError

try:  # recent typer vendors click; older ones depend on it
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

# Command modules register themselves on `app` when imported.
for _name in ("cluster", "jobs", "catalog", "compat"):
    importlib.import_module(f"cloudtrain.cli.{_name}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: every user-facing failure becomes one line and an exit code."""
    try:
        code = app(args=argv, standalone_mode=False)
    except CloudtrainError as e:
        code = fail(e).exit_code
    except click_errors.UsageError as e:
        where = f"cloudtrain {e.ctx.command_path.split(' ', 1)[1]}" if e.ctx and " " in e.ctx.command_path else "cloudtrain"
        print(f"cloudtrain: error: {e.format_message()} (see `{where} --help`)", file=sys.stderr)
        code = 2
    except (typer.Abort, KeyboardInterrupt):
        print("cloudtrain: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
