"""PostgresJournal: the journal contract on PostgreSQL, through an asyncpg pool.

The class is composed of one part per protocol of the contract, each in a module
of its own over the shared pool: `_pg_cluster` (nodes, leases, wake-ups),
`_pg_writer` (the write path, group-committed through `_groupcommit` and
`_pgwrite`), `_pg_workflows`, `_pg_projections` (events and documents; their
hot point reads are group reads, `_groupread`),
`_pg_dead_letters` and `_pg_retention` (pruning, expiring keys). Every public
method is a boundary (`_pgconn.boundary`): it raises the journal's own errors
only. Timestamps come from the database clock (`now()`), timezone-aware.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import anyio

from ._groupcommit import GroupCommitter
from ._groupread import GroupReader, ReadStatistics
from ._pg_cluster import PostgresCluster
from ._pg_dead_letters import PostgresDeadLetters
from ._pg_projections import PostgresProjections
from ._pg_retention import PostgresRetention
from ._pg_shared import PING
from ._pg_workflows import PostgresWorkflows
from ._pg_writer import PostgresWriter
from ._pgconn import Pool, boundary, create_pool, translated
from .base import Journal
from .embedded import EmbeddedPostgres
from .migrations import migrate

__all__ = ["PostgresJournal", "open_journal"]

_CLOSE_TIMEOUT: Final = 10.0
# Migrations run on a connection of their own, with room for DDL on big tables and
# for another process's migration (they take turns on a lock).
_MIGRATION_TIMEOUT: Final = 600.0


class PostgresJournal(
    PostgresCluster,
    PostgresWriter,
    PostgresWorkflows,
    PostgresProjections,
    PostgresDeadLetters,
    PostgresRetention,
    Journal,
):
    """The journal on PostgreSQL. Build it with `await PostgresJournal.connect(dsn)`
    (or `open_journal`), and close it with `aclose()`."""

    def __init__(self, pool: Pool, *, max_group: int = 512, max_writers: int = 2) -> None:
        self._pool = pool
        self._closed = False
        # A shared statement (a group write or read) waits for a connection, then
        # runs, each bounded by the pool's timeout; past both (and a margin) its
        # sender gives up anyway.
        shared_timeout = 2 * pool.timeout + 1.0
        self._committer = GroupCommitter(
            self._append_group, max_batch=max_group, max_writers=max_writers,
            write_timeout=shared_timeout,
        )
        # The point reads of the invite path, group-read (_groupread).
        read_timeout = shared_timeout
        self._event_seq_reads = GroupReader(self._last_event_seqs, read_timeout=read_timeout)
        self._document_reads = GroupReader(self._find_documents, read_timeout=read_timeout)
        self._signal_reads = GroupReader(self._next_signals, read_timeout=read_timeout)

    @property
    def read_statistics(self) -> dict[str, ReadStatistics]:
        """Group-read counters by method: statements sent, reads they answered."""
        return {
            "last_event_seq": self._event_seq_reads.statistics,
            "find_document": self._document_reads.statistics,
            "next_signal": self._signal_reads.statistics,
        }

    @classmethod
    async def connect(
        cls, dsn: str, *, min_size: int = 2, max_size: int = 10, timeout: float | None = None
    ) -> PostgresJournal:
        """Open a pool on `dsn`, migrate the schema, and return the journal. Every
        wait on the server is bounded by `timeout` seconds (default: the
        RETINUE_DB_TIMEOUT setting, else 5). Raises JournalUnavailableError if the
        server cannot be reached."""
        pool = await create_pool(dsn, min_size=min_size, max_size=max_size, timeout=timeout)
        migrated = False
        try:
            with translated():
                async with pool.dedicated(command_timeout=_MIGRATION_TIMEOUT) as conn:
                    await migrate(conn)
            migrated = True
        finally:
            if not migrated:
                pool.terminate()
        return cls(pool)

    async def aclose(self) -> None:
        """Close the pool, waiting (shielded, at most 10 s) for borrowed connections."""
        if self._closed:
            return
        self._closed = True
        with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True) as scope:
            await self._pool.close()
        if scope.cancelled_caught:
            self._pool.terminate()

    @boundary
    async def ping(self) -> None:
        await self._pool.fetchval(PING)


# -- opening a journal ------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_journal(
    database_url: str | None, data_dir: str | Path = ".retinue/pg"
) -> AsyncIterator[PostgresJournal]:
    """Yield a connected, migrated PostgresJournal: on `database_url` if given,
    else on an embedded PostgreSQL in `data_dir`, which is stopped on exit."""
    async with contextlib.AsyncExitStack() as stack:
        if not database_url:
            server = EmbeddedPostgres(data_dir)
            database_url = await anyio.to_thread.run_sync(server.start)
            stack.push_async_callback(_stop_embedded, server)
        journal = await PostgresJournal.connect(database_url)
        stack.push_async_callback(journal.aclose)
        yield journal


async def _stop_embedded(server: EmbeddedPostgres) -> None:
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(server.stop)
