"""The application version a runtime runs: named by the operator, or derived
from the code of its workflows.

A workflow records the version it started under and every step record the
version whose code wrote it, so a replay that disagrees with its journal (a
deploy changed the workflow) can say which deploy wrote what.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

__all__ = ["APP_VERSION_ENV", "app_version"]

# Set it to a release name (a git sha, "2026.11.30") to name the version; without
# it the version is a hash of the registered workflows' code.
APP_VERSION_ENV: Final = "RETINUE_APP_VERSION"
_HASH_LENGTH: Final = 12


def app_version(workflows: Mapping[str, Callable[..., Any]]) -> str:
    """RETINUE_APP_VERSION if set, else 12 hex digits of the sha256 of the
    registered workflows' source, by name. Not cancellable (no I/O but reading
    source files once)."""
    named = os.environ.get(APP_VERSION_ENV, "").strip()
    if named:
        return named
    digest = hashlib.sha256()
    for name in sorted(workflows):
        digest.update(name.encode())
        for source in _sources(workflows[name]):
            digest.update(source.encode())
    return digest.hexdigest()[:_HASH_LENGTH]


def _sources(fn: Callable[..., Any]) -> Iterator[str]:
    """The workflow's source and, for a bound method, its class's and every base
    class's: the helpers a workflow calls often live beside it (and a subclass
    that overrides one is another version)."""
    yield _source(fn)
    owner = getattr(fn, "__self__", None)
    if owner is not None:
        for cls in type(owner).__mro__:
            if cls is not object:
                yield _source(cls)


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        # Built in, or defined where no file is (a REPL): its name will do.
        return str(getattr(obj, "__qualname__", repr(obj)))
