"""The embedded PostgreSQL, migrations and open_journal, on real servers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import asyncpg
import pytest

from journal import (
    PARTITION_COUNT,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    JournalUnavailableError,
    NewWorkflow,
    PostgresJournal,
    WorkflowRow,
    open_journal,
)
from journal.migrations import MIGRATIONS, migrate


def new_wf(wf_id: str) -> NewWorkflow:
    return NewWorkflow(id=wf_id, name="invite", actor_key="customer-1", partition=0)


async def get_when_back(journal: PostgresJournal, wf_id: str) -> WorkflowRow | None:
    """The pool reconnects on its own; the first call may still meet a dead connection."""
    with anyio.fail_after(10):
        while True:
            try:
                return await journal.get_workflow(wf_id)
            except JournalUnavailableError:
                await anyio.sleep(0.05)


async def test_a_restarted_server_keeps_its_data_and_the_pool_reconnects(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg")
    dsn = await anyio.to_thread.run_sync(server.start)
    try:
        assert server.is_running() and server.dsn == dsn
        journal = await PostgresJournal.connect(dsn)
        try:
            await journal.create_workflow(new_wf("wf-1"))
            await anyio.to_thread.run_sync(server.stop)
            assert not server.is_running()
            with pytest.raises(JournalUnavailableError):
                await journal.get_workflow("wf-1")

            assert await anyio.to_thread.run_sync(server.start) == dsn
            row = await get_when_back(journal, "wf-1")
            assert row is not None and row.id == "wf-1"

            # A crash-like stop: the committed row survives crash recovery.
            await anyio.to_thread.run_sync(server.stop, "immediate")
            await anyio.to_thread.run_sync(server.start)
            assert await get_when_back(journal, "wf-1") == row
        finally:
            await journal.aclose()
    finally:
        await anyio.to_thread.run_sync(server.stop)
    assert not server.is_running()


async def test_the_embedded_server_is_tuned_for_the_journal(tmp_path: Path) -> None:
    async with open_journal(None, tmp_path / "pg"):
        conn = await asyncpg.connect(EmbeddedPostgres(tmp_path / "pg").dsn)
        try:
            settings = {
                name: await conn.fetchval(f"SHOW {name}")
                for name in ("max_connections", "fsync", "synchronous_commit", "TimeZone")
            }
        finally:
            await conn.close()
    assert settings == {
        "max_connections": "200",
        "fsync": "on",
        "synchronous_commit": "on",
        "TimeZone": "UTC",
    }


async def test_open_journal_without_a_url_runs_and_stops_an_embedded_server(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "deep" / "pg"
    async with open_journal(None, data_dir) as journal:
        await journal.create_workflow(new_wf("wf-1"))
    assert not EmbeddedPostgres(data_dir).is_running()
    async with open_journal(None, data_dir) as journal:
        assert await journal.get_workflow("wf-1") is not None
    assert not EmbeddedPostgres(data_dir).is_running()


async def test_open_journal_with_a_url_uses_that_server(pg_dsn: str) -> None:
    async with open_journal(pg_dsn, data_dir="/nonexistent/never/created") as journal:
        row, created = await journal.create_workflow(new_wf("wf-1"))
        assert created and row.status == "pending"
    assert not await anyio.Path("/nonexistent/never/created").exists()


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "pg"
    path.write_text("not a folder")
    return path


def under_a_file(tmp_path: Path) -> Path:
    return a_file(tmp_path) / "data"


def a_foreign_folder(tmp_path: Path) -> Path:
    path = tmp_path / "pg"
    path.mkdir()
    (path / "notes.txt").write_text("someone else's")
    return path


@pytest.mark.parametrize("unusable", [a_file, under_a_file, a_foreign_folder])
def test_an_unusable_data_dir_gives_a_clear_error(
    tmp_path: Path, unusable: Callable[[Path], Path]
) -> None:
    data_dir = unusable(tmp_path)
    server = EmbeddedPostgres(data_dir)
    with pytest.raises(EmbeddedPostgresError) as caught:
        server.start()
    message = str(caught.value)
    assert str(data_dir) in message and "DATABASE_URL" in message
    assert not server.is_running()


async def test_processes_starting_together_migrate_once(pg_dsn: str) -> None:
    journals: list[PostgresJournal] = []

    async def connect() -> None:
        journals.append(await PostgresJournal.connect(pg_dsn))

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(connect)
        taken = await journals[0].acquire_leases("n", [PARTITION_COUNT - 1], 30, stale_after=30)
        assert taken == {PARTITION_COUNT - 1: 1}
    finally:
        for journal in journals:
            await journal.aclose()

    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT version, name FROM retinue_migrations ORDER BY version")
        assert [(r["version"], r["name"]) for r in rows] == [
            (m.version, m.name) for m in MIGRATIONS
        ]
        assert await conn.fetchval("SELECT count(*) FROM partitions") == PARTITION_COUNT
        assert await migrate(conn) == []
    finally:
        await conn.close()


def test_migrations_are_numbered_in_order() -> None:
    # Gaps are fine (applied by set difference; branches take numbers in parallel),
    # repeats and disorder are not.
    versions = [m.version for m in MIGRATIONS]
    assert versions[0] == 1 and versions == sorted(set(versions))
