"""Group commit: appends from every actor share transactions.

Whoever appends while fewer than `max_writers` groups are being written becomes
a writer: it takes up to `max_batch` pending batches (its own among them, or
others' queued before it) and writes them in ONE statement and one commit.
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

import collections
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import anyio

from .errors import JournalUnavailableError
from .records import Batch

__all__ = ["GroupCommitter", "GroupStatistics"]

# A group already being written is finished even if its writer is cancelled, so
# that the other batches in it get their answer; but never for longer than this
# (the journal passes its own bound, derived from its database timeout).
_WRITE_TIMEOUT: Final = 30.0


class _Slot:
    __slots__ = ("batch", "done", "error", "taken", "wake")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.done = False
        self.taken = False
        self.error: BaseException | None = None
        # Made only when its owner sleeps: most slots are written by their own
        # owner, or settled before it looks again (an anyio.Event costs a backend
        # lookup; this saved one or two per append).
        self.wake: anyio.Event | None = None

    def ring(self) -> None:
        if self.wake is not None:
            self.wake.set()


class GroupStatistics:
    __slots__ = ("groups", "batches", "largest")

    def __init__(self) -> None:
        self.groups = 0
        self.batches = 0
        self.largest = 0


class GroupCommitter:
    """Shares transactions between concurrent appends. `write_group(batches)`
    writes batches in one transaction, raising the journal's errors; a call that
    takes longer than `write_timeout` seconds is cancelled and counts as the
    database being unreachable."""

    def __init__(
        self,
        write_group: Callable[[Sequence[Batch]], Awaitable[None]],
        *,
        max_batch: int = 512,
        max_writers: int = 2,
        write_timeout: float = _WRITE_TIMEOUT,
    ) -> None:
        self._write_group = write_group
        self._max_batch = max_batch
        self._max_writers = max_writers
        self._write_timeout = write_timeout
        self._pending: collections.deque[_Slot] = collections.deque()
        self._writers = 0
        self.statistics = GroupStatistics()

    async def append(self, batch: Batch) -> None:
        """Write `batch` in some group; return once that group committed.
        Cancellable while waiting: a cancelled batch is written whole if a writer
        had taken it, else not at all."""
        slot = _Slot(batch)
        self._pending.append(slot)
        try:
            while not slot.done:
                if not slot.taken and self._writers < self._max_writers:
                    await self._write_next_group()
                else:
                    # No await between the look above and this wait: a ring
                    # cannot fall between them.
                    slot.wake = anyio.Event()
                    await slot.wake.wait()
                    slot.wake = None
        finally:
            if not slot.done:
                # Cancelled. Not yet taken by a writer: leave the queue (the batch is
                # not written), or the next writer's turn would go to this slot,
                # whose owner is gone, and the appends behind it would wait for a
                # newcomer. We may also have been woken to write: pass it on.
                if not slot.taken:
                    self._pending.remove(slot)
                self._wake_next_writer()
        if slot.error is not None:
            raise slot.error

    async def _write_next_group(self) -> None:
        self._writers += 1
        try:
            group: list[_Slot] = []
            while self._pending and len(group) < self._max_batch:
                slot = self._pending.popleft()
                slot.taken = True
                group.append(slot)
            with anyio.CancelScope(shield=True):
                await self._write(group)
        finally:
            self._writers -= 1
            self._wake_next_writer()

    def _wake_next_writer(self) -> None:
        if self._pending and self._writers < self._max_writers:
            self._pending[0].ring()

    async def _write(self, group: list[_Slot]) -> None:
        stats = self.statistics
        stats.groups += 1
        stats.batches += len(group)
        stats.largest = max(stats.largest, len(group))
        try:
            with anyio.fail_after(self._write_timeout):
                await self._write_group([slot.batch for slot in group])
        except TimeoutError:
            self._settle(group, JournalUnavailableError(
                f"a group write of {len(group)} batches had no answer within "
                f"{self._write_timeout:g} s; it may have committed"))
            return
        except JournalUnavailableError as exc:
            self._settle(group, exc)  # not written, or not known to be: callers retry
            return
        except Exception as exc:  # noqa: BLE001 - one batch's fault: find which
            if len(group) == 1:
                self._settle(group, exc)
            else:
                await self._write_alone(group)
            return
        self._settle(group, None)

    async def _write_alone(self, group: list[_Slot]) -> None:
        """Each batch of a failed group in its own write. Once the database turns out
        unreachable, the rest get that answer without trying: trying each would
        wait out `write_timeout` once per batch."""
        for i, slot in enumerate(group):
            await self._write([slot])
            if isinstance(slot.error, JournalUnavailableError):
                self._settle(group[i + 1:], slot.error)
                return

    @staticmethod
    def _settle(group: list[_Slot], error: BaseException | None) -> None:
        for slot in group:
            slot.done = True
            slot.error = error
            slot.ring()
