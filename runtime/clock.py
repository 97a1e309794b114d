"""The runtime's clock and id source, injected so that tests control time.

Everything in the runtime that asks "what time is it" asks a `Clock`: the
workflow context (journaled `now`, step timestamps, timer deadlines), the timer
service, passivation, and lease bookkeeping. Waiting itself is the event loop's
(`anyio.sleep`); a test that runs on a virtual-time loop gives the runtime a
`LoopClock` and the two agree.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

import anyio
import anyio.lowlevel

__all__ = ["Clock", "LoopClock", "SystemClock", "SYSTEM_CLOCK", "VirtualClock", "new_id"]


class Clock(Protocol):
    """Wall time (timezone-aware UTC) and a monotonic reading in seconds.

    `on_jump(callback)`: call `callback()` whenever the clock jumps rather than
    runs (a test's VirtualClock.advance), so whoever sleeps until a moment on it
    (the timer service) looks again. Clocks that only run do nothing."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    def on_jump(self, callback: Callable[[], None]) -> None: ...


class SystemClock:
    """The machine's clocks: what a server uses."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def on_jump(self, callback: Callable[[], None]) -> None:
        """It never jumps."""


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

    def on_jump(self, callback: Callable[[], None]) -> None:
        """It runs with the loop: it never jumps."""


class VirtualClock:
    """A clock that stands still until a test moves it: `await clock.advance(days=7)`
    and every durable timer due by then fires at once (a week-long wait tested in
    milliseconds). Give the same clock to the journal when it is a MemoryJournal
    (`MemoryJournal(clock=clock.timestamp)`), as `runtime.testing` does, so rows
    and signals are stamped on it too."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)
        self._monotonic = 0.0
        self._jumped: list[Callable[[], None]] = []

    def now(self) -> datetime:
        return self._now

    def timestamp(self) -> float:
        """Seconds since the epoch, for a MemoryJournal's clock."""
        return self._now.timestamp()

    def monotonic(self) -> float:
        return self._monotonic

    def on_jump(self, callback: Callable[[], None]) -> None:
        self._jumped.append(callback)

    async def advance(self, seconds: float = 0.0, *, minutes: float = 0.0, hours: float = 0.0,
                      days: float = 0.0) -> None:
        """Move the clock forward; timers due by then fire. Returns after a few
        scheduling rounds, so what they woke has started; wait for its outcome
        (e.g. `runtime.wait_for_finish`) to know it has ended."""
        step = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        if step < timedelta(0):
            raise ValueError(f"a clock goes forward only; cannot advance by {step}")
        self._now += step
        self._monotonic += step.total_seconds()
        for callback in self._jumped:
            callback()
        for _ in range(_SETTLE_ROUNDS):
            await anyio.lowlevel.checkpoint()


# Scheduling rounds `advance` yields for: enough for the timer service to fire
# and the woken actors to start.
_SETTLE_ROUNDS: Final = 5


def new_id() -> str:
    """A fresh random id (workflow ids, trace ids): 32 hex digits, 128 random bits.
    The shape of `uuid4().hex` without building a UUID object (four per invite)."""
    return os.urandom(16).hex()
