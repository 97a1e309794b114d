"""Migration 8 (issue 14): a run's claim folded into its status change, partial
workflow indexes. The guards stay the fence: a claim and a status change in one
batch (or one group) still refuse a stale run whole; the queries the pruner,
key expiry, recovery and listing depend on still read an index."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from journal import (
    Batch,
    IntegrityError,
    Journal,
    NewWorkflow,
    PostgresJournal,
    RunFence,
    StaleRunError,
    StatusChange,
    StepRecord,
)
from journal._migrations import v8_lean_writes
from journal._pg_retention import _EXPIRE_ANY, _EXPIRE_HELD, _PRUNE_ANY, _PRUNE_HELD
from journal._pg_workflows import (
    _BY_IDEMPOTENCY_KEY,
    _LIST_WORKFLOWS,
    _RUNNABLE_WORKFLOWS,
    _UNFINISHED_WORKFLOWS,
)
from journal._pg_writer import _CONFLICTING_WORKFLOW, _FREE_EXPIRED_KEY
from journal.migrations import MIGRATIONS, migrate

from .journal_support import migrate_to

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def by(run_id: str, previous: str | None = None, workflow_id: str = "wf",
       **parts: Any) -> Batch:
    return Batch(partition=0, epoch=0,
                 run=RunFence(workflow_id=workflow_id, run_id=run_id, previous=previous),
                 **parts)


def moved(status: str, workflow_id: str = "wf", **fields: Any) -> tuple[StatusChange, ...]:
    return (StatusChange(workflow_id=workflow_id, status=status, **fields),)


def started(seq: int, workflow_id: str = "wf") -> tuple[StepRecord, ...]:
    return (StepRecord(workflow_id=workflow_id, seq=seq, name=f"s{seq}", kind="step",
                       status="started", attempt=1, started_at=T0),)


async def new_workflow(journal: Journal, workflow_id: str = "wf") -> None:
    await journal.create_workflow(
        NewWorkflow(id=workflow_id, name="invite", actor_key="customer-1", partition=0))


async def holder(journal: Journal, workflow_id: str = "wf") -> tuple[str, str | None]:
    row = await journal.get_workflow(workflow_id)
    assert row is not None
    return row.status, row.run_id


# -- a claim and a status change in one batch (both journals) ---------------------------


async def test_a_claim_and_a_status_change_in_one_batch_write_both(journal: Journal) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", statuses=moved("running"), steps=started(1)))
    assert await holder(journal) == ("running", "run-a")
    # A take-over that also changes the status: the new holder and the new status.
    await journal.append(by("run-b", previous="run-a", statuses=moved("waiting")))
    assert await holder(journal) == ("waiting", "run-b")


async def test_a_stale_run_with_a_status_change_is_refused_and_moves_nothing(
    journal: Journal,
) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", statuses=moved("running")))
    await journal.append(by("run-b", previous="run-a", statuses=moved("waiting")))
    for stale in (by("run-a", statuses=moved("completed", result=1)),
                  by("run-c", previous="run-a", statuses=moved("completed", result=1)),
                  by("run-c", statuses=moved("running"))):
        with pytest.raises(StaleRunError) as caught:
            await journal.append(stale)
        assert caught.value.workflow_id == "wf"
        assert "held by another run (run-b; status waiting)" in str(caught.value)
        assert await holder(journal) == ("waiting", "run-b")


async def test_a_finished_workflow_is_not_claimed_by_a_status_change_again(
    journal: Journal,
) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", statuses=moved("completed", result=1)))
    with pytest.raises(StaleRunError) as caught:
        await journal.append(by("run-b", previous="run-a", statuses=moved("completed")))
    assert "held by another run (run-a; status completed)" in str(caught.value)
    # Its own run may say it again: a no-op.
    await journal.append(by("run-a", statuses=moved("completed", result=1)))
    assert await holder(journal) == ("completed", "run-a")


async def test_a_claim_of_a_missing_workflow_with_a_status_change_is_refused(
    journal: Journal,
) -> None:
    with pytest.raises(StaleRunError) as caught:
        await journal.append(by("run-a", workflow_id="ghost", statuses=moved("running", "ghost")))
    assert caught.value.workflow_id == "ghost"
    assert "held by another run (none; status missing)" in str(caught.value)
    assert await journal.get_workflow("ghost") is None


# -- several batches in one group (PostgreSQL's retinue_append) -------------------------


async def test_a_group_claims_with_and_without_status_changes(
    postgres_journal: PostgresJournal,
) -> None:
    for workflow_id in ("wf-1", "wf-2", "wf-3"):
        await new_workflow(postgres_journal, workflow_id)
    await postgres_journal._append_group([
        by("run-1", workflow_id="wf-1", statuses=moved("running", "wf-1")),
        by("run-2", workflow_id="wf-2", steps=started(1, "wf-2")),
        # A status change of a workflow this group does not claim: run_id stays.
        Batch(partition=0, epoch=0, statuses=moved("running", "wf-3")),
    ])
    assert await holder(postgres_journal, "wf-1") == ("running", "run-1")
    assert await holder(postgres_journal, "wf-2") == ("pending", "run-2")
    assert await holder(postgres_journal, "wf-3") == ("running", None)


async def test_a_group_claiming_one_workflow_twice_is_checked_claim_by_claim(
    postgres_journal: PostgresJournal,
) -> None:
    await new_workflow(postgres_journal)
    await postgres_journal.append(by("run-a", statuses=moved("running")))
    # The same run twice (its batches met in one group): fine.
    await postgres_journal._append_group([
        by("run-b", previous="run-a", steps=started(1)),
        by("run-b", previous="run-a", statuses=moved("waiting")),
    ])
    assert await holder(postgres_journal) == ("waiting", "run-b")
    # Two runs from the same view: one of them is stale, the group is refused whole.
    with pytest.raises(StaleRunError) as caught:
        await postgres_journal._append_group([
            by("run-c", previous="run-b", statuses=moved("running")),
            by("run-d", previous="run-b", steps=started(2)),
        ])
    assert caught.value.workflow_id == "wf"
    assert await holder(postgres_journal) == ("waiting", "run-b")
    assert [s.seq for s in await postgres_journal.load_steps("wf")] == [1]


# -- the migration, on a database at version 7 with rows in it --------------------------


async def test_migration_8_applies_on_a_database_at_7_with_rows(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await migrate_to(conn, 7)
        await conn.execute("""
            INSERT INTO workflows (id, name, actor_key, partition, status, idempotency_key)
            VALUES ('keyed', 'invite', 'c', 0, 'completed', 'k-1'),
                   ('plain', 'invite', 'c', 1, 'running', NULL),
                   ('plain-2', 'invite', 'c', 1, 'cancelled', NULL)""")
        assert await migrate(conn) == [8, 9]
        assert await conn.fetchval(_BY_IDEMPOTENCY_KEY.replace("SELECT", "SELECT id,", 1)
                                   + " LIMIT 1", "k-1") == "keyed"
        indexes = {row["indexname"]: row["indexdef"] for row in await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'workflows'")}
    finally:
        await conn.close()
    assert "WHERE (idempotency_key IS NOT NULL)" in indexes["workflows_idempotency_key"]
    assert "UNIQUE" in indexes["workflows_idempotency_key"]
    assert "WHERE (status = ANY" in indexes["workflows_status_position"]
    journal = await PostgresJournal.connect(pg_dsn)
    try:
        assert await holder(journal, "plain") == ("running", None)
        # The key is still unique, under the same name.
        with pytest.raises(IntegrityError) as caught:
            await journal.append(Batch(partition=0, epoch=None, workflows=(NewWorkflow(
                id="other", name="invite", actor_key="c", partition=0,
                idempotency_key="k-1"),)))
        assert caught.value.constraint == "workflows_idempotency_key"
        listed = await journal.list_workflows(status="cancelled")
        assert [w.id for w in listed.workflows] == ["plain-2"]
    finally:
        await journal.aclose()


def test_migration_8_is_registered() -> None:
    assert [m.sql for m in MIGRATIONS if m.version == 8] == [v8_lean_writes.SQL]


# -- the plans the pruner, key expiry, recovery and listing depend on -------------------

_ROWS = 20_000


@pytest.fixture
async def filled(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A workflows table as a deployment whose pruner keeps up has it: most rows
    finished and pruned, a backlog of recent finished ones, keys only on recent
    rows (older ones expired), a few hundred unfinished, every other one a child."""
    journal = await PostgresJournal.connect(pg_dsn)
    await journal.aclose()
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("""
            INSERT INTO workflows (id, name, actor_key, partition, status, idempotency_key,
                                   parent_id, created_at, updated_at, pruned_at, run_id)
            SELECT 'wf-' || i, CASE WHEN i % 2 = 0 THEN 'invite' ELSE 'communication' END,
                   'actor-' || (i % 500), i % 256,
                   CASE WHEN i % 50 = 1 THEN 'running' WHEN i % 50 = 2 THEN 'waiting'
                        WHEN i % 500 = 3 THEN 'cancelled' WHEN i % 20 = 4 THEN 'failed'
                        ELSE 'completed' END,
                   CASE WHEN i % 10 = 5 AND i > $2 * 95 / 100 THEN 'key-' || i END,
                   CASE WHEN i % 2 = 1 THEN 'wf-' || (i - 1) END,
                   $1::timestamptz + i * interval '1 second',
                   $1::timestamptz + i * interval '1 second' + interval '5 seconds',
                   CASE WHEN i < $2 * 95 / 100 THEN $1::timestamptz + interval '1 day' END,
                   'run-' || i
            FROM generate_series(1, $2) AS i""", T0, _ROWS)
        await conn.execute("ANALYZE workflows")
        yield conn
    finally:
        await conn.close()


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


async def _workflow_indexes(conn: asyncpg.Connection, query: str, *args: Any) -> set[str]:
    """The indexes the plan reads workflows through (with the planner's own
    statistics and the bound values); fails on a sequential scan of workflows."""
    [plan] = json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + query, *args))
    nodes = [n for n in _nodes(plan["Plan"]) if n.get("Relation Name") == "workflows"
             and n["Node Type"] != "ModifyTable"]
    assert nodes, plan
    kinds = ("Index Scan", "Index Only Scan", "Bitmap Heap Scan")
    assert all(n["Node Type"] in kinds for n in nodes), nodes
    names = {n["Index Name"] for n in _nodes(plan["Plan"]) if "Index Name" in n}
    return names


async def test_the_write_side_queries_read_their_partial_indexes(
    filled: asyncpg.Connection,
) -> None:
    # The backlog: finished (or keyed) before the last 3% of the rows.
    late = T0 + timedelta(seconds=_ROWS * 97 // 100)
    held = ([1, 2, 3], [0, 0, 0])
    assert "workflows_prunable" in await _workflow_indexes(filled, _PRUNE_ANY, late, 500)
    assert "workflows_prunable" in await _workflow_indexes(filled, _PRUNE_HELD, late, 500, *held)
    # Either partial index of the keyed rows serves (both hold only those).
    keyed = {"workflows_keyed", "workflows_idempotency_key"}
    assert keyed & await _workflow_indexes(filled, _EXPIRE_ANY, late, 500)
    assert keyed & await _workflow_indexes(filled, _EXPIRE_HELD, late, 500, *held)
    for query, args in ((_BY_IDEMPOTENCY_KEY, ("key-19995",)),
                        (_FREE_EXPIRED_KEY, ("key-19995", late, "wf-1")),
                        (_CONFLICTING_WORKFLOW, ("wf-1", "key-19995"))):
        assert "workflows_idempotency_key" in await _workflow_indexes(filled, query, *args)


async def test_recovery_and_listing_read_indexes(filled: asyncpg.Connection) -> None:
    assert await _workflow_indexes(filled, _UNFINISHED_WORKFLOWS, None, True) == {
        "workflows_unfinished"}
    assert "workflows_unfinished" in await _workflow_indexes(
        filled, _RUNNABLE_WORKFLOWS, [1, 2], 0)

    def listing(status: str) -> tuple[Any, ...]:
        return (status, None, None, None, 51, None, None)

    # A rare finished status: straight through the (now finished-only) status index.
    assert await _workflow_indexes(filled, _LIST_WORKFLOWS, *listing("cancelled")) == {
        "workflows_status_position"}
    # An unfinished status: through the unfinished rows (or newest first), never a scan.
    for status in ("running", "waiting", "pending", "completed", "failed"):
        assert await _workflow_indexes(filled, _LIST_WORKFLOWS, *listing(status))
