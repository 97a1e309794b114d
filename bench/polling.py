"""`eventually`: poll a probe until it finds what it looks for, with a deadline.

The one polling helper of the tests and the benchmarks (a process's readiness, a
workflow's status, a journal that answers again)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

import anyio

__all__ = ["eventually"]

T = TypeVar("T")


@overload
async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, within: float = 5.0, what: str | None = None,
    interval: float = 0.02,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T | None], *, within: float = 5.0, what: str | None = None,
    interval: float = 0.02,
) -> T: ...


async def eventually(
    probe: Callable[[], object], *, within: float = 5.0, what: str | None = None,
    interval: float = 0.02,
) -> object:
    """Call `probe` (sync or async) every `interval` s until it returns something
    other than None or False, and return that. Raises TimeoutError naming `what`
    after `within` s (a probe still running then is cancelled). Can be cancelled."""
    with anyio.move_on_after(within):
        while True:
            found = probe()
            if inspect.isawaitable(found):
                found = await found
            if found is not None and found is not False:
                return found
            await anyio.sleep(interval)
    shown = what or getattr(probe, "__qualname__", repr(probe))
    raise TimeoutError(f"timed out after {within:g} s waiting for {shown}")
