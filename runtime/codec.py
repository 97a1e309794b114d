"""Typed values to and from the JSON values the journal stores."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

import msgspec

from .errors import PayloadDecodeError

__all__ = [
    "to_json_value",
    "from_json_value",
    "decode_recorded",
    "return_type_of",
    "input_type_of",
]

_NO_TYPE: Any = object()


def to_json_value(value: Any) -> Any:
    """A plain JSON value (dicts, lists, str, numbers) for `value`, Structs included."""
    return msgspec.to_builtins(value)


def from_json_value(value: Any, type_: Any) -> Any:
    """Convert a stored JSON value back to `type_`; unknown type: the value as stored."""
    if type_ is _NO_TYPE or type_ is Any or type_ is None:
        return value
    return msgspec.convert(value, type_, strict=False)


def decode_recorded(value: Any, type_: Any, *, workflow_id: str, where: str) -> Any:
    """`from_json_value` for a value the journal holds, which older code may have
    written: fields it had and the type dropped are ignored, fields the type added
    take their defaults. A value that still does not decode (a field's type changed)
    raises PayloadDecodeError naming the workflow, `where` and msgspec's path."""
    try:
        return from_json_value(value, type_)
    except msgspec.ValidationError as exc:
        name = getattr(type_, "__name__", None) or repr(type_)
        raise PayloadDecodeError(workflow_id, where, name, str(exc)) from exc


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
