"""Fixtures shared by the tests.

PostgreSQL: ONE embedded server for the whole session (or the server named by
RETINUE_TEST_DATABASE_URL), and a fresh database per test that asks for one.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from journal import EmbeddedPostgres, Journal, MemoryJournal, PostgresJournal


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


# -- PostgreSQL ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The DSN of a server the tests may create databases on (its `postgres` database)."""
    external = os.environ.get("RETINUE_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres") / "data")
    dsn = server.start()
    try:
        yield dsn
    finally:
        server.stop()


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture
async def pg_dsn(postgres_server_dsn: str) -> AsyncIterator[str]:
    """The DSN of a fresh, empty database, dropped after the test."""
    name = f"test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(postgres_server_dsn)
    try:
        # Identifiers cannot be parameters; `name` is ours, made of [a-z0-9_].
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _with_database(postgres_server_dsn, name)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def postgres_journal(pg_dsn: str) -> AsyncIterator[PostgresJournal]:
    journal = await PostgresJournal.connect(pg_dsn)
    try:
        yield journal
    finally:
        await journal.aclose()


# -- both journals ----------------------------------------------------------------------


@pytest.fixture(params=["memory", "postgres"])
def journal(request: pytest.FixtureRequest) -> Journal:
    """The same tests against MemoryJournal and PostgresJournal (a fresh database)."""
    if request.param == "memory":
        return MemoryJournal()
    postgres: PostgresJournal = request.getfixturevalue("postgres_journal")
    return postgres
