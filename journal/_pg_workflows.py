"""PostgresJournal's workflows, steps, signals and workflow events, and the
operator's actions on them (the `Workflows` protocol)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, Final

from ._groupread import GroupReader
from ._pg_shared import UNFINISHED, WORKFLOW_COLUMNS, PostgresBase, optional, workflow_row
from ._pgconn import Conn, boundary
from .base import WaitingStep, Workflows
from .errors import InvalidForkError, InvalidTransitionError, WorkflowNotFoundError
from .records import (
    FINISHED_STATUSES,
    FORKABLE_STATUSES,
    PARKED,
    Signal,
    StepRecord,
    WorkflowPage,
    WorkflowRow,
)

__all__ = ["PostgresWorkflows"]

# An operator's retry runs a failed workflow again from its failed step, a
# parked one again with the code deployed now.
_RETRYABLE: Final = frozenset({"failed", PARKED})

_STEP_COLUMNS: Final = """
    workflow_id, seq, name, kind, status, attempt, input, output, error,
    started_at, finished_at, fire_at, history, run_id, app_version
"""
_GET_WORKFLOW: Final = "SELECT" + WORKFLOW_COLUMNS + "FROM workflows WHERE id = $1"
_LIST_WORKFLOWS: Final = (
    "SELECT"
    + WORKFLOW_COLUMNS
    + """FROM workflows
WHERE ($1::text IS NULL OR status = $1)
  AND ($2::text IS NULL OR actor_key = $2)
  AND ($3::text IS NULL OR name = $3)
  AND ($4::bigint IS NULL OR position < $4)
  AND ($6::timestamptz IS NULL OR created_at >= $6)
  AND ($7::timestamptz IS NULL OR created_at < $7)
ORDER BY position DESC
LIMIT $5"""
)
_COUNT_BY_STATUS: Final = "SELECT status, count(*) AS n FROM workflows GROUP BY status"
_COUNT_PARKED: Final = (
    "SELECT name, count(*) AS n FROM workflows WHERE status = 'parked' GROUP BY name"
)
_CHILDREN: Final = (
    "SELECT" + WORKFLOW_COLUMNS + "FROM workflows WHERE parent_id = $1 ORDER BY position"
)
_UNFINISHED_WORKFLOWS: Final = (
    "SELECT"
    + WORKFLOW_COLUMNS
    + "FROM workflows WHERE "
    + UNFINISHED
    + " AND ($1::integer[] IS NULL OR partition = ANY($1))"
    + " AND ($2 OR status <> 'waiting') ORDER BY position"
)
_LOAD_STEPS: Final = "SELECT" + _STEP_COLUMNS + "FROM steps WHERE workflow_id = $1 ORDER BY seq"
_LOAD_HISTORIES: Final = (
    "SELECT" + _STEP_COLUMNS + "FROM steps WHERE workflow_id = ANY($1::text[]) "
    "ORDER BY workflow_id, seq"
)
_WAITING_STEPS: Final = """
SELECT s.workflow_id, s.seq, w.actor_key, s.fire_at
FROM steps s JOIN workflows w ON w.id = s.workflow_id
WHERE ((s.kind = 'wait' AND s.status = 'started') OR s.status = 'backoff')
  AND s.fire_at IS NOT NULL
  AND ($1::integer[] IS NULL OR w.partition = ANY($1))
ORDER BY s.fire_at, s.workflow_id, s.seq
"""
# Pending, cancel-requested, or signalled since $2: what a lost wake-up would hide.
_RUNNABLE_WORKFLOWS: Final = (
    "SELECT"
    + WORKFLOW_COLUMNS
    + "FROM workflows w WHERE w."
    + UNFINISHED
    + """ AND w.partition = ANY($1::integer[])
  AND (w.status = 'pending' OR w.cancel_requested
       OR EXISTS (SELECT 1 FROM signals s
                  WHERE s.workflow_id = w.id AND NOT s.consumed AND s.id > $2))
ORDER BY w.position"""
)
_NEWEST_SIGNAL: Final = "SELECT coalesce(max(id), 0) FROM signals"

# A pruned workflow answers "pruned": its steps are gone, so it can never resume.
_LOCK_WORKFLOW_STATUS: Final = """
SELECT CASE WHEN pruned_at IS NULL THEN status ELSE 'pruned' END
FROM workflows WHERE id = $1 FOR UPDATE
"""
# Descends only through unfinished workflows, as MemoryJournal does: a finished
# child's own children are left alone.
_REQUEST_CANCEL: Final = (
    """
WITH RECURSIVE tree(id) AS (
    SELECT id FROM workflows WHERE id = $1
    UNION
    SELECT w.id FROM workflows w JOIN tree t ON w.parent_id = t.id
    WHERE w."""
    + UNFINISHED
    + """
)
UPDATE workflows SET cancel_requested = true, updated_at = now()
WHERE id IN (SELECT id FROM tree)
RETURNING id
"""
)
_RETRY_STEPS: Final = (
    "UPDATE steps SET status = 'retrying' WHERE workflow_id = $1 AND status = 'failed'"
)
_RETRY_WORKFLOW: Final = (
    "UPDATE workflows SET status = 'pending', error = NULL, parked = NULL, updated_at = now() "
    "WHERE id = $1"
)

_BY_IDEMPOTENCY_KEY: Final = (
    "SELECT" + WORKFLOW_COLUMNS + "FROM workflows WHERE idempotency_key = $1"
)
# A pruned workflow is still finished, so it may be forked, but its steps are
# gone: only from seq 1 (a fork from later would silently run them all again).
_LOCK_FOR_FORK: Final = "SELECT status, pruned_at FROM workflows WHERE id = $1 FOR UPDATE"
_LAST_SEQ: Final = "SELECT coalesce(max(seq), 0) FROM steps WHERE workflow_id = $1"
# ON CONFLICT: a concurrent fork with the same idempotency key won (its row is
# read after); the id is fresh, so it cannot collide.
_INSERT_FORK: Final = (
    """
INSERT INTO workflows (id, name, actor_key, partition, input, idempotency_key,
                       request_hash, trace_id, forked_from, forked_at_seq)
SELECT $2, name, actor_key, partition, input, $3, $4, $5, id, $6
FROM workflows WHERE id = $1
ON CONFLICT DO NOTHING
RETURNING"""
    + WORKFLOW_COLUMNS
)
# A copied step keeps its record (output, times, attempts) but not the run or
# epoch that wrote it: no run of the fork has written anything yet.
_COPY_STEPS: Final = """
INSERT INTO steps (workflow_id, seq, partition, name, kind, status, attempt, input, output,
                   error, started_at, finished_at, fire_at, history)
SELECT $2, seq, partition, name, kind, status, attempt, input, output,
       error, started_at, finished_at, fire_at, history
FROM steps WHERE workflow_id = $1 AND seq < $3 AND status = 'completed'
"""
_COPY_EVENTS: Final = """
INSERT INTO workflow_events (workflow_id, key, value)
SELECT $2, name, output FROM steps
WHERE workflow_id = $1 AND seq < $3 AND status = 'completed' AND kind = 'event'
ON CONFLICT DO NOTHING
"""
_FORKS: Final = (
    "SELECT" + WORKFLOW_COLUMNS + "FROM workflows WHERE forked_from = $1 ORDER BY position"
)

_SIGNAL_COLUMNS: Final = " id, workflow_id, name, payload, consumed, created_at "
_SEND_SIGNAL: Final = (
    """
INSERT INTO signals (workflow_id, name, payload)
SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM workflows WHERE id = $1)
RETURNING"""
    + _SIGNAL_COLUMNS
)
# The oldest unconsumed signal of each (workflow, name) pair, for many pairs in one
# statement (_groupread): a row per pair that has one, each found as alone (the
# first entry of signals_unconsumed).
_NEXT_SIGNALS: Final = """
SELECT s.id, s.workflow_id, s.name, s.payload, s.consumed, s.created_at
FROM unnest($1::text[], $2::text[]) AS k(workflow_id, name)
CROSS JOIN LATERAL (
    SELECT""" + _SIGNAL_COLUMNS + """FROM signals
    WHERE workflow_id = k.workflow_id AND name = k.name AND NOT consumed
    ORDER BY id LIMIT 1
) AS s
"""
_WORKFLOW_SIGNALS: Final = (
    "SELECT" + _SIGNAL_COLUMNS + "FROM signals WHERE workflow_id = $1 ORDER BY id"
)
_GET_WORKFLOW_EVENT: Final = "SELECT value FROM workflow_events WHERE workflow_id = $1 AND key = $2"


class PostgresWorkflows(PostgresBase, Workflows):
    """Workflows, steps and signals on PostgreSQL. `next_signal`, read by every
    wait for a signal, is a group read (_groupread)."""

    # Built by PostgresJournal, over `_next_signals`.
    _signal_reads: GroupReader[tuple[str, str], Signal]

    @boundary
    async def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        return optional(workflow_row, await self._pool.fetchrow(_GET_WORKFLOW, workflow_id))

    @boundary
    async def list_workflows(
        self,
        *,
        status: str | None = None,
        actor_key: str | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        created_since: datetime | None = None,
        created_before: datetime | None = None,
    ) -> WorkflowPage:
        before = int(cursor) if cursor else None
        rows = await self._pool.fetch(_LIST_WORKFLOWS, status, actor_key, name, before,
                                      limit + 1, created_since, created_before)
        page = [workflow_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return WorkflowPage(
            workflows=page, next_cursor=str(page[-1].position) if more and page else None
        )

    @boundary
    async def count_workflows_by_status(self) -> dict[str, int]:
        return {row["status"]: row["n"] for row in await self._pool.fetch(_COUNT_BY_STATUS)}

    @boundary
    async def count_parked(self) -> dict[str, int]:
        return {row["name"]: row["n"] for row in await self._pool.fetch(_COUNT_PARKED)}

    @boundary
    async def children(self, workflow_id: str) -> list[WorkflowRow]:
        return [workflow_row(row) for row in await self._pool.fetch(_CHILDREN, workflow_id)]

    @boundary
    async def unfinished_workflows(
        self, partitions: Collection[int] | None = None, *, waiting: bool = True
    ) -> list[WorkflowRow]:
        wanted = None if partitions is None else list(partitions)
        rows = await self._pool.fetch(_UNFINISHED_WORKFLOWS, wanted, waiting)
        return [workflow_row(row) for row in rows]

    @boundary
    async def load_steps(self, workflow_id: str) -> list[StepRecord]:
        return [StepRecord(**row) for row in await self._pool.fetch(_LOAD_STEPS, workflow_id)]

    @boundary
    async def load_histories(self, workflow_ids: Sequence[str]) -> dict[str, list[StepRecord]]:
        histories: dict[str, list[StepRecord]] = {workflow_id: [] for workflow_id in workflow_ids}
        for row in await self._pool.fetch(_LOAD_HISTORIES, list(workflow_ids)):
            histories[row["workflow_id"]].append(StepRecord(**row))
        return histories

    @boundary
    async def waiting_steps(self, partitions: Collection[int] | None = None) -> list[WaitingStep]:
        wanted = None if partitions is None else list(partitions)
        return [WaitingStep(**row) for row in await self._pool.fetch(_WAITING_STEPS, wanted)]

    @boundary
    async def runnable_workflows(
        self, partitions: Collection[int], signals_after: int
    ) -> tuple[list[WorkflowRow], int]:
        newest = int(await self._pool.fetchval(_NEWEST_SIGNAL))
        rows = await self._pool.fetch(_RUNNABLE_WORKFLOWS, list(partitions), signals_after)
        return [workflow_row(row) for row in rows], newest

    @boundary
    async def request_cancel(self, workflow_id: str) -> list[str]:
        async with self._pool.acquire() as conn, conn.transaction():
            status = await _lock_status_txn(conn, workflow_id)
            if status in FINISHED_STATUSES or status == "pruned":
                raise InvalidTransitionError(workflow_id, status, "cancel")
            return [row["id"] for row in await conn.fetch(_REQUEST_CANCEL, workflow_id)]

    @boundary
    async def retry_workflow(self, workflow_id: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            status = await _lock_status_txn(conn, workflow_id)
            if status not in _RETRYABLE:
                raise InvalidTransitionError(workflow_id, status, "retry")
            await conn.execute(_RETRY_STEPS, workflow_id)
            await conn.execute(_RETRY_WORKFLOW, workflow_id)

    @boundary
    async def fork_workflow(
        self, workflow_id: str, from_seq: int, new_id: str, *,
        idempotency_key: str | None = None, request_hash: str | None = None, trace_id: str = "",
    ) -> tuple[WorkflowRow, bool]:
        async with self._pool.acquire() as conn, conn.transaction():
            existing = await _by_key_txn(conn, idempotency_key)
            if existing is not None:
                return existing, False
            original = await conn.fetchrow(_LOCK_FOR_FORK, workflow_id)
            if original is None:
                raise WorkflowNotFoundError(workflow_id)
            if original["status"] not in FORKABLE_STATUSES:
                raise InvalidTransitionError(workflow_id, original["status"], "fork")
            if original["pruned_at"] is not None and from_seq != 1:
                raise InvalidForkError(workflow_id, from_seq, 0, pruned_at=original["pruned_at"])
            last = int(await conn.fetchval(_LAST_SEQ, workflow_id))
            if not 1 <= from_seq <= last + 1:
                raise InvalidForkError(workflow_id, from_seq, last)
            row = await conn.fetchrow(_INSERT_FORK, workflow_id, new_id, idempotency_key,
                                      request_hash, trace_id, from_seq)
            if row is None:  # a concurrent fork took the key first
                winner = await _by_key_txn(conn, idempotency_key)
                assert winner is not None
                return winner, False
            await conn.execute(_COPY_STEPS, workflow_id, new_id, from_seq)
            await conn.execute(_COPY_EVENTS, workflow_id, new_id, from_seq)
            return workflow_row(row), True

    @boundary
    async def forks(self, workflow_id: str) -> list[WorkflowRow]:
        return [workflow_row(row) for row in await self._pool.fetch(_FORKS, workflow_id)]

    @boundary
    async def workflow_signals(self, workflow_id: str) -> list[Signal]:
        return [Signal(**row) for row in await self._pool.fetch(_WORKFLOW_SIGNALS, workflow_id)]

    # -- signals and workflow events ----------------------------------------

    @boundary
    async def send_signal(self, workflow_id: str, name: str, payload: Any) -> Signal:
        row = await self._pool.fetchrow(_SEND_SIGNAL, workflow_id, name, payload)
        if row is None:
            raise WorkflowNotFoundError(workflow_id)
        return Signal(**row)

    async def next_signal(self, workflow_id: str, name: str) -> Signal | None:
        return await self._signal_reads.read((workflow_id, name))

    @boundary
    async def _next_signals(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Signal]:
        ids, names = [workflow_id for workflow_id, _ in keys], [name for _, name in keys]
        rows = await self._pool.fetch(_NEXT_SIGNALS, ids, names)
        return {(row["workflow_id"], row["name"]): Signal(**row) for row in rows}

    @boundary
    async def get_workflow_event(self, workflow_id: str, key: str) -> tuple[bool, Any]:
        row = await self._pool.fetchrow(_GET_WORKFLOW_EVENT, workflow_id, key)
        return (False, None) if row is None else (True, row["value"])


async def _by_key_txn(conn: Conn, idempotency_key: str | None) -> WorkflowRow | None:
    """The workflow that holds `idempotency_key` (None for no key)."""
    if idempotency_key is None:
        return None
    return optional(workflow_row, await conn.fetchrow(_BY_IDEMPOTENCY_KEY, idempotency_key))


async def _lock_status_txn(conn: Conn, workflow_id: str) -> str:
    """Lock the workflow's row for an operator action and return its status."""
    status: str | None = await conn.fetchval(_LOCK_WORKFLOW_STATUS, workflow_id)
    if status is None:
        raise WorkflowNotFoundError(workflow_id)
    return status
