"""typer start-up costs cloudtrain works around (issue 9: `status` within 2x `import typer`).

typer 0.2x checks each parameter's value with a pydantic TypeAdapter that it builds the first
time the parameter gets a value, even None, which it then returns unchanged without using the
adapter. Every command has a `--help` whose value is None when not given, so every command
loaded pydantic (~0.1 s, more than `import typer` itself). Here the adapter is built only when
a value other than None reaches it; what typer returns is the same."""

from __future__ import annotations

from typing import Any, Callable


class _BuiltOnUse:
    """Stands in for a parameter's runtime coercion until a value other than None needs it."""

    def __init__(self, build: Callable[[Any], Any], param: Any) -> None:
        self._build, self._param = build, param

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None:  # typer's RuntimeParam.coerce, for None
            return () if param.multiple or param.nargs == -1 else None
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
