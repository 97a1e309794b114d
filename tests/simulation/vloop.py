"""An asyncio event loop on virtual time, with a seeded order of ready callbacks.

`run_virtual(main, rng)` runs `main()` under anyio on a `VirtualLoop`:

- `time()` is a virtual clock that starts at 0. When the loop would block in
  `select(timeout)` with nothing ready, the clock jumps forward by `timeout`
  instead of sleeping, so a simulated minute costs no wall time. Nothing in
  the simulation does real I/O (the journal is in memory), so nothing else can
  make the loop wake up.
- Each iteration runs the ready callbacks in an order drawn from `rng`, so one
  seed explores one legal interleaving, and the same seed always the same one.
- That order must not depend on the order the callbacks were scheduled in:
  anyio delivers a cancellation by walking a set of cancel scopes, which hash
  by address, so that order changes with the memory layout (what ran before
  in the process). The ready callbacks are first sorted by the task they
  belong to (its creation number), then shuffled. For the same reason, tasks
  hash by creation number (anyio keeps them in sets too).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import selectors
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar

import anyio

__all__ = ["SimulationStuck", "VirtualLoop", "run_virtual"]

T = TypeVar("T")


class SimulationStuck(RuntimeError):
    """The loop would wait forever, or spun too long without time moving on."""


class _JumpSelector(selectors.SelectSelector):
    """select() never waits: it moves the loop's clock to the next timer."""

    def __init__(self, loop: VirtualLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(
        self, timeout: float | None = None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            # No timer and nothing ready: every task waits for something that
            # nothing will ever do.
            raise SimulationStuck("deadlock: every task waits and no timer is set")
        self._loop.advance(timeout)
        return []


class _OrderedTask(asyncio.Task):  # type: ignore[type-arg]
    """A task whose hash is its creation number on its loop (see the module doc)."""

    __slots__ = ("_order",)

    def __init__(self, coro: Coroutine[Any, Any, Any], *, loop: VirtualLoop,
                 **kwargs: Any) -> None:
        self._order = next(loop.task_numbers)  # first: the init registers it in a set
        super().__init__(coro, loop=loop, **kwargs)

    def __hash__(self) -> int:
        return self._order


def _task_factory(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
    **kwargs: Any,
) -> asyncio.Task[Any]:
    assert isinstance(loop, VirtualLoop)
    return _OrderedTask(coro, loop=loop, **kwargs)  # type: ignore[arg-type]


def _task_number(handle: asyncio.Handle) -> int:
    """The creation number of the task a ready callback belongs to (it is the
    callback's owner or an argument: a step, a wake-up, a done-callback); -1
    for any other callback."""
    for owner in (getattr(handle._callback, "__self__", None), *handle._args):  # type: ignore[attr-defined]
        if isinstance(owner, _OrderedTask):
            return owner._order
    return -1


class VirtualLoop(asyncio.SelectorEventLoop):
    """See the module docstring. `max_steps` bounds the loop iterations (a
    livelock spins without moving the clock); past it, SimulationStuck."""

    def __init__(self, rng: random.Random, *, max_steps: int = 20_000_000) -> None:
        self._now = 0.0
        self._rng = rng
        self._steps = 0
        self._max_steps = max_steps
        self.task_numbers = itertools.count()
        super().__init__(_JumpSelector(self))
        self.set_task_factory(_task_factory)

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(seconds, 0.0)

    def _run_once(self) -> None:
        self._steps += 1
        if self._steps == self._max_steps:  # once: the cleanup that follows must run
            raise SimulationStuck(f"livelock: {self._max_steps} loop iterations, "
                                  f"virtual time {self._now:.3f} s")
        ready = self._ready  # type: ignore[attr-defined]
        if len(ready) > 1:
            handles = sorted(ready, key=_task_number)  # stable: ties keep their order
            self._rng.shuffle(handles)
            ready.clear()
            ready.extend(handles)
        super()._run_once()  # type: ignore[misc]


def run_virtual(main: Callable[[], Awaitable[T]], rng: random.Random) -> T:
    """Run `main()` with anyio on a fresh VirtualLoop; return what it returns."""
    return anyio.run(main, backend="asyncio",
                     backend_options={"loop_factory": lambda: VirtualLoop(rng)})
