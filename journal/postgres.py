"""PostgresJournal: the journal contract on PostgreSQL, through an asyncpg pool.

Every public method is a boundary (`_pgconn.boundary`): it raises the journal's
own errors only. Timestamps come from the database clock (`now()`), timezone-aware.
The write path lives in `_pgwrite`, ready for a group-commit writer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
import asyncpg
from anyio.abc import TaskStatus

from ._groupcommit import GroupCommitter, GroupStatistics
from ._pgconn import Conn, Pool, boundary, create_pool, translated
from ._pgwrite import UPSERT_DOCUMENT, append_batches, document_args, workflow_args
from .base import ClusterView, Journal, PartitionLease, WaitingStep
from .embedded import EmbeddedPostgres
from .errors import InvalidTransitionError, JournalUnavailableError, WorkflowNotFoundError
from .migrations import migrate
from .records import (
    FINISHED_STATUSES,
    Batch,
    DeadLetter,
    Document,
    DomainEvent,
    NewWorkflow,
    Signal,
    StepRecord,
    WorkflowPage,
    WorkflowRow,
)

__all__ = ["PostgresJournal", "open_journal"]

_log = logging.getLogger("retinue.journal")

_R = TypeVar("_R")

_CLOSE_TIMEOUT: Final = 10.0
# Migrations run on a connection of their own, with room for DDL on big tables and
# for another process's migration (they take turns on a lock).
_MIGRATION_TIMEOUT: Final = 600.0


# -- SQL ------------------------------------------------------------------------

_WORKFLOW_COLUMNS: Final = """
    id, position, name, actor_key, partition, status, input, result, error,
    idempotency_key, request_hash, parent_id, trace_id, cancel_requested,
    created_at, updated_at, run_id
"""
_STEP_COLUMNS: Final = """
    workflow_id, seq, name, kind, status, attempt, input, output, error,
    started_at, finished_at, fire_at, history, run_id
"""
_UNFINISHED: Final = "status NOT IN ('completed', 'failed', 'cancelled')"

_CREATE_WORKFLOW: Final = (
    """
INSERT INTO workflows (id, name, actor_key, partition, input, idempotency_key,
                       request_hash, parent_id, trace_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT DO NOTHING
RETURNING"""
    + _WORKFLOW_COLUMNS
)
# The row that made a create a no-op: the same id first, as MemoryJournal does.
_CONFLICTING_WORKFLOW: Final = (
    "SELECT"
    + _WORKFLOW_COLUMNS
    + """FROM workflows WHERE id = $1 OR idempotency_key = $2
ORDER BY id = $1 DESC LIMIT 1"""
)
_GET_WORKFLOW: Final = "SELECT" + _WORKFLOW_COLUMNS + "FROM workflows WHERE id = $1"
_LIST_WORKFLOWS: Final = (
    "SELECT"
    + _WORKFLOW_COLUMNS
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
_CHILDREN: Final = (
    "SELECT" + _WORKFLOW_COLUMNS + "FROM workflows WHERE parent_id = $1 ORDER BY position"
)
_UNFINISHED_WORKFLOWS: Final = (
    "SELECT"
    + _WORKFLOW_COLUMNS
    + "FROM workflows WHERE "
    + _UNFINISHED
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
    + _WORKFLOW_COLUMNS
    + "FROM workflows w WHERE w."
    + _UNFINISHED
    + """ AND w.partition = ANY($1::integer[])
  AND (w.status = 'pending' OR w.cancel_requested
       OR EXISTS (SELECT 1 FROM signals s
                  WHERE s.workflow_id = w.id AND NOT s.consumed AND s.id > $2))
ORDER BY w.position"""
)
_NEWEST_SIGNAL: Final = "SELECT coalesce(max(id), 0) FROM signals"

# -- scale-out: nodes and leases (migration 3) --------------------------------------

# The advisory lock (classid) an attached node's session holds, with its session_key.
_SESSION_LOCK: Final = 24177
_WAKE_CHANNEL: Final = "retinue_wake"

_NEXT_SESSION_KEY: Final = "SELECT nextval('retinue_node_sessions')::integer"
_LOCK_SESSION: Final = "SELECT pg_advisory_lock($1, $2)"
_ATTACH_NODE: Final = """
INSERT INTO nodes (node_id, session_key) VALUES ($1, $2)
ON CONFLICT (node_id) DO UPDATE SET session_key = excluded.session_key
"""
_PING: Final = "SELECT 1"
_HEARTBEAT: Final = """
INSERT INTO nodes (node_id, heartbeat_at, expires_at)
VALUES ($1, now(), now() + make_interval(secs => $2))
ON CONFLICT (node_id) DO UPDATE SET
    heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at
"""
# Live: the heartbeat lease runs, and the session holds its lock (attached) or the
# last heartbeat is recent ($1 seconds).
_LIVE_NODES: Final = f"""
SELECT n.node_id FROM nodes n
WHERE n.expires_at > now()
  AND (n.heartbeat_at > now() - make_interval(secs => $1)
       OR EXISTS (
           SELECT 1 FROM pg_locks l
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND l.classid = {_SESSION_LOCK} AND l.objid = n.session_key::oid))
"""
_LEASES: Final = """
SELECT partition, owner, epoch, coalesce(lease_expires_at <= now(), true) AS expired
FROM partitions ORDER BY partition
"""
_LEAVE: Final = "DELETE FROM nodes WHERE node_id = $1"
# Rows are locked in partition order, as retinue_append locks them (FOR SHARE):
# never a deadlock. A partition being appended to right now is skipped: its
# owner is alive and writing; the next heartbeat tries again.
_ACQUIRE_LEASES: Final = (
    "WITH live AS ("
    + _LIVE_NODES.replace("$1", "$4")
    + """),
takeable AS (
    SELECT p.partition FROM partitions p
    WHERE p.partition = ANY($2::integer[])
      AND (p.owner = '' OR p.owner = $1 OR p.lease_expires_at IS NULL
           OR p.lease_expires_at <= now() OR p.owner NOT IN (SELECT node_id FROM live))
    ORDER BY p.partition
    FOR UPDATE OF p SKIP LOCKED
)
UPDATE partitions p
SET owner = $1, epoch = p.epoch + 1, lease_expires_at = now() + make_interval(secs => $3)
FROM takeable WHERE p.partition = takeable.partition
RETURNING p.partition, p.epoch
"""
)
_HELD: Final = """
WITH held AS (
    SELECT p.partition FROM partitions p
    JOIN unnest($2::integer[], $3::bigint[]) AS h(partition, epoch)
        ON h.partition = p.partition AND h.epoch = p.epoch
    WHERE p.owner = $1
    ORDER BY p.partition
    FOR UPDATE OF p
)
"""
_RENEW_LEASES: Final = (
    _HELD
    + """UPDATE partitions p SET lease_expires_at = now() + make_interval(secs => $4)
FROM held WHERE p.partition = held.partition
RETURNING p.partition, p.epoch"""
)
_RELEASE_LEASES: Final = (
    _HELD
    + """UPDATE partitions p SET owner = '', lease_expires_at = now()
FROM held WHERE p.partition = held.partition"""
)
_WAKE: Final = f"SELECT pg_notify('{_WAKE_CHANNEL}', payload) FROM unnest($1::text[]) AS payload"
# A lost session is tried again after this long (seconds, doubling up to the cap).
_REATTACH_BACKOFF: Final = (0.1, 2.0)

_LOCK_WORKFLOW_STATUS: Final = "SELECT status FROM workflows WHERE id = $1 FOR UPDATE"
# Descends only through unfinished workflows, as MemoryJournal does: a finished
# child's own children are left alone.
_REQUEST_CANCEL: Final = (
    """
WITH RECURSIVE tree(id) AS (
    SELECT id FROM workflows WHERE id = $1
    UNION
    SELECT w.id FROM workflows w JOIN tree t ON w.parent_id = t.id
    WHERE w."""
    + _UNFINISHED
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
    "UPDATE workflows SET status = 'pending', error = NULL, updated_at = now() WHERE id = $1"
)

_SIGNAL_COLUMNS: Final = " id, workflow_id, name, payload, consumed, created_at "
_SEND_SIGNAL: Final = (
    """
INSERT INTO signals (workflow_id, name, payload)
SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM workflows WHERE id = $1)
RETURNING"""
    + _SIGNAL_COLUMNS
)
_NEXT_SIGNAL: Final = (
    "SELECT"
    + _SIGNAL_COLUMNS
    + """FROM signals
WHERE workflow_id = $1 AND name = $2 AND NOT consumed
ORDER BY id LIMIT 1"""
)
_GET_WORKFLOW_EVENT: Final = "SELECT value FROM workflow_events WHERE workflow_id = $1 AND key = $2"

_EVENT_COLUMNS: Final = " actor_key, seq, type, payload, workflow_id, created_at "
_READ_EVENTS: Final = (
    "SELECT" + _EVENT_COLUMNS + "FROM events WHERE actor_key = $1 AND seq > $2 ORDER BY seq"
)
# COLLATE "C": the same order as Python's str comparison, whatever the database locale.
_READ_ALL_EVENTS: Final = (
    "SELECT" + _EVENT_COLUMNS + 'FROM events ORDER BY actor_key COLLATE "C", seq'
)
_LAST_EVENT_SEQ: Final = "SELECT coalesce(max(seq), 0) FROM events WHERE actor_key = $1"

_DOCUMENT_COLUMNS: Final = " kind, id, data, unique_key, owner, updated_at "
_GET_DOCUMENT: Final = "SELECT" + _DOCUMENT_COLUMNS + "FROM documents WHERE kind = $1 AND id = $2"
_FIND_DOCUMENT: Final = (
    "SELECT" + _DOCUMENT_COLUMNS + "FROM documents WHERE kind = $1 AND unique_key = $2"
)
_LIST_DOCUMENTS: Final = (
    "SELECT"
    + _DOCUMENT_COLUMNS
    + """FROM documents
WHERE kind = $1 AND ($2::text IS NULL OR owner = $2)
ORDER BY id COLLATE "C\""""
)
_DELETE_DOCUMENTS: Final = "DELETE FROM documents WHERE kind = $1"

_DEAD_LETTER_COLUMNS: Final = " id, actor_key, message, error, created_at, redelivered_at "
_ADD_DEAD_LETTER: Final = (
    "INSERT INTO dead_letters (actor_key, message, error) VALUES ($1, $2, $3) RETURNING"
    + _DEAD_LETTER_COLUMNS
)
_LIST_DEAD_LETTERS: Final = (
    "SELECT"
    + _DEAD_LETTER_COLUMNS
    + "FROM dead_letters WHERE $1 OR redelivered_at IS NULL ORDER BY id"
)
_TAKE_DEAD_LETTER: Final = (
    """
UPDATE dead_letters SET redelivered_at = now()
WHERE id = $1 AND redelivered_at IS NULL
RETURNING"""
    + _DEAD_LETTER_COLUMNS
)


# -- the journal ------------------------------------------------------------------


class PostgresJournal(Journal):
    """The journal on PostgreSQL. Build it with `await PostgresJournal.connect(dsn)`
    (or `open_journal`), and close it with `aclose()`."""

    def __init__(self, pool: Pool, *, max_group: int = 512, max_writers: int = 2) -> None:
        self._pool = pool
        self._closed = False
        # A group write waits for a connection, then runs one statement, each bounded
        # by the pool's timeout; past both (and a margin) the writer gives up anyway.
        self._committer = GroupCommitter(
            self._append_group, max_batch=max_group, max_writers=max_writers,
            write_timeout=2 * pool.timeout + 1.0,
        )

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
        await self._pool.fetchval(_PING)

    # -- scale-out: nodes, partition leases, wake-ups ------------------------

    @boundary
    async def heartbeat(self, node_id: str, ttl: float, *, stale_after: float) -> ClusterView:
        async with self._pool.acquire() as conn:
            await conn.execute(_HEARTBEAT, node_id, float(ttl))
            live = await conn.fetch(_LIVE_NODES, float(stale_after))
            leases = await conn.fetch(_LEASES)
        return ClusterView(
            live_nodes=tuple(sorted(row["node_id"] for row in live)),
            leases=tuple(PartitionLease(**row) for row in leases),
        )

    @boundary
    async def leave(self, node_id: str) -> None:
        await self._pool.execute(_LEAVE, node_id)

    @boundary
    async def acquire_leases(
        self, node_id: str, partitions: Collection[int], ttl: float, *, stale_after: float
    ) -> dict[int, int]:
        rows = await self._pool.fetch(
            _ACQUIRE_LEASES, node_id, sorted(partitions), float(ttl), float(stale_after)
        )
        return {row["partition"]: row["epoch"] for row in rows}

    @boundary
    async def renew_leases(
        self, node_id: str, held: Mapping[int, int], ttl: float
    ) -> dict[int, int]:
        rows = await self._pool.fetch(_RENEW_LEASES, node_id, list(held), list(held.values()),
                                      float(ttl))
        return {row["partition"]: row["epoch"] for row in rows}

    @boundary
    async def release_leases(self, node_id: str, held: Mapping[int, int]) -> None:
        await self._pool.execute(_RELEASE_LEASES, node_id, list(held), list(held.values()))

    async def serve_node(
        self,
        node_id: str,
        on_wake: Callable[[str], None],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """A session (a connection of its own) that holds the node's advisory lock
        and LISTENs for wake-ups; pinged every second, and re-established with
        backoff after a loss: a database restart, or a server that stops answering
        (the ping, like every statement, is bounded by the database timeout).
        Raises JournalUnavailableError only if the first attempt fails."""
        started = False
        delay = _REATTACH_BACKOFF[0]
        while True:
            try:
                with translated():
                    async with self._session(node_id, on_wake) as conn:
                        if not started:
                            task_status.started()
                            started = True
                        delay = _REATTACH_BACKOFF[0]
                        while True:
                            await anyio.sleep(1.0)
                            await conn.fetchval(_PING)
            except JournalUnavailableError as exc:
                if not started:
                    raise
                _log.warning("node %s lost its session (%s); attaching again in %.1f s",
                             node_id, exc, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, _REATTACH_BACKOFF[1])

    @contextlib.asynccontextmanager
    async def _session(
        self, node_id: str, on_wake: Callable[[str], None]
    ) -> AsyncIterator[Conn]:
        """The node attached on a connection outside the pool: closing it (always,
        at the end) drops the lock and the LISTEN, so a session never leaks them
        into pooled work, and a broken one is never reused. Raises asyncpg's errors."""

        def notified(_conn: Any, _pid: int, _channel: str, payload: object) -> None:
            on_wake(str(payload))

        async with self._pool.dedicated() as conn:
            key = await conn.fetchval(_NEXT_SESSION_KEY)
            await conn.execute(_LOCK_SESSION, _SESSION_LOCK, key)
            await conn.execute(_ATTACH_NODE, node_id, key)
            await conn.add_listener(_WAKE_CHANNEL, notified)
            yield conn

    @boundary
    async def wake(self, payloads: Sequence[str]) -> None:
        if payloads:
            await self._pool.execute(_WAKE, list(payloads))

    # -- the write path ---------------------------------------------------

    @property
    def group_statistics(self) -> GroupStatistics:
        """Group-commit counters: batches appended, commits, the largest group."""
        return self._committer.statistics

    async def append(self, batch: Batch) -> None:
        """Group-committed: concurrent appends share one transaction (_groupcommit)."""
        await self._committer.append(batch)

    @boundary
    async def _append_group(self, batches: Sequence[Batch]) -> None:
        async with self._pool.acquire() as conn:
            await append_batches(conn, batches)

    @boundary
    async def create_workflow(self, workflow: NewWorkflow) -> tuple[WorkflowRow, bool]:
        args = workflow_args(workflow)
        while True:
            row = await self._pool.fetchrow(_CREATE_WORKFLOW, *args)
            if row is not None:
                return _workflow(row), True
            # ON CONFLICT DO NOTHING waited for the conflicting insert to commit,
            # so the row is visible now; a loop only if that row's transaction
            # rolled back in between.
            existing = await self._pool.fetchrow(
                _CONFLICTING_WORKFLOW, workflow.id, workflow.idempotency_key
            )
            if existing is not None:
                return _workflow(existing), False

    # -- workflows --------------------------------------------------------

    @boundary
    async def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        return _optional(_workflow, await self._pool.fetchrow(_GET_WORKFLOW, workflow_id))

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
        page = [_workflow(row) for row in rows[:limit]]
        more = len(rows) > limit
        return WorkflowPage(
            workflows=page, next_cursor=str(page[-1].position) if more and page else None
        )

    @boundary
    async def count_workflows_by_status(self) -> dict[str, int]:
        return {row["status"]: row["n"] for row in await self._pool.fetch(_COUNT_BY_STATUS)}

    @boundary
    async def children(self, workflow_id: str) -> list[WorkflowRow]:
        return [_workflow(row) for row in await self._pool.fetch(_CHILDREN, workflow_id)]

    @boundary
    async def unfinished_workflows(
        self, partitions: Collection[int] | None = None, *, waiting: bool = True
    ) -> list[WorkflowRow]:
        wanted = None if partitions is None else list(partitions)
        rows = await self._pool.fetch(_UNFINISHED_WORKFLOWS, wanted, waiting)
        return [_workflow(row) for row in rows]

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
        return [_workflow(row) for row in rows], newest

    @boundary
    async def request_cancel(self, workflow_id: str) -> list[str]:
        async with self._pool.acquire() as conn, conn.transaction():
            status = await _lock_status_txn(conn, workflow_id)
            if status in FINISHED_STATUSES:
                raise InvalidTransitionError(workflow_id, status, "cancel")
            return [row["id"] for row in await conn.fetch(_REQUEST_CANCEL, workflow_id)]

    @boundary
    async def retry_workflow(self, workflow_id: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            status = await _lock_status_txn(conn, workflow_id)
            if status != "failed":
                raise InvalidTransitionError(workflow_id, status, "retry")
            await conn.execute(_RETRY_STEPS, workflow_id)
            await conn.execute(_RETRY_WORKFLOW, workflow_id)

    # -- signals and workflow events ----------------------------------------

    @boundary
    async def send_signal(self, workflow_id: str, name: str, payload: Any) -> Signal:
        row = await self._pool.fetchrow(_SEND_SIGNAL, workflow_id, name, payload)
        if row is None:
            raise WorkflowNotFoundError(workflow_id)
        return Signal(**row)

    @boundary
    async def next_signal(self, workflow_id: str, name: str) -> Signal | None:
        row = await self._pool.fetchrow(_NEXT_SIGNAL, workflow_id, name)
        return _optional(lambda r: Signal(**r), row)

    @boundary
    async def get_workflow_event(self, workflow_id: str, key: str) -> tuple[bool, Any]:
        row = await self._pool.fetchrow(_GET_WORKFLOW_EVENT, workflow_id, key)
        return (False, None) if row is None else (True, row["value"])

    # -- domain events and documents ----------------------------------------

    @boundary
    async def read_events(self, actor_key: str, after_seq: int = 0) -> list[DomainEvent]:
        rows = await self._pool.fetch(_READ_EVENTS, actor_key, after_seq)
        return [DomainEvent(**row) for row in rows]

    @boundary
    async def read_all_events(self) -> list[DomainEvent]:
        return [DomainEvent(**row) for row in await self._pool.fetch(_READ_ALL_EVENTS)]

    @boundary
    async def last_event_seq(self, actor_key: str) -> int:
        seq = await self._pool.fetchval(_LAST_EVENT_SEQ, actor_key)
        return int(seq)

    @boundary
    async def get_document(self, kind: str, doc_id: str) -> Document | None:
        return _optional(_document, await self._pool.fetchrow(_GET_DOCUMENT, kind, doc_id))

    @boundary
    async def find_document(self, kind: str, unique_key: str) -> Document | None:
        return _optional(_document, await self._pool.fetchrow(_FIND_DOCUMENT, kind, unique_key))

    @boundary
    async def list_documents(self, kind: str, owner: str | None = None) -> list[Document]:
        return [_document(row) for row in await self._pool.fetch(_LIST_DOCUMENTS, kind, owner)]

    @boundary
    async def replace_documents(self, kind: str, documents: Sequence[Document]) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_DELETE_DOCUMENTS, kind)
            if documents:
                await conn.executemany(UPSERT_DOCUMENT, [document_args(d, kind) for d in documents])

    # -- dead letters ---------------------------------------------------------

    @boundary
    async def add_dead_letter(self, actor_key: str, message: Any, error: str) -> DeadLetter:
        row = await self._pool.fetchrow(_ADD_DEAD_LETTER, actor_key, message, error)
        assert row is not None  # INSERT ... RETURNING always returns the row
        return DeadLetter(**row)

    @boundary
    async def list_dead_letters(self, *, include_redelivered: bool = False) -> list[DeadLetter]:
        rows = await self._pool.fetch(_LIST_DEAD_LETTERS, include_redelivered)
        return [DeadLetter(**row) for row in rows]

    @boundary
    async def take_dead_letter(self, letter_id: int) -> DeadLetter | None:
        row = await self._pool.fetchrow(_TAKE_DEAD_LETTER, letter_id)
        return _optional(lambda r: DeadLetter(**r), row)


async def _lock_status_txn(conn: Conn, workflow_id: str) -> str:
    """Lock the workflow's row for an operator action and return its status."""
    status: str | None = await conn.fetchval(_LOCK_WORKFLOW_STATUS, workflow_id)
    if status is None:
        raise WorkflowNotFoundError(workflow_id)
    return status


def _workflow(row: asyncpg.Record) -> WorkflowRow:
    return WorkflowRow(**row)


def _document(row: asyncpg.Record) -> Document:
    return Document(**row)


def _optional(convert: Callable[[asyncpg.Record], _R], row: asyncpg.Record | None) -> _R | None:
    return None if row is None else convert(row)


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
