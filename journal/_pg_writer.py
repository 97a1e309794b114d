"""PostgresJournal's write path (the `Writer` protocol): appends are
group-committed (`_groupcommit`, `_pgwrite`); a command is accepted by one insert."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from ._groupcommit import GroupCommitter, GroupStatistics
from ._pg_shared import WORKFLOW_COLUMNS, PostgresBase, workflow_row
from ._pgconn import boundary
from ._pgwrite import append_batches, workflow_args
from .base import Writer
from .records import Batch, NewWorkflow, WorkflowRow

__all__ = ["PostgresWriter"]

_CREATE_WORKFLOW: Final = (
    """
INSERT INTO workflows (id, name, actor_key, partition, input, idempotency_key,
                       request_hash, parent_id, trace_id, app_version)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT DO NOTHING
RETURNING"""
    + WORKFLOW_COLUMNS
)
# An expired key: the workflow that holds it lets go (never the one being
# created: a create with the same id again must write nothing). The row lock
# this takes is what serializes two creates racing with one expired key: the
# second one's update waits, then finds the key gone from the old row, and its
# insert finds the first one's new row.
_FREE_EXPIRED_KEY: Final = """
UPDATE workflows SET idempotency_key = NULL
WHERE idempotency_key = $1 AND created_at < $2 AND id <> $3
"""
# The row that made a create a no-op: the same id first, as MemoryJournal does.
_CONFLICTING_WORKFLOW: Final = (
    "SELECT"
    + WORKFLOW_COLUMNS
    + """FROM workflows WHERE id = $1 OR idempotency_key = $2
ORDER BY id = $1 DESC LIMIT 1"""
)


class PostgresWriter(PostgresBase, Writer):
    """The write path on PostgreSQL: the group committer calls `_append_group`."""

    _committer: GroupCommitter

    @property
    def group_statistics(self) -> GroupStatistics:
        """Group-commit counters: batches appended, commits, the largest group."""
        return self._committer.statistics

    async def append(self, batch: Batch) -> None:
        """Group-committed: concurrent appends share one transaction (_groupcommit)."""
        await self._committer.append(batch)

    @boundary
    async def _append_group(self, batches: Sequence[Batch]) -> None:
        await self._pool.run(lambda conn: append_batches(conn, batches))

    @boundary
    async def create_workflow(
        self, workflow: NewWorkflow, *, key_expired_before: datetime | None = None
    ) -> tuple[WorkflowRow, bool]:
        args = workflow_args(workflow)
        key = workflow.idempotency_key
        while True:
            if key is not None and key_expired_before is not None:
                async with self._pool.acquire() as conn, conn.transaction():
                    await conn.execute(_FREE_EXPIRED_KEY, key, key_expired_before, workflow.id)
                    row = await conn.fetchrow(_CREATE_WORKFLOW, *args)
            else:
                row = await self._pool.fetchrow(_CREATE_WORKFLOW, *args)
            if row is not None:
                return workflow_row(row), True
            # ON CONFLICT DO NOTHING waited for the conflicting insert to commit,
            # so the row is visible now; a loop only if that row's transaction
            # rolled back in between.
            existing = await self._pool.fetchrow(
                _CONFLICTING_WORKFLOW, workflow.id, workflow.idempotency_key
            )
            if existing is not None:
                return workflow_row(existing), False
