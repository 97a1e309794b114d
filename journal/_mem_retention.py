"""MemoryJournal's retention (the `Retention` protocol): the same rules as
`_pg_retention`, under the state's lock."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import msgspec

from ._mem_state import MemoryState
from .base import Retention
from .records import FINISHED_STATUSES, WorkflowRow

__all__ = ["MemoryRetention"]


class MemoryRetention(MemoryState, Retention):
    """Retention in memory."""

    async def prune_finished(
        self, finished_before: datetime, *, leases: Mapping[int, int] | None = None,
        limit: int = 500,
    ) -> int:
        _check_limit(limit)
        async with self._lock:
            chosen = [row for row in self._workflows.values()
                      if self._within(row, leases) and _prunable(row, finished_before)][:limit]
            gone = {row.id for row in chosen}
            for workflow_id in gone:
                self._steps.pop(workflow_id, None)
            for signal_id in [s.id for s in self._signals.values() if s.workflow_id in gone]:
                del self._signals[signal_id]
            for key in [key for key in self._workflow_events if key[0] in gone]:
                del self._workflow_events[key]
            now = self._now()
            for row in chosen:
                # updated_at stays: it is when the workflow finished.
                self._workflows[row.id] = msgspec.structs.replace(row, pruned_at=now)
            return len(chosen)

    async def expire_idempotency_keys(
        self, issued_before: datetime, *, leases: Mapping[int, int] | None = None,
        limit: int = 500,
    ) -> int:
        _check_limit(limit)
        async with self._lock:
            chosen = [row for row in self._workflows.values()
                      if row.idempotency_key is not None and row.created_at < issued_before
                      and self._within(row, leases)][:limit]
            for row in chosen:
                self._free_key(row)
            return len(chosen)

    def _within(self, row: WorkflowRow, leases: Mapping[int, int] | None) -> bool:
        """The row's partition is held at the epoch given (any, without leases)."""
        if leases is None:
            return True
        epoch = leases.get(row.partition)
        return epoch is not None and self._leases[row.partition].epoch == epoch


def _prunable(row: WorkflowRow, finished_before: datetime) -> bool:
    return (row.status in FINISHED_STATUSES and row.pruned_at is None
            and row.idempotency_key is None and row.updated_at < finished_before)


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
