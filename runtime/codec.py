"""Typed values to and from the JSON values the journal stores."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["to_json_value", "from_json_value", "return_type_of", "input_type_of"]

_NO_TYPE: Any = object()


def to_json_value(value: Any) -> Any:
    """A plain JSON value (dicts, lists, str, numbers) for `value`, Structs included."""
    return msgspec.to_builtins(value)


def from_json_value(value: Any, type_: Any) -> Any:
    """Convert a stored JSON value back to `type_`; unknown type: the value as stored."""
    if type_ is _NO_TYPE or type_ is Any or type_ is None:
        return value
    return msgspec.convert(value, type_, strict=False)


@functools.cache
def return_type_of(fn: Callable[..., Any]) -> Any:
    """The annotated return type of `fn`, or a marker meaning 'as stored'."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations just mean 'untyped'
        return _NO_TYPE
    return hints.get("return", _NO_TYPE)


@functools.cache
def input_type_of(fn: Callable[..., Any]) -> Any:
    """The annotated type of a workflow function's input (its second parameter)."""
    params = list(inspect.signature(fn).parameters)
    if len(params) < 2:
        return _NO_TYPE
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001
        return _NO_TYPE
    return hints.get(params[1], _NO_TYPE)
