"""Connections to PostgreSQL: the pool with its JSON codec, and error translation.

asyncpg's exceptions are translated at the journal's boundary, by class, never by
message: a unique violation is an IntegrityError, a lost server is
JournalUnavailableError (the write did not happen and may be retried).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterator
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

__all__ = ["Conn", "Pool", "boundary", "create_pool", "translated"]

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"

_P = ParamSpec("_P")
_R = TypeVar("_R")

# Failures that mean "the database cannot be reached right now", not "this query is wrong".
_UNAVAILABLE: Final = (
    OSError,  # refused, reset, socket missing, connect timeout
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


async def create_pool(dsn: str, *, min_size: int, max_size: int) -> Pool:
    """A pool whose connections read and write jsonb as plain JSON values.
    Raises JournalUnavailableError if the server cannot be reached."""
    with translated():
        return await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=_init_connection,
            reset=_keep_session,
        )


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
        raise JournalUnavailableError(f"{type(exc).__name__}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        own = _own_error(exc)
        if own is None:
            raise
        raise own from exc


def boundary(method: Callable[_P, Awaitable[_R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """Decorate a journal method so that it raises only the journal's errors."""

    @functools.wraps(method)
    async def translating(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with translated():
            return await method(*args, **kwargs)

    return translating
