"""typer start-up costs cloudtrain works around (issue 9: `status` within 2x `import typer`, a
no-op `run` within 2x one `ssh`).

typer 0.2x checks each parameter's value with a pydantic TypeAdapter that it builds the first
time the parameter gets a value, even None, which it then returns unchanged. Every command has a
`--help` whose value is None when not given, so every command loaded pydantic (~0.1 s, more than
`import typer` itself), and `run` paid it again for its plain `str`, `Path`, `int` and list of
`str` values. Here None and those plain values get what typer's adapter returns for them, without
pydantic; anything else (a bad number, constraints, parsers, files) still goes to typer's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, get_args, get_origin

_PYDANTIC = object()  # "typer's adapter must decide"


def _plain(param: Any, value: Any, ctx: Any) -> Any:
    """What typer's adapter returns for `value`, for the plain cases; _PYDANTIC otherwise."""
    desc = param.type_descriptor
    info, ann = desc.parameter_info, desc.annotation
    if info.parser is not None or desc.file_annotation is not None:
        return _PYDANTIC
    if ann is str and type(value) is str:  # typer's str adapter: str(value)
        return value
    if ann is int and info.min is None and info.max is None:
        if type(value) is int or (type(value) is str and value.isascii() and value.isdigit()):
            return int(value)
        return _PYDANTIC  # its error message is typer's
    if ann is Path and type(value) is str and info.path_type is None and not info.allow_dash:
        from typer._param_types import coerce_cli_path

        # typer's path adapter is this call, after pydantic turns the str into a Path.
        return coerce_cli_path(Path(value), info, path_type=Path, param=param, ctx=ctx)
    if get_origin(ann) is list and get_args(ann) == (str,) and isinstance(value, (list, tuple)) and all(type(v) is str for v in value):
        return list(value)
    return _PYDANTIC


class _BuiltOnUse:
    """Stands in for a parameter's runtime coercion until a value that needs pydantic comes."""

    def __init__(self, build: Callable[[Any], Any], param: Any) -> None:
        self._build, self._param = build, param

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        multi = param.multiple or param.nargs == -1
        if value is None:  # typer's RuntimeParam.coerce, for None
            return () if multi else None
        if not (multi and isinstance(value, str)):  # that one is typer's error
            try:
                plain = _plain(param, value, ctx)
            except (AttributeError, ImportError):  # another typer: let it do its own
                plain = _PYDANTIC
            if plain is not _PYDANTIC:
                return plain
        return self._build(self._param).coerce(value, param=param, ctx=ctx)


def defer_pydantic() -> None:
    try:
        from typer.core import _TyperParameter
    except ImportError:  # pragma: no cover - another typer: nothing to defer
        return
    build = getattr(_TyperParameter, "get_runtime_param", None)
    if build is None or getattr(build, "_cloudtrain_deferred", False):
        return

    def get_runtime_param(self: Any) -> Any:
        if getattr(self, "_runtime_param", None) is None:
            return _BuiltOnUse(build, self)
        return build(self)

    get_runtime_param._cloudtrain_deferred = True  # type: ignore[attr-defined]
    _TyperParameter.get_runtime_param = get_runtime_param  # type: ignore[method-assign]
