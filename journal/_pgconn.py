"""Connections to PostgreSQL: the pool with its JSON codec and its timeouts, and
error translation.

asyncpg's exceptions are translated at the journal's boundary, by class, never by
message: a unique violation is an IntegrityError, a lost or hung server is
JournalUnavailableError (the write did not happen, or did with its answer lost:
either way the same write may be sent again).

Every wait on the server is bounded (`database_timeout`): a new connection's
handshake, a wait for a pooled connection, each statement (asyncpg's
command_timeout) and giving a connection back. A hung server (frozen, or cut off
without a reset) is then an outage, JournalUnavailableError, as a stopped one is,
and never a hang. A statement that timed out may still commit on the server: its
outcome is unknown, which the runtime handles by sending the very same batch again
(an identical re-append is a no-op).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Final, ParamSpec, TypeAlias, TypeVar

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from .errors import (
    FencedError,
    IntegrityError,
    JournalUnavailableError,
    StaleRunError,
    WorkflowNotFoundError,
)

__all__ = [
    "DEFAULT_TIMEOUT", "Conn", "Pool", "boundary", "create_pool", "database_timeout",
    "translated",
]

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

_P = ParamSpec("_P")
_R = TypeVar("_R")

# Failures that mean "the database cannot be reached right now", not "this query is wrong".
_UNAVAILABLE: Final = (
    OSError,  # refused, reset, socket missing
    # No answer in time: a statement (command_timeout), a connect, a wait for a pooled
    # connection. (asyncio.TimeoutError is TimeoutError, itself an OSError.)
    TimeoutError,
    asyncpg.QueryCanceledError,  # cancelled (ours after a timeout, or an operator's)
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, and a connection that died
    asyncpg.InterfaceError,  # the connection or the pool was closed under us
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    # "cannot switch to state 12; another operation (2) is in progress": an idle
    # pooled connection took the server's FATAL (shutting down) and was borrowed
    # before it closed. The statement was never sent.
    asyncpg.InternalClientError,
)

# jsonb's binary wire format is a version byte (1), then the JSON text.
_JSON_ENCODER: Final = msgspec.json.Encoder()
_JSON_DECODER: Final = msgspec.json.Decoder()


def _encode_jsonb(value: Any) -> bytes:
    return b"\x01" + _JSON_ENCODER.encode(value)


def _decode_jsonb(data: bytes) -> Any:
    return _JSON_DECODER.decode(memoryview(data)[1:])


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        format="binary",
    )


# -- timeouts ----------------------------------------------------------------------

# Seconds any one wait on the server may take. A frozen server is noticed after this
# long (the node's session and /readyz notice sooner: they ping every second). A
# busy one stays far inside it: on the 2-core machine of README's figures, a group
# write of 512 batches (the largest) took 0.3 s at most with 2,000 workflows in
# flight, and a handshake or a wait for a pooled connection takes milliseconds.
DEFAULT_TIMEOUT: Final = 5.0
_TIMEOUT_SETTING: Final = "RETINUE_DB_TIMEOUT"


def database_timeout() -> float:
    """Seconds each wait on the database may take: $RETINUE_DB_TIMEOUT (plain
    seconds) if set, else DEFAULT_TIMEOUT. Raises ValueError on a bad value."""
    text = os.environ.get(_TIMEOUT_SETTING, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{_TIMEOUT_SETTING} must be a positive number of seconds, "
                         f"not {text!r}")
    return seconds


async def create_pool(
    dsn: str, *, min_size: int, max_size: int, timeout: float | None = None
) -> Pool:
    """A pool whose connections read and write jsonb as plain JSON values, and whose
    every wait is bounded by `timeout` seconds (default: `database_timeout()`).
    Raises JournalUnavailableError if the server cannot be reached."""
    seconds = database_timeout() if timeout is None else timeout
    with translated():
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=_init_connection,
            reset=_keep_session, command_timeout=seconds, timeout=seconds,
            # 0: no idle-connection timer, which asyncpg would otherwise arm on every
            # release and disarm on every acquire (two timer-heap operations per
            # statement; the pool is small and its connections are wanted).
            max_inactive_connection_lifetime=0,
        )
    return Pool(pool, dsn, seconds)


class Pool:
    """asyncpg's pool, every wait bounded by `timeout` seconds: the handshake of a
    new connection, a wait for a free one, each statement, and giving one back.

    A connection whose statement timed out, broke off or was cancelled (its caller
    gave up) is closed at once, never handed out again: its protocol state is
    unknown, and asyncpg would otherwise first send the server a cancel request
    through a NEW connection (which a frozen server never accepts) and wait for it,
    in a task of its own whose failure nobody would see.

    A connection given back while nobody waits for one stays borrowed, idle here,
    and the next statement takes it without asyncpg's bookkeeping: its acquire
    with a timeout runs in a task of its own, and its release in another (shield),
    about 50 us of CPU per statement, a third of a one-row statement's client cost
    (docs/performance.md). Once anyone waits in asyncpg's acquire, connections go
    back to asyncpg's pool, which hands them to the waiters: the pool's size and
    its waiters' order are asyncpg's, as before. An idle one the server closed is
    dropped (asyncpg took it back itself, and reconnects it when next lent)."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], dsn: str, timeout: float) -> None:
        self._pool = pool
        self._dsn = dsn
        self.timeout = timeout
        self._idle: list[PoolConnectionProxy[asyncpg.Record]] = []
        self._waiting = 0  # callers inside asyncpg's acquire
        self._closing = False

    async def _borrow(self) -> PoolConnectionProxy[asyncpg.Record]:
        while self._idle:
            conn = self._idle.pop()
            if is_open(conn):
                return conn
            _terminate(conn)  # back to asyncpg's pool, which reconnects it when next lent
        self._waiting += 1
        try:
            lent: PoolConnectionProxy[asyncpg.Record] = await self._pool.acquire(
                timeout=self.timeout
            )
            return lent
        finally:
            self._waiting -= 1

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Conn]:
        """A pooled connection for the block. Raises asyncpg's errors, or TimeoutError
        if none is free (or can be made) in time."""
        conn = await self._borrow()
        reusable = False
        try:
            yield conn
            reusable = True
        except _UNAVAILABLE:
            raise
        except Exception:
            reusable = True  # a statement failed (a constraint, a fence), not the connection
            raise
        finally:
            await self._give_back(conn, reusable)

    def _keeps_idle(self, conn: PoolConnectionProxy[asyncpg.Record]) -> bool:
        """Whether `conn`, given back, stays idle here for the next statement: nobody
        waits in asyncpg's acquire (else asyncpg hands it to them), the pool is not
        closing, and the connection is open with no transaction left on it."""
        return (not self._waiting and not self._closing and is_open(conn)
                and not conn.is_in_transaction())

    async def _give_back(self, conn: PoolConnectionProxy[asyncpg.Record], reusable: bool) -> None:
        """Release `conn` to the pool, or close it now if its state is unknown (it
        returns to the pool empty, and reconnects when next borrowed)."""
        if not reusable:
            _terminate(conn)
            return
        if self._keeps_idle(conn):
            self._idle.append(conn)
            return
        try:
            await self._pool.release(conn, timeout=self.timeout)
        except _UNAVAILABLE:
            _terminate(conn)

    @contextlib.asynccontextmanager
    async def dedicated(
        self, *, command_timeout: float | None = None
    ) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
        """A connection of its own, outside the pool, closed after the block: for
        session state (LISTEN, session locks) or statements longer than the pool's
        `timeout` (migrations). Raises asyncpg's errors, or TimeoutError."""
        conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(
            self._dsn, timeout=self.timeout, command_timeout=command_timeout or self.timeout
        )
        try:
            await _init_connection(conn)
            yield conn
        finally:
            # Closing drops the session's locks and LISTENs. terminate() still says
            # goodbye to the server; close() would first wait for any cancel in flight.
            conn.terminate()

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self.run(lambda conn: conn.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await self.run(lambda conn: conn.fetchrow(query, *args))

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self.run(lambda conn: conn.fetchval(query, *args))

    async def execute(self, query: str, *args: Any) -> str:
        return await self.run(lambda conn: conn.execute(query, *args))

    async def run(self, call: Callable[[Conn], Awaitable[_R]]) -> _R:
        """`call(conn)` on a pooled connection (one statement, or several without a
        transaction); raises what `call` raises, or TimeoutError as `acquire` does."""
        # `acquire` without its context manager: one statement is the hot path
        # (lookups), and the generator measurably slows a trivial query.
        conn = await self._borrow()
        reusable = False
        try:
            result = await call(conn)
            reusable = True
            return result
        except _UNAVAILABLE:
            raise
        except Exception:
            reusable = True  # a statement failed, not the connection
            raise
        finally:
            await self._give_back(conn, reusable)

    async def close(self) -> None:
        """Close every connection gracefully, once borrowed ones are back. Unbounded:
        bound it at the call site."""
        self._closing = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._give_back(conn, reusable=True)
        await self._pool.close()

    def terminate(self) -> None:
        """Close every connection now."""
        self._closing = True
        self._idle.clear()  # asyncpg's terminate closes borrowed connections too
        self._pool.terminate()


def is_open(conn: Conn) -> bool:
    """Whether `conn` can take a statement: not closed, and (a pooled one) not
    handed back already, as asyncpg does by itself when the server closes it."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # released: the proxy has no connection anymore
        return False


def _terminate(conn: Conn) -> None:
    """Close `conn` now: a no-op if it is closed, or already back in the pool (the
    pool takes a connection that died back by itself)."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


async def _keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Released connections skip asyncpg's reset query (UNLISTEN *, RESET ALL,
    advisory unlock): the journal sets no session state and takes only
    transaction-scoped locks, and the query cost a round trip per release. asyncpg
    still rolls back an open transaction (a cancelled call) before this runs."""


# SQLSTATEs raised by retinue_append (migrations 2 and 4); asyncpg has no class for them.
_STALE_LEASE: Final = "RF001"
_UNKNOWN_WORKFLOW: Final = "RF002"
_STALE_RUN: Final = "RF003"


def _own_error(exc: asyncpg.PostgresError) -> Exception | None:
    """The journal error for one of Retinue's own SQLSTATEs, else None."""
    code = getattr(exc, "sqlstate", None)
    detail = getattr(exc, "detail", None) or ""
    if code == _STALE_LEASE:
        partition, _, epoch = detail.partition(":")
        return FencedError(int(partition), int(epoch))
    if code == _UNKNOWN_WORKFLOW:
        return WorkflowNotFoundError(detail)
    if code == _STALE_RUN:
        return StaleRunError(detail, getattr(exc, "message", "") or str(exc))
    return None


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Turn asyncpg's exceptions into the journal's, by class."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        constraint = exc.constraint_name or "unique"
        raise IntegrityError(constraint, exc.detail or exc.message) from exc
    except _UNAVAILABLE as exc:
        raise JournalUnavailableError(_unavailable_detail(exc)) from exc
    except asyncpg.PostgresError as exc:
        own = _own_error(exc)
        if own is None:
            raise
        raise own from exc


def _unavailable_detail(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "TimeoutError: the database gave no answer in time; a write may have landed"
    return f"{type(exc).__name__}: {exc}"


def boundary(method: Callable[_P, Awaitable[_R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """Decorate a journal method so that it raises only the journal's errors."""

    @functools.wraps(method)
    async def translating(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with translated():
            return await method(*args, **kwargs)

    return translating
