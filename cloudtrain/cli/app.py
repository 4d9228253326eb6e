"""The typer app and its one error handler. Command modules register on `app`."""

from __future__ import annotations

import sys

import typer

from cloudtrain.errors import CloudtrainError

app = typer.Typer(
    name="cloudtrain",
    help="Rent a GPU machine, train on it, bring the model home, give the machine back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _options(quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors, warnings and the final result (no progress).")) -> None:
    from cloudtrain import progress

    progress.configure(quiet=quiet)  # live on a terminal, plain lines elsewhere


def fail(err: CloudtrainError) -> "typer.Exit":
    """Print the error's one line on stderr and return the Exit carrying its code."""
    print(f"cloudtrain: error: {err.line()}", file=sys.stderr)
    return typer.Exit(err.exit_code)
