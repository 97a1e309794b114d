"""PostgresJournal's retention (the `Retention` protocol): prune finished
workflows and expire idempotency keys, in short bounded transactions.

Each call is ONE statement (one implicit transaction, one round trip). The rows
to take are locked FOR UPDATE SKIP LOCKED, so a pruner never waits for (nor
holds up for long) an append, an operator's retry or another pruner: what is
busy now is taken next time. An owner's call first takes its partitions' lease
rows FOR SHARE at the epochs it holds, as `retinue_append` does, so a node that
lost a partition prunes nothing of it: a take-over waits for the call, and the
call after it finds the epoch moved.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from ._pg_shared import PostgresBase
from ._pgconn import boundary
from .base import Retention

__all__ = ["PostgresRetention"]

# $3, $4: the partitions and epochs an owner holds. Locked in partition order,
# as appends lock them, so a pruner and a take-over never deadlock.
_HELD: Final = """
held AS (
    SELECT p.partition FROM partitions p
    JOIN unnest($3::integer[], $4::bigint[]) AS l(partition, epoch)
        ON l.partition = p.partition AND l.epoch = p.epoch
    ORDER BY p.partition FOR SHARE OF p
),"""
_IN_HELD: Final = " AND partition IN (SELECT partition FROM held)"

# $1: finished before; $2: at most this many workflows. The conditions repeat
# workflows_prunable's predicate, so that index serves the scan.
_PRUNABLE: Final = """
chosen AS (
    SELECT id FROM workflows
    WHERE status IN ('completed', 'failed', 'cancelled') AND pruned_at IS NULL
      AND idempotency_key IS NULL AND updated_at < $1"""
# The ids go to each table as one array (`= ANY`): the planner cannot tell how
# many rows `chosen` has, and as a join it may hash a sequential scan of all of
# steps; an array probes the primary keys (and signals_workflow), always.
_PRUNE_REST: Final = """
    LIMIT $2 FOR UPDATE SKIP LOCKED
),
steps_gone AS (DELETE FROM steps WHERE workflow_id = ANY(ARRAY(SELECT id FROM chosen))),
signals_gone AS (DELETE FROM signals WHERE workflow_id = ANY(ARRAY(SELECT id FROM chosen))),
events_gone AS (DELETE FROM workflow_events WHERE workflow_id = ANY(ARRAY(SELECT id FROM chosen))),
marked AS (
    UPDATE workflows SET pruned_at = now() WHERE id = ANY(ARRAY(SELECT id FROM chosen)) RETURNING 1
)
SELECT count(*) FROM marked
"""
_PRUNE_ANY: Final = "WITH" + _PRUNABLE + _PRUNE_REST
_PRUNE_HELD: Final = "WITH" + _HELD + _PRUNABLE + _IN_HELD + _PRUNE_REST

# $1: accepted before; $2: at most this many keys.
_KEYED: Final = """
chosen AS (
    SELECT id FROM workflows WHERE idempotency_key IS NOT NULL AND created_at < $1"""
_EXPIRE_REST: Final = """
    LIMIT $2 FOR UPDATE SKIP LOCKED
),
freed AS (
    UPDATE workflows SET idempotency_key = NULL
    WHERE id = ANY(ARRAY(SELECT id FROM chosen)) RETURNING 1
)
SELECT count(*) FROM freed
"""
_EXPIRE_ANY: Final = "WITH" + _KEYED + _EXPIRE_REST
_EXPIRE_HELD: Final = "WITH" + _HELD + _KEYED + _IN_HELD + _EXPIRE_REST


class PostgresRetention(PostgresBase, Retention):
    """Retention on PostgreSQL."""

    @boundary
    async def prune_finished(
        self, finished_before: datetime, *, leases: Mapping[int, int] | None = None,
        limit: int = 500,
    ) -> int:
        return await self._bounded(_PRUNE_ANY, _PRUNE_HELD, finished_before, leases, limit)

    @boundary
    async def expire_idempotency_keys(
        self, issued_before: datetime, *, leases: Mapping[int, int] | None = None,
        limit: int = 500,
    ) -> int:
        return await self._bounded(_EXPIRE_ANY, _EXPIRE_HELD, issued_before, leases, limit)

    async def _bounded(
        self, anywhere: str, fenced: str, before: datetime, leases: Mapping[int, int] | None,
        limit: int,
    ) -> int:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        args: tuple[Any, ...] = (before, limit)
        if leases is None:
            return int(await self._pool.fetchval(anywhere, *args))
        if not leases:
            return 0
        partitions = sorted(leases)
        epochs = [leases[p] for p in partitions]
        return int(await self._pool.fetchval(fenced, *args, partitions, epochs))
