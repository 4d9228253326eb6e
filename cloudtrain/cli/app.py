"""The typer app and its one error handler. Command modules register on `app`."""

from __future__ import annotations

import sys

import typer

from cloudtrain.errors import CloudtrainError

app = typer.Typer(
    name="cloudtrain",
    help="Rent a GPU machine, train on it, bring the model home, give the machine back.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (cli/completion.py completes names)
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def fail(err: CloudtrainError) -> "typer.Exit":
    """Print the error's one line on stderr and return the Exit carrying its code."""
    print(f"cloudtrain: error: {err.line()}", file=sys.stderr)
    return typer.Exit(err.exit_code)
