"""nodes: invites/s with 1, 2 and 3 `python server.py` processes on one PostgreSQL.

For each node count: a fresh database, N servers (RETINUE_NODE_ID node-i, the
default heartbeat of 1 s and lease TTL of 5 s), started together and left to
share the partitions; then `--invites` distinct invites from `--concurrency`
clients, round-robin over the nodes (a 200 once the invite is written, on
whichever node owns the customer). With N > 1, a failover under load: the last
node gets SIGKILL while the others keep taking invites; reported are the
seconds until its partitions are owned by the others, and until the first
event written by a new owner in them (database clock, from the kill).
Run: python -m bench.nodes [--nodes 1 2 3] [--invites 1000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import functools
import signal
import time
from collections import Counter
from typing import Any

import aiohttp
import anyio
import anyio.abc
import asyncpg

from .common import bench_database, emit, machine, percentile
from .http import log_path, send_invites, stop_server
from .processes import ServerProcess


async def _start(dsn: str, count: int) -> list[ServerProcess]:
    """`count` servers on `dsn` (node-0...), started together and left to share
    the partitions. If one fails to start, those started are killed."""
    nodes = [ServerProcess(database_url=dsn, log=log_path(f"nodes-{count}-node-{i}.log"),
                           name=f"node-{i}") for i in range(count)]
    up = False
    try:
        async with anyio.create_task_group() as tg:
            for node in nodes:
                tg.start_soon(functools.partial(node.start, within=60))
        for node in nodes:
            await node.wait_ready(within=60)
        await _shared(dsn, {str(n.name) for n in nodes})
        up = True
    finally:
        if not up:
            with anyio.CancelScope(shield=True):
                for node in nodes:
                    await node.aclose()
    return nodes


async def _owners(dsn: str) -> Counter[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return Counter(r["owner"] for r in await conn.fetch("SELECT owner FROM partitions"))
    finally:
        await conn.close()


async def _shared(dsn: str, names: set[str], within: float = 30) -> float:
    """Seconds until exactly `names` own every partition."""
    began = time.perf_counter()
    with anyio.fail_after(within):
        while set(await _owners(dsn)) != names:  # noqa: ASYNC110 - polls the database
            await anyio.sleep(0.01)
    return time.perf_counter() - began


async def _failover(dsn: str, nodes: list[ServerProcess], concurrency: int) -> dict[str, Any]:
    """SIGKILL the last node under load; how long until its partitions, and their
    writes, are the others'."""
    victim, survivors = nodes[-1], nodes[:-1]
    conn = await asyncpg.connect(dsn)
    try:
        before = {r["partition"]: r["epoch"] for r in await conn.fetch(
            "SELECT partition, epoch FROM partitions WHERE owner = $1", victim.name)}
        stop = anyio.Event()
        async with aiohttp.ClientSession() as session, anyio.create_task_group() as tg:

            async def keep_inviting() -> None:
                batch = 0
                while not stop.is_set():
                    batch += 1
                    await send_invites(
                        session, [n.url for n in survivors],
                        [f"failover-{batch}-{i}@example.com" for i in range(100)], concurrency,
                    )

            tg.start_soon(keep_inviting)
            await anyio.sleep(1.0)
            victim.send_signal(signal.SIGKILL)
            killed_at = await conn.fetchval("SELECT clock_timestamp()")
            began = time.perf_counter()
            await victim.wait()
            await _shared(dsn, {str(n.name) for n in survivors})
            moved = time.perf_counter() - began
            await anyio.sleep(2.0)
            stop.set()
        first = await conn.fetchval(
            """SELECT min(e.created_at) FROM events e
               JOIN unnest($1::integer[], $2::bigint[]) AS b(partition, epoch)
                 ON b.partition = e.partition AND e.epoch > b.epoch""",
            list(before), list(before.values()))
    finally:
        await conn.close()
    return {
        "killed": victim.name, "partitions": len(before),
        "seconds_to_move": round(moved, 3),
        "seconds_to_first_write": None if first is None
        else round((first - killed_at).total_seconds(), 3),
    }


async def _measure(count: int, invites: int, concurrency: int) -> dict[str, Any]:
    async with bench_database(f"nodes{count}") as dsn:
        nodes = await _start(dsn, count)
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency)
            ) as session:
                urls = [n.url for n in nodes]
                await send_invites(session, urls, [f"warm-{i}@example.com" for i in range(50)], 8)
                seconds, latencies, statuses = await send_invites(
                    session, urls, [f"bench-{i}@example.com" for i in range(invites)],
                    concurrency,
                )
            owners = await _owners(dsn)
            result: dict[str, Any] = {
                "nodes": count, "invites": invites, "concurrency": concurrency,
                "invites_per_s": round(invites / seconds, 1),
                "p50_ms": round(percentile(latencies, 50) * 1000, 1),
                "p99_ms": round(percentile(latencies, 99) * 1000, 1),
                "statuses": dict(statuses),
                "partitions": [owners[str(n.name)] for n in nodes],
            }
            if count > 1:
                result["failover"] = await _failover(dsn, nodes, min(concurrency, 16))
        finally:
            for node in nodes:
                await stop_server(node)
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.nodes")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--invites", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)

    async def run() -> list[dict[str, Any]]:
        return [await _measure(n, args.invites, args.concurrency) for n in args.nodes]

    emit({"bench": "nodes", "machine": machine(), "results": anyio.run(run)})


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
