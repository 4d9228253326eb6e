"""The typer app and its one error handler. Command modules register on `app`."""

from __future__ import annotations

import inspect
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from cloudtrain.cli.lean import defer_pydantic
from cloudtrain.errors import CloudtrainError

defer_pydantic()


class _PlainHelpGroup(TyperGroup):
    """Commands' help in click's plain format (issue 9: rendering it with rich loads rich and
    markdown-it, ~2x `import typer` on its own), keeping each line of the paragraphs after the
    first as typer's rich help did, so the `Example:` lines stay one a line."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for command in self.commands.values():
            command.help = keep_lines(command.help)


def keep_lines(text: str | None) -> str | None:
    """Mark every later paragraph of several lines with click's no-rewrap `\\b`."""
    if not text:
        return text
    first, *rest = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join([first, *("\b\n" + p if "\n" in p and not p.startswith("\b") else p for p in rest)])


app = typer.Typer(
    name="cloudtrain",
    help="Rent a GPU machine, train on it, bring the model home, give the machine back.",
    cls=_PlainHelpGroup,
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (cli/completion.py completes names)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # see _PlainHelpGroup
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
