"""Migration 9 (issue 14): the step guard rides on the step upsert, and looks only
when the upsert wrote fewer rows than it was sent. Against both journals where the
behaviour is the contract (a refusal writes nothing of its batch, an identical
re-append is a no-op); against PostgreSQL for the migration itself."""

from __future__ import annotations

import asyncpg
import pytest

from journal import Journal, PostgresJournal, StaleRunError
from journal._migrations import v8_lean_writes, v9_guarded_upsert
from journal.migrations import MIGRATIONS, migrate
from tests.test_journal_fences import by, new_workflow, record, steps
from tests.test_journal_lean_writes import _migrate_to


async def test_a_refused_record_takes_the_records_written_before_it_along(
    journal: Journal,
) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", steps=(record(1, "completed", output="first"),)))
    # The new record comes first in the batch: the upsert writes it, then finds
    # seq 1 refused (completed is final); the whole batch must be undone.
    with pytest.raises(StaleRunError):
        await journal.append(by("run-a", steps=(record(2, "started"), record(1, "started", 2))))
    assert await steps(journal) == [(1, "completed", 1, "run-a")]


async def test_an_identical_re_append_among_new_records_passes(journal: Journal) -> None:
    await new_workflow(journal)
    first = by("run-a", steps=(record(1, "completed", output="first"), record(2, "started")))
    await journal.append(first)
    # Written fewer rows than sent (seq 1 and 2 are the same again): the guard looks,
    # and lets the identical ones and the legal move of seq 2 through.
    await journal.append(by("run-a", steps=(record(1, "completed", output="first"),
                                            record(2, "completed", output="second"),
                                            record(3, "started"))))
    assert await steps(journal) == [(1, "completed", 1, "run-a"), (2, "completed", 1, "run-a"),
                                    (3, "started", 1, "run-a")]


async def test_migration_9_applies_on_a_database_at_8_and_keeps_refusing(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await _migrate_to(conn, 8)
        assert (await migrate(conn))[:1] == [9]
    finally:
        await conn.close()
    journal = await PostgresJournal.connect(pg_dsn)
    try:
        await new_workflow(journal)
        await journal.append(by("run-a", steps=(record(1, "completed"),)))
        with pytest.raises(StaleRunError):
            await journal.append(by("run-a", steps=(record(1, "started", 2),)))
    finally:
        await journal.aclose()


def test_migration_9_is_migration_8s_function_with_the_steps_section_swapped() -> None:
    assert [m.sql for m in MIGRATIONS if m.version == 9] == [v9_guarded_upsert.SQL]
    v8_function = v8_lean_writes.SQL[v8_lean_writes.SQL.index("CREATE OR REPLACE FUNCTION"):]
    # Only the steps section and one declaration differ; the rest is migration 8's.
    head = v8_function[:v8_function.index("IF jsonb_array_length(g->'steps')")]
    tail = v8_function[v8_function.index("IF jsonb_array_length(g->'statuses')"):]
    assert v9_guarded_upsert.SQL.endswith(tail)
    assert v9_guarded_upsert.SQL.startswith(head.replace(
        "    moving jsonb;\nBEGIN", "    moving jsonb;\n    written bigint;\nBEGIN"))
    assert "GET DIAGNOSTICS written = ROW_COUNT" in v9_guarded_upsert.SQL
