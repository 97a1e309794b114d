"""Fixtures shared by the tests.

PostgreSQL: ONE embedded server for the whole session (or the server named by
RETINUE_TEST_DATABASE_URL), and a fresh database per test that asks for one.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from bench.databases import fresh_database
from journal import EmbeddedPostgres, Journal, MemoryJournal, PostgresJournal
from tests.server_support import Served, serving


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


@pytest.fixture
async def pg_dsn(postgres_server_dsn: str) -> AsyncIterator[str]:
    """The DSN of a fresh, empty database, dropped after the test."""
    async with fresh_database(postgres_server_dsn, "test") as dsn:
        yield dsn


@pytest.fixture
async def postgres_journal(pg_dsn: str) -> AsyncIterator[PostgresJournal]:
    journal = await PostgresJournal.connect(pg_dsn)
    try:
        yield journal
    finally:
        await journal.aclose()


@pytest.fixture
async def served(pg_dsn: str) -> AsyncIterator[Served]:
    """The server's app (a real socket) over an open Runtime on a fresh database."""
    async with serving(pg_dsn) as served:
        yield served


# -- both journals ----------------------------------------------------------------------


@pytest.fixture(params=["memory", "postgres"])
def journal(request: pytest.FixtureRequest) -> Journal:
    """The same tests against MemoryJournal and PostgresJournal (a fresh database)."""
    if request.param == "memory":
        return MemoryJournal()
    postgres: PostgresJournal = request.getfixturevalue("postgres_journal")
    return postgres
