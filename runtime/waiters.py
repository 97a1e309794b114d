"""Callers waiting for a workflow's events or its end, here or on another node."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import anyio

from journal import FINISHED_STATUSES, Journal, JournalUnavailableError, WorkflowRow

from .cluster import News

__all__ = ["Waiters"]

# Waiting on a workflow that another node runs: its owner sends news of its
# events and end, and the journal is polled meanwhile, every 20 ms at first,
# then less often, up to every 250 ms. One that runs here wakes its waiters from
# memory; they look again every half second, in case its partition moved.
_POLL_FIRST: Final = 0.02
_POLL_MAX: Final = 0.25
_RECHECK: Final = 0.5


class _Waiter:
    """Callers waiting for one thing (an event, an end); `value` is what came, once
    `came`. An `event` set without `came` is news from another node: look again.
    `bells`: the events of outcome waits (an event or an end, whichever comes
    first), rung along with `event`, so that such a wait needs no task per thing."""

    __slots__ = ("event", "value", "waiting", "came", "bells")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.value: Any = None
        self.waiting = 0
        self.came = False
        self.bells: list[_Bell] = []

    def ring(self) -> None:
        self.event.set()
        for bell in self.bells:
            bell.event.set()


class _Bell:
    """What one outcome wait sleeps on: rung by either of its two waiters."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = anyio.Event()

    async def nap(self, seconds: float) -> None:
        """Sleep until rung or for `seconds`; ready to be rung again afterwards."""
        with anyio.move_on_after(seconds):
            await self.event.wait()
        if self.event.is_set():
            self.event = anyio.Event()


_K = TypeVar("_K")


@contextmanager
def _waiting(table: dict[_K, _Waiter], key: _K) -> Iterator[_Waiter]:
    """Join (or create) the waiter for `key`; the last caller to leave removes it."""
    waiter = table.get(key)
    if waiter is None:
        waiter = table[key] = _Waiter()
    waiter.waiting += 1
    try:
        yield waiter
    finally:
        waiter.waiting -= 1
        if waiter.waiting == 0 and table.get(key) is waiter:
            del table[key]


@contextmanager
def _ringing(waiter: _Waiter, bell: _Bell) -> Iterator[None]:
    """Ring `bell` along with `waiter` while inside."""
    waiter.bells.append(bell)
    try:
        yield
    finally:
        waiter.bells.remove(bell)


@contextmanager
def _unless_first(first: bool) -> Iterator[None]:
    """A look at the journal while waiting: an outage fails the first one only."""
    try:
        yield
    except JournalUnavailableError:
        if first:
            raise


def _forget_news(waiter: _Waiter) -> None:
    """News set `waiter.event` (not `came`): the look it asked for is being made."""
    if waiter.event.is_set() and not waiter.came:
        waiter.event = anyio.Event()


def _wake(table: dict[_K, _Waiter], key: _K, value: Any) -> None:
    waiter = table.pop(key, None)
    if waiter is not None:
        waiter.value = value
        waiter.came = True
        waiter.ring()


class Waiters:
    """The callers waiting here for workflows' events and ends, woken from memory
    when the workflow runs here, else by news from its owner and by polling.

    `fresh`: the workflows accepted here whose first run has not ended, with the
    events they published so far (this records them): for them memory is the
    truth, and waiting for their events or end needs no read of the journal.
    `scheduled`: the workflows with a Run on this node. `tell_watchers(workflow_id,
    key)` sends news of an event (key None: the end) to the nodes that wait for it.
    """

    def __init__(
        self,
        journal: Journal,
        fresh: Mapping[str, dict[str, Any]],
        scheduled: Container[str],
        tell_watchers: Callable[[str, str | None], None],
    ) -> None:
        self._journal = journal
        self._fresh = fresh
        self._scheduled = scheduled
        self._tell_watchers = tell_watchers
        self._event_waiters: dict[tuple[str, str], _Waiter] = {}
        self._finish_waiters: dict[str, _Waiter] = {}
        self._finish_listeners: list[Callable[[WorkflowRow], None]] = []

    def __len__(self) -> int:
        """How many things (events, ends) are waited for."""
        return len(self._event_waiters) + len(self._finish_waiters)

    # -- waiting ------------------------------------------------------------------

    async def wait_for_event(self, workflow_id: str, key: str, timeout: float) -> tuple[bool, Any]:
        """(found, value) of the workflow's event `key`, waiting up to `timeout` s.

        One accepted here and not ended is answered from memory; one running on
        another node is polled for in the journal. Only the first look at the
        journal raises JournalUnavailableError; later ones count as "not yet"."""
        with _waiting(self._event_waiters, (workflow_id, key)) as waiter, \
                anyio.move_on_after(timeout):
            poll, first = _POLL_FIRST, True
            while True:
                fresh = self._fresh.get(workflow_id)
                if fresh is not None and key in fresh:
                    return True, fresh[key]
                if fresh is None:
                    with _unless_first(first):
                        found, value = await self._journal.get_workflow_event(workflow_id, key)
                        if found:
                            return True, value
                if await self._nap(workflow_id, waiter, poll):
                    return True, waiter.value
                poll, first = min(poll * 1.5, _POLL_MAX), False
        return False, None

    async def wait_for_finish(self, workflow_id: str, timeout: float) -> WorkflowRow | None:
        """The workflow's row once it has finished, or None after `timeout` s."""
        with _waiting(self._finish_waiters, workflow_id) as waiter, \
                anyio.move_on_after(timeout):
            poll, first = _POLL_FIRST, True
            while True:
                if workflow_id not in self._fresh:
                    with _unless_first(first):
                        row = await self._journal.get_workflow(workflow_id)
                        if row is not None and row.status in FINISHED_STATUSES:
                            return row
                if await self._nap(workflow_id, waiter, poll):
                    finished: WorkflowRow = waiter.value
                    return finished
                poll, first = min(poll * 1.5, _POLL_MAX), False
        return None

    async def wait_for_outcome(
        self, workflow_id: str, key: str, timeout: float
    ) -> tuple[bool, Any, WorkflowRow | None]:
        """Wait up to `timeout` s for the workflow's event `key`, or for its end
        (then it will never publish it): (found, value, the row if it ended without
        publishing). Cancellable."""
        # One loop watching both, on one bell that either rings: no task group and
        # no task per wait (they cost more than the rest of the wait together).
        ended: WorkflowRow | None = None
        bell = _Bell()
        with _waiting(self._event_waiters, (workflow_id, key)) as event, \
                _waiting(self._finish_waiters, workflow_id) as end, \
                _ringing(event, bell), _ringing(end, bell), anyio.move_on_after(timeout):
            poll, first = _POLL_FIRST, True
            while True:
                fresh = self._fresh.get(workflow_id)
                if fresh is not None and key in fresh:
                    return True, fresh[key], None
                if event.came:
                    return True, event.value, None
                if end.came:
                    ended = end.value
                    break
                if fresh is None:
                    with _unless_first(first):
                        found, value = await self._journal.get_workflow_event(workflow_id, key)
                        if found:
                            return True, value, None
                        row = await self._journal.get_workflow(workflow_id)
                        if row is not None and row.status in FINISHED_STATUSES:
                            ended = row
                            break
                here = workflow_id in self._fresh or workflow_id in self._scheduled
                await bell.nap(_RECHECK if here else poll)
                # News from another node was rung on the waiters' own events too.
                _forget_news(event)
                _forget_news(end)
                poll, first = min(poll * 1.5, _POLL_MAX), False
        # Once more: the event may have landed as the workflow ended or time ran out.
        found, value = await self._journal.get_workflow_event(workflow_id, key)
        return found, value, None if found else ended

    async def _nap(self, workflow_id: str, waiter: _Waiter, poll: float) -> bool:
        """Wait for `waiter` a while: `poll` s, or longer if the workflow runs here
        (memory wakes its waiters then). True if it came."""
        here = workflow_id in self._fresh or workflow_id in self._scheduled
        with anyio.move_on_after(_RECHECK if here else poll):
            await waiter.event.wait()
        if waiter.came:
            return True
        _forget_news(waiter)  # news: the next look at the journal finds it
        return False

    # -- what wakes them ----------------------------------------------------------

    def published(self, workflow_id: str, key: str, value: Any) -> None:
        """A workflow running here committed its event `key`."""
        fresh = self._fresh.get(workflow_id)
        if fresh is not None:
            fresh[key] = value
        _wake(self._event_waiters, (workflow_id, key), value)
        self._tell_watchers(workflow_id, key)

    def finished(self, row: WorkflowRow) -> None:
        """A workflow running here committed its end."""
        _wake(self._finish_waiters, row.id, row)
        self._tell_watchers(row.id, None)
        for listener in self._finish_listeners:
            listener(row)

    def news(self, news: News) -> None:
        """Waiters here on a workflow another node runs: look at the journal now."""
        if news.key is None:
            waiter = self._finish_waiters.get(news.workflow_id)
        else:
            waiter = self._event_waiters.get((news.workflow_id, news.key))
        if waiter is not None:
            waiter.ring()

    def add_finish_listener(self, listener: Callable[[WorkflowRow], None]) -> None:
        """Call `listener(row)` each time a workflow ends here, after its end is
        committed (tracing exports it). It must not block or raise."""
        self._finish_listeners.append(listener)
