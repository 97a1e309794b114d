"""The journal's pool keeps given-back connections idle for the next statement
(journal/_pgconn.py `Pool`), without ever starving a caller that waits in asyncpg's
own acquire, and without handing out a connection the server has closed."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from journal._pgconn import create_pool, is_open

pytestmark = pytest.mark.anyio

_PID = "SELECT pg_backend_pid()"


async def test_a_statement_takes_the_connection_the_last_one_gave_back(pg_dsn: str) -> None:
    pool = await create_pool(pg_dsn, min_size=1, max_size=4, timeout=5)
    try:
        pids = {await pool.fetchval(_PID) for _ in range(20)}
        async with pool.acquire() as conn:
            pids.add(await conn.fetchval(_PID))
        # Twenty-one statements one after another, one server session: nobody
        # waited, so every connection given back stayed idle here and was taken next.
        assert len(pids) == 1
    finally:
        await pool.close()


async def test_a_caller_waiting_for_a_connection_gets_the_one_given_back(pg_dsn: str) -> None:
    # One connection: while it is held, a second caller waits inside asyncpg's
    # acquire. Had the holder kept it idle on giving it back, the waiter would wait
    # out the pool's timeout (TimeoutError), holding nothing.
    pool = await create_pool(pg_dsn, min_size=1, max_size=1, timeout=3)
    try:
        answers: list[int] = []
        async with anyio.create_task_group() as tg:
            async with pool.acquire() as conn:
                holder = await conn.fetchval(_PID)

                async def wait_for_it() -> None:
                    answers.append(await pool.fetchval(_PID))

                tg.start_soon(wait_for_it)
                await anyio.wait_all_tasks_blocked()
        assert answers == [holder]
    finally:
        await pool.close()


async def test_an_idle_connection_the_server_closed_is_replaced(pg_dsn: str) -> None:
    pool = await create_pool(pg_dsn, min_size=1, max_size=2, timeout=5)
    admin = await asyncpg.connect(pg_dsn)
    try:
        first = await pool.fetchval(_PID)
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
        # The client sees the server's goodbye once its loop reads the socket.
        with anyio.fail_after(5):
            while is_open(pool._idle[0]):  # noqa: SLF001 - the state under test
                await anyio.sleep(0.01)
        second = await pool.fetchval(_PID)
        assert second != first
    finally:
        await admin.close()
        await pool.close()


async def test_closing_gives_idle_connections_back_first(pg_dsn: str) -> None:
    # asyncpg's close waits for every borrowed connection: idle ones here are
    # borrowed, so closing without giving them back would wait forever.
    pool = await create_pool(pg_dsn, min_size=1, max_size=3, timeout=5)
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(pool.fetchval, "SELECT pg_sleep(0.05)")
    assert len(pool._idle) >= 1  # noqa: SLF001
    with anyio.fail_after(5):
        await pool.close()
