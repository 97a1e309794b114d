"""floor: raw asyncpg inserts on the same server, the physical ceiling of a journal.

Single-row autocommit transactions from many connections, then the same rows
batched per transaction. Run: python -m bench floor [--seconds 5] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio
import asyncpg

from .common import bench_database, emit, machine

CREATE = """
CREATE TABLE floor_rows (
    workflow_id text NOT NULL,
    seq int NOT NULL,
    status text NOT NULL,
    output jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, seq)
)
"""
_INSERT_ONE = "INSERT INTO floor_rows (workflow_id, seq, status, output) VALUES ($1, $2, $3, $4)"
_INSERT_MANY = """
INSERT INTO floor_rows (workflow_id, seq, status, output)
SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::jsonb[])
"""
_PAYLOAD = '{"id": "8c888861-4a02-5468-9165-25143a43a5fe", "email": "ada@example.com", "ok": true}'


async def drive(pool: asyncpg.Pool, seconds: float, concurrency: int, batch: int) -> int:
    rows = 0
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal rows
        n = 0
        async with pool.acquire() as conn:
            while time.perf_counter() < deadline:
                ids = [f"{concurrency}-{batch}-{w}-{n + i}" for i in range(batch)]
                if batch == 1:
                    await conn.execute(_INSERT_ONE, ids[0], 1, "completed", _PAYLOAD)
                else:
                    await conn.execute(
                        _INSERT_MANY, ids, [1] * batch, ["completed"] * batch, [_PAYLOAD] * batch
                    )
                n += batch
                rows += batch

    async with anyio.create_task_group() as tg:
        for w in range(concurrency):
            tg.start_soon(worker, w)
    return rows


async def run(seconds: float, concurrency: int, batch: int) -> dict[str, Any]:
    async with bench_database("floor") as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
        try:
            await pool.execute(CREATE)
            single = await drive(pool, seconds, concurrency, 1)
            batched = await drive(pool, seconds, concurrency, batch)
            batched_few = await drive(pool, seconds, 4, batch)
        finally:
            await pool.close()
    return {
        "bench": "floor",
        "seconds": seconds,
        "concurrency": concurrency,
        "single_row_rows_per_s": round(single / seconds),
        "batched_rows_per_s": round(batched / seconds),
        "batch_size": batch,
        "batched_4_connections_rows_per_s": round(batched_few / seconds),
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench floor")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    emit(anyio.run(run, args.seconds, args.concurrency, args.batch))


if __name__ == "__main__":
    main()
