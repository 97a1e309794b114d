"""PostgresJournal's domain events and documents (the `Projections` protocol)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Final

import asyncpg

from ._groupread import GroupReader
from ._pg_shared import PostgresBase, optional
from ._pgconn import boundary
from ._pgwrite import UPSERT_DOCUMENT, document_args
from .base import Projections, count_by_kind
from .records import Document, DomainEvent

__all__ = ["PostgresProjections"]

_EVENT_COLUMNS: Final = " actor_key, seq, type, payload, workflow_id, created_at "
_READ_EVENTS: Final = (
    "SELECT" + _EVENT_COLUMNS + "FROM events WHERE actor_key = $1 AND seq > $2 ORDER BY seq"
)
# COLLATE "C": the same order as Python's str comparison, whatever the database locale.
_READ_ALL_EVENTS: Final = (
    "SELECT" + _EVENT_COLUMNS + 'FROM events ORDER BY actor_key COLLATE "C", seq'
)
# Each actor's `coalesce(max(seq), 0)`, for many actors in one statement
# (_groupread): a row per key, each its own max() (one probe of events_pkey).
_LAST_EVENT_SEQS: Final = """
SELECT k.actor_key,
       (SELECT coalesce(max(e.seq), 0) FROM events e WHERE e.actor_key = k.actor_key) AS seq
FROM unnest($1::text[]) AS k(actor_key)
"""
_DOCUMENT_COLUMNS: Final = " kind, id, data, unique_key, owner, updated_at "
_GET_DOCUMENT: Final = "SELECT" + _DOCUMENT_COLUMNS + "FROM documents WHERE kind = $1 AND id = $2"
# The document with each (kind, unique_key) pair, for many pairs in one statement
# (_groupread): a row per pair found. `unique_key IS NOT NULL` (implied by the
# join) lets the planner use the partial unique index documents_unique_key.
_FIND_DOCUMENTS: Final = (
    "SELECT"
    + " d.kind, d.id, d.data, d.unique_key, d.owner, d.updated_at "
    + """FROM unnest($1::text[], $2::text[]) AS k(kind, unique_key)
JOIN documents d ON d.kind = k.kind AND d.unique_key = k.unique_key
WHERE d.unique_key IS NOT NULL"""
)
_LIST_DOCUMENTS: Final = (
    "SELECT"
    + _DOCUMENT_COLUMNS
    + """FROM documents
WHERE kind = $1 AND ($2::text IS NULL OR owner = $2)
ORDER BY id COLLATE "C\""""
)
_DELETE_DOCUMENTS: Final = "DELETE FROM documents WHERE kind = $1"
# The lock a rebuild holds while it reads the log and swaps the rows in. It conflicts
# with the ROW EXCLUSIVE lock every write of documents takes (retinue_append's
# INSERT), and with itself (two rebuilds take turns), not with plain reads: a
# write under way is waited for (so its events are read), a later one waits for
# the swap. The event log is read AFTER the lock is granted, in READ COMMITTED,
# so it holds every write whose rows the swap replaces.
_LOCK_DOCUMENTS: Final = "LOCK TABLE documents IN SHARE ROW EXCLUSIVE MODE"
# Reading a whole log may take longer than one ordinary statement is allowed.
_REBUILD_TIMEOUT: Final = 600.0


class PostgresProjections(PostgresBase, Projections):
    """Events and documents on PostgreSQL. The two point reads of the invite path,
    `last_event_seq` and `find_document`, are group reads (_groupread): concurrent
    ones share a statement."""

    # Built by PostgresJournal, over the two methods below them.
    _event_seq_reads: GroupReader[str, int]
    _document_reads: GroupReader[tuple[str, str], Document]

    @boundary
    async def read_events(self, actor_key: str, after_seq: int = 0) -> list[DomainEvent]:
        rows = await self._pool.fetch(_READ_EVENTS, actor_key, after_seq)
        return [DomainEvent(**row) for row in rows]

    @boundary
    async def read_all_events(self) -> list[DomainEvent]:
        return [DomainEvent(**row) for row in await self._pool.fetch(_READ_ALL_EVENTS)]

    async def last_event_seq(self, actor_key: str) -> int:
        return await self._event_seq_reads.read(actor_key) or 0

    @boundary
    async def _last_event_seqs(self, actor_keys: Sequence[str]) -> dict[str, int]:
        rows = await self._pool.fetch(_LAST_EVENT_SEQS, actor_keys)
        return {row["actor_key"]: int(row["seq"]) for row in rows}

    @boundary
    async def get_document(self, kind: str, doc_id: str) -> Document | None:
        return optional(_document, await self._pool.fetchrow(_GET_DOCUMENT, kind, doc_id))

    async def find_document(self, kind: str, unique_key: str) -> Document | None:
        return await self._document_reads.read((kind, unique_key))

    @boundary
    async def _find_documents(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Document]:
        kinds, unique_keys = [kind for kind, _ in keys], [key for _, key in keys]
        rows = await self._pool.fetch(_FIND_DOCUMENTS, kinds, unique_keys)
        return {(row["kind"], row["unique_key"]): _document(row) for row in rows}

    @boundary
    async def list_documents(self, kind: str, owner: str | None = None) -> list[Document]:
        return [_document(row) for row in await self._pool.fetch(_LIST_DOCUMENTS, kind, owner)]

    @boundary
    async def replace_documents(self, kind: str, documents: Sequence[Document]) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_DELETE_DOCUMENTS, kind)
            if documents:
                await conn.executemany(UPSERT_DOCUMENT, [document_args(d, kind) for d in documents])

    @boundary
    async def rebuild_documents(
        self, kinds: Collection[str], fold: Callable[[list[DomainEvent]], Sequence[Document]]
    ) -> dict[str, int]:
        wanted = sorted(set(kinds))
        async with self._pool.dedicated(command_timeout=_REBUILD_TIMEOUT) as conn, \
                conn.transaction():
            await conn.execute(_LOCK_DOCUMENTS)
            events = [DomainEvent(**row) for row in await conn.fetch(_READ_ALL_EVENTS)]
            documents = fold(events)
            counts = count_by_kind(wanted, documents)
            for kind in wanted:
                await conn.execute(_DELETE_DOCUMENTS, kind)
            if documents:
                await conn.executemany(UPSERT_DOCUMENT, [document_args(d) for d in documents])
        return counts


def _document(row: asyncpg.Record) -> Document:
    return Document(**row)
