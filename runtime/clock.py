"""The runtime's clock and id source, injected so that tests control time.

Everything in the runtime that asks "what time is it" asks a `Clock`: the
workflow context (journaled `now`, step timestamps, timer deadlines), the timer
service, passivation, and lease bookkeeping. Waiting itself is the event loop's
(`anyio.sleep`); a test that runs on a virtual-time loop gives the runtime a
`LoopClock` and the two agree.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

import anyio

__all__ = ["Clock", "LoopClock", "SystemClock", "SYSTEM_CLOCK", "new_id"]


class Clock(Protocol):
    """Wall time (timezone-aware UTC) and a monotonic reading in seconds."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The machine's clocks: what a server uses."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK: Final = SystemClock()


class LoopClock:
    """Time as the running event loop counts it, from `epoch`: on a virtual-time
    loop (the simulation) wall time, monotonic time and sleeps all agree."""

    def __init__(self, epoch: datetime) -> None:
        self._epoch = epoch

    def now(self) -> datetime:
        return self._epoch + timedelta(seconds=anyio.current_time())

    def monotonic(self) -> float:
        return anyio.current_time()


def new_id() -> str:
    """A fresh random id (workflow ids, trace ids)."""
    return uuid.uuid4().hex
