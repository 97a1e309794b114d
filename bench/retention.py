"""retention: a soak of steady invites against a server with a short retention,
showing that the journal's per-workflow tables stay flat instead of growing.

One `python server.py` on a fresh bench database with RETINUE_RETENTION (default
5 s), RETINUE_PRUNE_INTERVAL (1 s), RETINUE_IDEMPOTENCY_TTL (10 s) and
RETINUE_VERIFICATION_TTL (2 s, so that every invite ends, as expired, soon
after it starts, unless verified). The load generator sends `--rate` invites/s
for `--seconds` (distinct emails; every other one with an Idempotency-Key), and
verifies every fourth customer at once with the token from the event log (a
signal to the invite workflow). Every
`--sample-every` seconds it records, per table (steps, signals,
workflow_events, workflows, events), the row count and pg_total_relation_size,
and the server's retinue_pruned_workflows_total. Steps, signals and workflow
events should level off (about rate x (verification TTL + retention + interval)
workflows' worth); workflows and events, the business record, keep growing.
Run: python -m bench retention [--seconds 180] [--rate 20] [--retention 5]
"""

from __future__ import annotations

import argparse
import re
import time
import uuid
from collections import Counter
from typing import Any, Final

import aiohttp
import anyio
import asyncpg

from actors import customer_actor_key

from .common import bench_database, emit, machine
from .http import log_path, stop_server
from .processes import ServerProcess

TABLES: Final = ("steps", "signals", "workflow_events", "workflows", "events")
# The tables retention empties; they should level off.
PRUNED_TABLES: Final = ("steps", "signals", "workflow_events")
_PRUNED_METRIC: Final = re.compile(r"^retinue_pruned_workflows_total (\S+)$", re.MULTILINE)
_TOKEN: Final = """
SELECT payload->>'token' FROM events WHERE actor_key = $1 AND type = 'CustomerInvited'
"""


async def _sample(conn: asyncpg.Pool[asyncpg.Record], session: aiohttp.ClientSession,
                  url: str, began: float, sent: int) -> dict[str, Any]:
    tables: dict[str, Any] = {}
    for table in TABLES:
        # Table names from the constant above, never from input.
        rows = await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608
        size = await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", table)
        tables[table] = {"rows": rows, "bytes": size}
    pruned = await conn.fetchval("SELECT count(*) FROM workflows WHERE pruned_at IS NOT NULL")
    async with session.get(f"{url}/metrics") as reply:
        found = _PRUNED_METRIC.search(await reply.text())
    return {"t": round(time.perf_counter() - began, 1), "invites_sent": sent,
            "pruned_rows": pruned, "pruned_metric": float(found.group(1)) if found else None,
            "tables": tables}


async def _load(session: aiohttp.ClientSession, pool: asyncpg.Pool[asyncpg.Record], url: str,
                rate: float, seconds: float, statuses: Counter[str], sent: list[int]) -> None:
    """`rate` invites/s for `seconds`, paced from the start (a slow answer does
    not slow the pace: up to 64 are in flight)."""
    limit = anyio.CapacityLimiter(64)
    began = time.perf_counter()

    async def invite(n: int) -> None:
        async with limit:
            headers = {"Idempotency-Key": f"soak-{n}"} if n % 2 else {}
            try:
                async with session.post(f"{url}/customers/invite", headers=headers,
                                        json={"email": f"soak-{uuid.uuid4().hex}@example.com"}
                                        ) as reply:
                    body = await reply.json()
                    statuses[str(reply.status)] += 1
                if n % 4 == 0 and reply.status == 200:
                    await _verify(session, pool, url, body["id"], statuses)
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[f"error:{type(exc).__name__}"] += 1

    async with anyio.create_task_group() as tg:
        n = 0
        while (elapsed := time.perf_counter() - began) < seconds:
            due = n / rate
            if due > elapsed:
                await anyio.sleep(due - elapsed)
            tg.start_soon(invite, n)
            n += 1
            sent[0] = n


async def _verify(session: aiohttp.ClientSession, pool: asyncpg.Pool[asyncpg.Record], url: str,
                  customer_id: str, statuses: Counter[str]) -> None:
    token = await pool.fetchval(_TOKEN, customer_actor_key(customer_id))
    async with session.post(f"{url}/customers/{customer_id}/verify",
                            json={"token": token}) as reply:
        await reply.read()
        statuses[f"verify:{reply.status}"] += 1


def _summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per table: rows and bytes at the middle sample and the last, and their
    ratio (about 1 when flat; the business record's tables keep growing)."""
    middle, last = samples[len(samples) // 2], samples[-1]
    out: dict[str, Any] = {}
    for table in TABLES:
        mid, end = middle["tables"][table], last["tables"][table]
        out[table] = {
            "rows_mid": mid["rows"], "rows_end": end["rows"],
            "rows_end_over_mid": round(end["rows"] / mid["rows"], 2) if mid["rows"] else None,
            "bytes_mid": mid["bytes"], "bytes_end": end["bytes"],
            "bytes_end_over_mid": round(end["bytes"] / mid["bytes"], 2) if mid["bytes"] else None,
        }
    return out


async def run(seconds: float, rate: float, retention: float, interval: float, ttl: float,
              sample_every: float) -> dict[str, Any]:
    env = {"RETINUE_RETENTION": f"{retention:g}", "RETINUE_PRUNE_INTERVAL": f"{interval:g}",
           "RETINUE_IDEMPOTENCY_TTL": f"{ttl:g}", "RETINUE_VERIFICATION_TTL": "2"}
    async with bench_database("retention") as dsn:
        server = ServerProcess(database_url=dsn, log=log_path("retention.log"), env=env)
        try:
            await server.start(within=60)
            await server.wait_ready(within=60)
            statuses: Counter[str] = Counter()
            sent = [0]
            samples: list[dict[str, Any]] = []
            conn = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
            try:
                async with aiohttp.ClientSession() as session, anyio.create_task_group() as tg:
                    began = time.perf_counter()
                    tg.start_soon(_load, session, conn, server.url, rate, seconds, statuses, sent)
                    while time.perf_counter() - began < seconds:
                        samples.append(await _sample(conn, session, server.url, began, sent[0]))
                        await anyio.sleep(sample_every)
                    samples.append(await _sample(conn, session, server.url, began, sent[0]))
            finally:
                await conn.close()
        finally:
            code, stopped_in = await stop_server(server)
    return {"bench": "retention", "machine": machine(),
            "config": {"seconds": seconds, "rate": rate, **env},
            "invites": dict(statuses), "server_exit": code, "stopped_in": stopped_in,
            "summary": _summary(samples), "samples": samples}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench retention")
    parser.add_argument("--seconds", type=float, default=180.0, help="how long the load runs")
    parser.add_argument("--rate", type=float, default=20.0, help="invites per second")
    parser.add_argument("--retention", type=float, default=5.0,
                        help="RETINUE_RETENTION for the server (seconds)")
    parser.add_argument("--prune-interval", type=float, default=1.0,
                        help="RETINUE_PRUNE_INTERVAL for the server (seconds)")
    parser.add_argument("--idempotency-ttl", type=float, default=10.0,
                        help="RETINUE_IDEMPOTENCY_TTL for the server (seconds)")
    parser.add_argument("--sample-every", type=float, default=10.0,
                        help="seconds between two readings of the tables")
    args = parser.parse_args(argv)
    emit(anyio.run(run, args.seconds, args.rate, args.retention, args.prune_interval,
                   args.idempotency_ttl, args.sample_every))


if __name__ == "__main__":
    main()
