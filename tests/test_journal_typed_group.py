"""Migration 9 (issue 14): the group reaches retinue_append as typed arrays of
composite types, not one jsonb document. Python builds each record by position,
so the order of a part's attributes is checked against the database's; the jsonb
function stays for a node of the previous release, with its guards."""

from __future__ import annotations

import json
from datetime import timedelta

import asyncpg
import pytest

from journal import Batch, PostgresJournal, RunFence, StaleRunError, StepRecord, _pgwrite
from journal._migrations import v9_typed_group
from journal.migrations import MIGRATIONS, migrate

from .journal_support import T0, TRICKY, batch, event, migrate_to, new_wf, step

_ATTRIBUTES = """
SELECT array_agg(a.attname::text ORDER BY a.attnum)
FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid
WHERE t.typname = $1 AND a.attnum > 0 AND NOT a.attisdropped
"""


async def test_each_part_builds_its_records_in_the_order_of_its_types_attributes(
    pg_dsn: str,
) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await migrate(conn)
        for part in _pgwrite.PARTS:
            assert await conn.fetchval(_ATTRIBUTES, part.type_name) == list(part.attributes)
        signatures = {row[0] for row in await conn.fetch(
            "SELECT pg_get_function_identity_arguments(oid) FROM pg_proc "
            "WHERE proname = 'retinue_append'")}
    finally:
        await conn.close()
    typed = ", ".join(f"{name} {part.type_name}[]" for name, part in zip(
        ("leases", "runs", "workflows", "steps", "statuses", "events", "documents",
         "workflow_events"), _pgwrite.PARTS, strict=True))
    assert signatures == {"g jsonb", typed + ", consumed_signals bigint[]"}


def test_a_partitions_lease_goes_once_per_group() -> None:
    batches = [batch(steps=(step("a", 1),)), batch(steps=(step("b", 1),)),
               Batch(partition=3, epoch=None, workflows=(new_wf("c", partition=3),))]
    assert _pgwrite.group(batches)[0] == [(0, 0)]


async def test_every_field_of_a_step_reads_back_as_written(
    postgres_journal: PostgresJournal, pg_dsn: str,
) -> None:
    """Every column of a step through its composite type, with the batch's
    partition, epoch and run (the fields the record does not carry itself; an
    event carries the partition and epoch too). Partition 5 at epoch 0: the two
    swapped would show."""
    await postgres_journal.create_workflow(new_wf("wf"))
    written = StepRecord(
        workflow_id="wf", seq=7, name="wait-for-go", kind="wait", status="started",
        attempt=2, input=TRICKY, output=[1, "two"], error="boom: ✓",
        started_at=T0, finished_at=T0 + timedelta(microseconds=1),
        fire_at=T0 + timedelta(days=3), history={"attempts": [{"error": "x"}]},
        app_version="v-42")
    await postgres_journal.append(batch(
        partition=5, run=RunFence(workflow_id="wf", run_id="run-a"), steps=(written,),
        events=(event("customer-1", 1, workflow_id="wf"),)))
    [stored] = await postgres_journal.load_steps("wf")
    expected = {name: getattr(written, name) for name in StepRecord.__struct_fields__}
    assert {name: getattr(stored, name) for name in StepRecord.__struct_fields__} == (
        expected | {"run_id": "run-a"})
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert tuple(await conn.fetchrow("SELECT partition, epoch FROM steps")) == (5, 0)
        assert tuple(await conn.fetchrow("SELECT partition, epoch FROM events")) == (5, 0)
    finally:
        await conn.close()


async def test_a_node_of_the_previous_release_appends_through_the_jsonb_function(
    postgres_journal: PostgresJournal, pg_dsn: str,
) -> None:
    """A rolling deploy: an old node still calls retinue_append(jsonb); it writes,
    and its fence still refuses a stale run whole."""
    await postgres_journal.create_workflow(new_wf("wf"))
    old_group = {
        "leases": [{"partition": 0, "epoch": 0}],
        "runs": [{"workflow_id": "wf", "run_id": "run-old", "previous": None}],
        "workflows": [], "events": [], "documents": [], "workflow_events": [],
        "consumed_signals": [],
        "statuses": [{"workflow_id": "wf", "status": "running"}],
        "steps": [{"workflow_id": "wf", "seq": 1, "partition": 0, "name": "s1",
                   "kind": "step", "status": "started", "attempt": 1,
                   "started_at": T0.isoformat(), "epoch": 0, "run_id": "run-old",
                   "app_version": "old"}],
    }
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("SELECT retinue_append($1::jsonb)", json.dumps(old_group))
        # This release's run takes over from it.
        await postgres_journal.append(batch(
            run=RunFence(workflow_id="wf", run_id="run-new", previous="run-old"),
            steps=(step("wf", 2, app_version="new"),)))
        # The old node's run is stale now: refused whole, by the old function too.
        old_group["statuses"] = [{"workflow_id": "wf", "status": "completed"}]
        old_group["steps"] = []
        with pytest.raises(asyncpg.PostgresError) as caught:
            await conn.execute("SELECT retinue_append($1::jsonb)", json.dumps(old_group))
        assert caught.value.sqlstate == "RF003"
    finally:
        await conn.close()
    row = await postgres_journal.get_workflow("wf")
    assert row is not None and (row.status, row.run_id) == ("running", "run-new")
    assert [(s.seq, s.run_id, s.app_version) for s in await postgres_journal.load_steps("wf")] == [
        (1, "run-old", "old"), (2, "run-new", "new")]
    # And the new function refuses the old run the same way.
    with pytest.raises(StaleRunError):
        await postgres_journal.append(batch(
            run=RunFence(workflow_id="wf", run_id="run-old"),
            steps=(step("wf", 3),)))


async def test_migration_9_applies_on_a_database_at_8_with_a_workflow_running(
    pg_dsn: str,
) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await migrate_to(conn, 8)
        await conn.execute("""
            INSERT INTO workflows (id, name, actor_key, partition, status, run_id)
            VALUES ('wf', 'invite', 'c', 0, 'running', 'run-a')""")
        assert await migrate(conn) == [9]
    finally:
        await conn.close()
    journal = await PostgresJournal.connect(pg_dsn)
    try:
        await journal.append(batch(run=RunFence(workflow_id="wf", run_id="run-a"),
                                   steps=(step("wf", 1),)))
        assert [s.seq for s in await journal.load_steps("wf")] == [1]
    finally:
        await journal.aclose()


def test_migration_9_is_registered() -> None:
    assert [m.sql for m in MIGRATIONS if m.version == 9] == [v9_typed_group.SQL]
