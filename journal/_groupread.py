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

from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Final, Generic, TypeVar

from ._shared import SharedStatements, Slot

__all__ = ["GroupReader", "ReadStatistics"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# The journal passes its own bound, derived from its database timeout.
_READ_TIMEOUT: Final = 30.0


class _Slot(Slot, Generic[K, V]):
    __slots__ = ("key", "value")

    def __init__(self, key: K) -> None:
        super().__init__()
        self.key = key
        self.value: V | None = None


class ReadStatistics:
    """Counters of one kind of read: statements sent, reads answered by them, and
    the most reads one statement carried."""

    __slots__ = ("largest", "reads", "statements")

    def __init__(self) -> None:
        self.statements = 0
        self.reads = 0
        self.largest = 0


class GroupReader(SharedStatements[_Slot[K, V], Mapping[K, V]]):
    """Shares statements between concurrent point reads of one kind (the turns are
    taken as `_shared` says). `read_group(keys)` reads distinct keys in one
    statement and returns what it found by key (a key it found nothing for is left
    out), raising the journal's errors; a call that takes longer than
    `read_timeout` seconds is cancelled and counts as the database being
    unreachable."""

    # A lone read is cancelled with its caller, as a plain read would be.
    lone_sender_cancels = True

    def __init__(
        self,
        read_group: Callable[[Sequence[K]], Awaitable[Mapping[K, V]]],
        *,
        max_group: int = 256,
        max_in_flight: int = 1,
        read_timeout: float = _READ_TIMEOUT,
    ) -> None:
        super().__init__(max_group=max_group, max_in_flight=max_in_flight,
                         timeout=read_timeout)
        self._read_group = read_group
        self.statistics = ReadStatistics()

    async def read(self, key: K) -> V | None:
        """What a statement sent after this call found for `key`, or None.
        Cancellable; raises what the statement raised for this key."""
        slot: _Slot[K, V] = _Slot(key)
        await self._take_turn(slot)
        if slot.error is not None:
            raise slot.error
        return slot.value

    def _count(self, group: list[_Slot[K, V]]) -> None:
        stats = self.statistics
        stats.statements += 1
        stats.reads += len(group)
        stats.largest = max(stats.largest, len(group))

    async def _statement(self, group: list[_Slot[K, V]]) -> Mapping[K, V]:
        return await self._read_group(_distinct_keys(group))

    def _answer(self, group: list[_Slot[K, V]], result: Mapping[K, V]) -> None:
        for slot in group:
            slot.value = result.get(slot.key)
            slot.answered()

    def _parts(self, group: list[_Slot[K, V]]) -> list[list[_Slot[K, V]]]:
        by_key: dict[K, list[_Slot[K, V]]] = {}
        for slot in group:
            by_key.setdefault(slot.key, []).append(slot)
        return list(by_key.values())

    def _no_answer(self, group: list[_Slot[K, V]]) -> str:
        return (f"a group read of {len(_distinct_keys(group))} keys had no answer within "
                f"{self._timeout:g} s")


def _distinct_keys(group: list[_Slot[K, V]]) -> list[K]:
    return list(dict.fromkeys(slot.key for slot in group))  # in order
