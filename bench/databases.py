"""`fresh_database`: a new, empty PostgreSQL database for one test or benchmark.

The one place that creates and drops throwaway databases (the tests' `pg_dsn`
fixture, the benchmarks' `bench_database`)."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg

__all__ = ["database_dsn", "fresh_database"]

_NAME = re.compile(r"[a-z0-9_]{1,40}")


def database_dsn(server_dsn: str, database: str) -> str:
    """`server_dsn` (a postgresql:// URL) naming `database` instead of its own."""
    return urlunsplit(urlsplit(server_dsn)._replace(path="/" + database))


@asynccontextmanager
async def fresh_database(server_dsn: str, prefix: str = "test") -> AsyncIterator[str]:
    """Create a uniquely named database (`<prefix>_<random hex>`) on the server of
    `server_dsn` (a database there that we may connect to, e.g. `postgres`); yield
    its DSN; drop it afterwards, whatever is still connected to it."""
    if not _NAME.fullmatch(prefix):
        raise ValueError(f"database prefix {prefix!r} must match {_NAME.pattern}")
    name = f"{prefix}_{secrets.token_hex(6)}"
    # Identifiers cannot be parameters; `name` is ours, made of [a-z0-9_]. A new
    # admin connection each time: the server may have restarted in between.
    await _execute(server_dsn, f'CREATE DATABASE "{name}"')
    try:
        yield database_dsn(server_dsn, name)
    finally:
        with anyio.CancelScope(shield=True):
            await _execute(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _execute(server_dsn: str, sql: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()
