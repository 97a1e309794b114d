"""PostgresJournal's nodes, partition leases and wake-ups (the `Cluster` protocol).

A node is attached by a session of its own that holds an advisory lock (so a
killed process is seen at once) and LISTENs for wake-ups; leases are rows of
`partitions`, on the database clock (migration 3).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import Any, Final

import anyio
from anyio.abc import TaskStatus

from ._pg_shared import PING, PostgresBase
from ._pgconn import Conn, boundary, translated
from .base import Cluster, ClusterView, PartitionLease
from .errors import JournalUnavailableError

__all__ = ["PostgresCluster"]

_log = logging.getLogger("retinue.journal")

# The advisory lock (classid) an attached node's session holds, with its session_key.
_SESSION_LOCK: Final = 24177
_WAKE_CHANNEL: Final = "retinue_wake"
_NEXT_SESSION_KEY: Final = "SELECT nextval('retinue_node_sessions')::integer"
_LOCK_SESSION: Final = "SELECT pg_advisory_lock($1, $2)"
_ATTACH_NODE: Final = """
INSERT INTO nodes (node_id, session_key) VALUES ($1, $2)
ON CONFLICT (node_id) DO UPDATE SET session_key = excluded.session_key
"""
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


class PostgresCluster(PostgresBase, Cluster):
    """Nodes, leases and wake-ups on PostgreSQL."""

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
    async def cluster_view(self, *, stale_after: float) -> ClusterView:
        async with self._pool.acquire() as conn:
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
                            await conn.fetchval(PING)
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
