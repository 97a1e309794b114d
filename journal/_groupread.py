"""Group reads: concurrent point reads of one kind share a statement.

A read that finds fewer than `max_in_flight` statements of its kind in flight is
sent at once (with any reads queued before it): a lone read waits for nobody.
Reads that arrive while `max_in_flight` statements are out queue up; when one
returns, the oldest queued read's owner is woken and sends up to `max_group`
queued reads in ONE statement, whose answer is handed out by key: each caller
gets its own value, or None where the statement found nothing for its key.

Freshness: a read only ever joins a statement formed AFTER it was called, never
one already in flight. In READ COMMITTED each statement takes its snapshot when
it starts, so a statement in flight may predate a commit the caller saw return
just before it read (its own write, or a signal it consumed); joining it would
hand the caller a view older than its own past. Reads leave the queue only when
the statement they go in is about to be sent, so this holds by construction.

Every read gets an answer: a statement that finds the database unreachable, or
has none within `read_timeout` (a hung server), fails every read in it with
JournalUnavailableError. Any other failure of a group of several keys (a key the
server refuses) is retried one key at a time, so only the read that caused it
fails, as it would have alone. A caller cancelled while queued just leaves the
queue; a statement already sent is finished for the others in it (shielded,
bounded by `read_timeout`), unless its sender's read is alone in it.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Final, Generic, TypeVar

import anyio

from .errors import JournalUnavailableError

__all__ = ["GroupReader", "ReadStatistics"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# The journal passes its own bound, derived from its database timeout.
_READ_TIMEOUT: Final = 30.0


class _Slot(Generic[K, V]):
    __slots__ = ("done", "error", "key", "taken", "value", "wake")

    def __init__(self, key: K) -> None:
        self.key = key
        self.done = False
        self.taken = False
        self.value: V | None = None
        self.error: BaseException | None = None
        # Made only when its owner sleeps: a lone read never needs one.
        self.wake: anyio.Event | None = None

    def ring(self) -> None:
        if self.wake is not None:
            self.wake.set()


class ReadStatistics:
    """Counters of one kind of read: statements sent, reads answered by them, and
    the most reads one statement carried."""

    __slots__ = ("largest", "reads", "statements")

    def __init__(self) -> None:
        self.statements = 0
        self.reads = 0
        self.largest = 0


class GroupReader(Generic[K, V]):
    """Shares statements between concurrent point reads of one kind.
    `read_group(keys)` reads distinct keys in one statement and returns what it
    found by key (a key it found nothing for is left out), raising the journal's
    errors; a call that takes longer than `read_timeout` seconds is cancelled and
    counts as the database being unreachable."""

    def __init__(
        self,
        read_group: Callable[[Sequence[K]], Awaitable[Mapping[K, V]]],
        *,
        max_group: int = 256,
        max_in_flight: int = 1,
        read_timeout: float = _READ_TIMEOUT,
    ) -> None:
        self._read_group = read_group
        self._max_group = max_group
        self._max_in_flight = max_in_flight
        self._read_timeout = read_timeout
        self._pending: collections.deque[_Slot[K, V]] = collections.deque()
        self._in_flight = 0
        self.statistics = ReadStatistics()

    async def read(self, key: K) -> V | None:
        """What a statement sent after this call found for `key`, or None.
        Cancellable; raises what the statement raised for this key."""
        slot: _Slot[K, V] = _Slot(key)
        self._pending.append(slot)
        try:
            while not slot.done:
                if not slot.taken and self._in_flight < self._max_in_flight:
                    await self._send_next_group(slot)
                else:
                    # No await between the look above and this wait: a ring
                    # cannot fall between them.
                    slot.wake = anyio.Event()
                    await slot.wake.wait()
                    slot.wake = None
        finally:
            if not slot.done:
                self._leave(slot)
        if slot.error is not None:
            raise slot.error
        return slot.value

    def _leave(self, slot: _Slot[K, V]) -> None:
        """A cancelled caller's slot: out of the queue if still in it, and the turn
        to send passed on (it may have been woken to send)."""
        if not slot.taken:
            self._pending.remove(slot)
        self._wake_next_sender()

    async def _send_next_group(self, own: _Slot[K, V]) -> None:
        self._in_flight += 1
        try:
            group: list[_Slot[K, V]] = []
            while self._pending and len(group) < self._max_group:
                slot = self._pending.popleft()
                slot.taken = True
                group.append(slot)
            # Others wait on this statement: it is finished even if its sender is
            # cancelled. A lone read is not: its caller leaves at once, as before.
            with anyio.CancelScope(shield=not (len(group) == 1 and group[0] is own)):
                await self._answer(group)
        finally:
            self._in_flight -= 1
            self._wake_next_sender()

    def _wake_next_sender(self) -> None:
        if self._pending and self._in_flight < self._max_in_flight:
            self._pending[0].ring()

    async def _answer(self, group: list[_Slot[K, V]]) -> None:
        keys = list(dict.fromkeys(slot.key for slot in group))  # distinct, in order
        stats = self.statistics
        stats.statements += 1
        stats.reads += len(group)
        stats.largest = max(stats.largest, len(group))
        try:
            with anyio.fail_after(self._read_timeout):
                found = await self._read_group(keys)
        except TimeoutError:
            self._fail(group, JournalUnavailableError(
                f"a group read of {len(keys)} keys had no answer within "
                f"{self._read_timeout:g} s"))
            return
        except JournalUnavailableError as exc:
            self._fail(group, exc)
            return
        except Exception as exc:  # noqa: BLE001 - one key's fault: find which
            if len(keys) == 1:
                self._fail(group, exc)
            else:
                await self._answer_alone(group)
            return
        for slot in group:
            slot.value = found.get(slot.key)
            slot.done = True
            slot.ring()

    async def _answer_alone(self, group: list[_Slot[K, V]]) -> None:
        """Each key of a failed group in a statement of its own. Once the database
        turns out unreachable, the rest get that answer without trying."""
        by_key: dict[K, list[_Slot[K, V]]] = {}
        for slot in group:
            by_key.setdefault(slot.key, []).append(slot)
        for slots in by_key.values():
            await self._answer(slots)
            if isinstance(slots[0].error, JournalUnavailableError):
                self._fail([slot for slot in group if not slot.done], slots[0].error)
                return

    @staticmethod
    def _fail(group: list[_Slot[K, V]], error: BaseException) -> None:
        for slot in group:
            slot.error = error
            slot.done = True
            slot.ring()
