"""Group commit: appends from every actor share transactions.

Whoever appends while no group is being written becomes a writer: it takes up to
`max_batch` pending batches (its own among them, or others' queued before it) and
writes them in ONE statement and one commit. Beside a group in flight, a second
writer (up to `max_writers`) starts only once as many batches are pending as the
last group carried: smaller groups each paid a commit for little (`_shared`).
Everyone else sleeps on their own slot. A writer that finishes wakes the slots it
wrote, and the oldest slot still pending, whose owner becomes the next writer:
one wake-up per waiter, never the whole queue. Nobody proceeds past a record
before the commit that holds it. If a group fails for any reason but an
unreachable database (a unique key, a stale lease, a bug), each batch of the
group is written again alone, so only the batches that caused it fail.

Every batch of a group gets an answer, whatever happens to the write: a group
that finds the database unreachable, or does not finish within `write_timeout`
(a hung server), fails EVERY batch in it with JournalUnavailableError. Its
outcome is then unknown (it may have committed); callers send the same batch
again, which the journal takes as a no-op if it had landed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from ._shared import SharedStatements, Slot
from .records import Batch

__all__ = ["GroupCommitter", "GroupStatistics"]

# A group already being written is finished even if its writer is cancelled, so
# that the other batches in it get their answer; but never for longer than this
# (the journal passes its own bound, derived from its database timeout).
_WRITE_TIMEOUT: Final = 30.0


class _Slot(Slot):
    __slots__ = ("batch",)

    def __init__(self, batch: Batch) -> None:
        super().__init__()
        self.batch = batch


class GroupStatistics:
    __slots__ = ("groups", "batches", "largest")

    def __init__(self) -> None:
        self.groups = 0
        self.batches = 0
        self.largest = 0


class GroupCommitter(SharedStatements[_Slot, None]):
    """Shares transactions between concurrent appends (the turns are taken as
    `_shared` says). `write_group(batches)` writes batches in one transaction,
    raising the journal's errors; a call that takes longer than `write_timeout`
    seconds is cancelled and counts as the database being unreachable."""

    def __init__(
        self,
        write_group: Callable[[Sequence[Batch]], Awaitable[None]],
        *,
        max_batch: int = 512,
        max_writers: int = 2,
        write_timeout: float = _WRITE_TIMEOUT,
    ) -> None:
        super().__init__(max_group=max_batch, max_in_flight=max_writers, timeout=write_timeout)
        self._write_group = write_group
        self.statistics = GroupStatistics()

    async def append(self, batch: Batch) -> None:
        """Write `batch` in some group; return once that group committed.
        Cancellable while waiting: a cancelled batch is written whole if a writer
        had taken it, else not at all."""
        slot = _Slot(batch)
        await self._take_turn(slot)
        if slot.error is not None:
            raise slot.error

    def _count(self, group: list[_Slot]) -> None:
        stats = self.statistics
        stats.groups += 1
        stats.batches += len(group)
        stats.largest = max(stats.largest, len(group))

    async def _statement(self, group: list[_Slot]) -> None:
        await self._write_group([slot.batch for slot in group])

    def _answer(self, group: list[_Slot], result: None) -> None:
        for slot in group:
            slot.answered()

    def _parts(self, group: list[_Slot]) -> list[list[_Slot]]:
        return [[slot] for slot in group]

    def _no_answer(self, group: list[_Slot]) -> str:
        return (f"a group write of {len(group)} batches had no answer within "
                f"{self._timeout:g} s; it may have committed")
