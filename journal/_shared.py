"""Shared statements: concurrent callers of one kind take turns sending ONE statement
for all of them. The core of group commit (`_groupcommit`) and group reads
(`_groupread`).

A caller queues a slot. If no statement of its kind is out, or fewer than
`max_in_flight` are and at least as many slots queue as the last statement sent
carried, it takes the queued slots (up to `max_group`: its own, and others' queued
before it) and sends them in one statement. Everyone else sleeps on their own slot.
(Why the second condition: a statement's fixed cost, its round trip, commit and
fsync, is paid again by every statement sent beside one in flight. Sent as soon as
one slot queued, those were small: at 64 workflows in flight, groups of 15 instead
of 21 and a quarter more PostgreSQL CPU per workflow. A queue smaller than the
statement in flight waits for it, at most one statement's time.)
A sender that finishes answers the slots it sent and wakes the oldest slot still
queued, whose owner sends next: one wake-up per waiter, never the whole queue. A
slot only ever goes in a statement formed after it was queued.

Every slot gets an answer, whatever happens to its statement: one that finds the
database unreachable, or has no answer within `timeout` (a hung server), fails
every slot in it with JournalUnavailableError. Any other failure of a statement of
several parts (a unique key, a stale lease, a key the server refuses) is retried
part by part, so that only the part that caused it fails; once the database turns
out unreachable meanwhile, the rest get that answer without trying (each try would
wait out `timeout`).

A caller cancelled while queued leaves the queue (its part is not sent; if it was
woken to send, the turn passes on). A statement already sent is finished for the
others in it (shielded, bounded by `timeout`).
"""

from __future__ import annotations

import abc
import asyncio
import collections
from typing import ClassVar, Generic, TypeVar

import anyio

from .errors import JournalUnavailableError

__all__ = ["SharedStatements", "Slot"]


class Slot:
    """One caller's place in the queue; subclasses carry its part and answer."""

    __slots__ = ("done", "error", "taken", "wake")

    def __init__(self) -> None:
        self.done = False
        self.taken = False  # in a statement being sent
        self.error: BaseException | None = None
        # Made only when its owner sleeps: most slots are sent by their own owner,
        # or answered before it looks again. A bare asyncio future, not an
        # anyio.Event: the journal runs on asyncio anyway (asyncpg), and the Event's
        # backend lookup and wrappers cost more than the rest of a wake-up (7% of
        # the server's CPU per invite, with a wake-up per append and queued read).
        # Cancelling its waiter (an anyio scope cancels the task) cancels it.
        self.wake: asyncio.Future[None] | None = None

    def ring(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    def answered(self, error: BaseException | None = None) -> None:
        self.error = error
        self.done = True
        self.ring()


S = TypeVar("S", bound=Slot)
R = TypeVar("R")


class SharedStatements(abc.ABC, Generic[S, R]):
    """Takes turns at statements shared by slots of type S; a statement returns R."""

    # Whether a statement that carries only its sender's own slot is cancelled with
    # its sender (nobody else waits on it) rather than finished.
    lone_sender_cancels: ClassVar[bool] = False

    def __init__(self, *, max_group: int, max_in_flight: int, timeout: float) -> None:
        self._max_group = max_group
        self._max_in_flight = max_in_flight
        self._timeout = timeout
        self._pending: collections.deque[S] = collections.deque()
        self._in_flight = 0
        self._last_group = 0  # slots in the statement sent last

    # -- what a kind of statement defines ---------------------------------------------

    @abc.abstractmethod
    def _count(self, group: list[S]) -> None:
        """Statistics: a statement of `group` is being sent."""

    @abc.abstractmethod
    async def _statement(self, group: list[S]) -> R:
        """Send one statement for `group`, raising the journal's errors."""

    @abc.abstractmethod
    def _answer(self, group: list[S], result: R) -> None:
        """Hand each slot of `group` its answer from `result` (`Slot.answered`)."""

    @abc.abstractmethod
    def _parts(self, group: list[S]) -> list[list[S]]:
        """`group` split into the parts to send alone after a failure."""

    @abc.abstractmethod
    def _no_answer(self, group: list[S]) -> str:
        """What to say when a statement of `group` had no answer within the timeout."""

    # -- taking turns ----------------------------------------------------------------

    async def _take_turn(self, slot: S) -> None:
        """Queue `slot`; return once it is answered (its `error` may be set)."""
        self._pending.append(slot)
        try:
            while not slot.done:
                if not slot.taken and self._may_send():
                    await self._send_next_group(slot)
                else:
                    # No await between the look above and this wait: a ring
                    # cannot fall between them.
                    slot.wake = asyncio.get_running_loop().create_future()
                    await slot.wake
                    slot.wake = None
        finally:
            if not slot.done:
                # Cancelled. Still queued: leave, or the next sender's turn would go
                # to this slot, whose owner is gone, and the slots behind it would
                # wait for a newcomer. We may also have been woken to send: pass it on.
                if not slot.taken:
                    self._pending.remove(slot)
                self._wake_next_sender()

    async def _send_next_group(self, own: S) -> None:
        self._in_flight += 1
        try:
            group: list[S] = []
            while self._pending and len(group) < self._max_group:
                slot = self._pending.popleft()
                slot.taken = True
                group.append(slot)
            self._last_group = len(group)
            lone = len(group) == 1 and group[0] is own
            with anyio.CancelScope(shield=not (lone and self.lone_sender_cancels)):
                await self._send(group)
        finally:
            self._in_flight -= 1
            self._wake_next_sender()

    def _may_send(self) -> bool:
        """Whether the queue may go out now (the module's docstring says why)."""
        return self._in_flight == 0 or (
            self._in_flight < self._max_in_flight and len(self._pending) >= self._last_group)

    def _wake_next_sender(self) -> None:
        if self._pending and self._may_send():
            self._pending[0].ring()

    async def _send(self, group: list[S]) -> None:
        self._count(group)
        try:
            with anyio.fail_after(self._timeout):
                result = await self._statement(group)
        except TimeoutError:
            self._fail(group, JournalUnavailableError(self._no_answer(group)))
            return
        except JournalUnavailableError as exc:
            self._fail(group, exc)  # not done, or not known to be: callers may retry
            return
        except Exception as exc:  # noqa: BLE001 - one part's fault: find which
            parts = self._parts(group)
            if len(parts) == 1:
                self._fail(group, exc)
            else:
                await self._send_parts(group, parts)
            return
        self._answer(group, result)

    async def _send_parts(self, group: list[S], parts: list[list[S]]) -> None:
        """Each part of a failed group in a statement of its own."""
        for part in parts:
            await self._send(part)
            error = part[0].error
            if isinstance(error, JournalUnavailableError):
                self._fail([slot for slot in group if not slot.done], error)
                return

    @staticmethod
    def _fail(group: list[S], error: BaseException) -> None:
        for slot in group:
            slot.answered(error)
