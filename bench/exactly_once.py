"""exactly_once: N `python server.py` nodes on one PostgreSQL, many invites without keys.

Starts `--nodes` servers on a fresh database (as `bench nodes` does), sends
`--invites` distinct `POST /customers/invite` WITHOUT Idempotency-Key round-robin
over them from `--concurrency` clients, waits until no workflow is pending or
running (invites then wait for their verification), and reads the journal:

- every customer's event log: exactly one CustomerInvited, no CustomerInviteFailed
  (each email is invited once, so a failed invite means its workflow ran again);
- the steps table: a completed step that finished after the next step (by seq)
  started was written again by a later run, from an empty history
  (`duplicate_completed_steps`, and the workflows holding one).

customers_with_second_invite_run counts the customers whose log holds more than
one invite decision (CustomerInvited / CustomerInviteFailed) or whose invite
workflow holds a step written again. All three are 0 in a sound runtime.
Run: python -m bench exactly_once [--invites 50000] [--nodes 3] [--concurrency 48]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

import aiohttp
import anyio
import asyncpg

from actors import customer_actor_key, customer_id_for

from . import nodes as _nodes
from .common import bench_database, emit, machine
from .http import send_invites, stop_server

__all__ = ["REWRITTEN_STEPS", "check", "measure", "run"]

_UNSETTLED = "SELECT count(*) FROM workflows WHERE status IN ('pending', 'running')"
_DECISIONS = """
SELECT actor_key, type, count(*) AS n FROM events
WHERE type IN ('CustomerInvited', 'CustomerInviteFailed')
GROUP BY actor_key, type
"""
# A completed step that finished after its successor started: a later run wrote it
# again (a run only appends after what it replayed; a replayed step is not re-run).
REWRITTEN_STEPS = """
SELECT s.workflow_id, w.actor_key, w.parent_id IS NULL AS top_level, count(*) AS n
FROM (SELECT workflow_id, status, finished_at,
             lead(started_at) OVER (PARTITION BY workflow_id ORDER BY seq) AS next_started
      FROM steps) s
JOIN workflows w ON w.id = s.workflow_id
WHERE s.status = 'completed' AND s.finished_at > s.next_started
GROUP BY s.workflow_id, w.actor_key, w.parent_id
"""
_STATUSES = "SELECT status, count(*) AS n FROM workflows GROUP BY status"


async def _settle(dsn: str, within: float) -> int:
    """Wait until no workflow is pending or running; how many still are at `within`."""
    conn = await asyncpg.connect(dsn)
    try:
        left = -1
        with anyio.move_on_after(within):
            while (left := int(await conn.fetchval(_UNSETTLED))) > 0:  # noqa: ASYNC110
                await anyio.sleep(0.2)
        return left
    finally:
        await conn.close()


async def check(dsn: str, emails: list[str]) -> dict[str, Any]:
    """The exactly-once figures of the journal at `dsn` for the invited `emails`."""
    conn = await asyncpg.connect(dsn)
    try:
        decisions = await conn.fetch(_DECISIONS)
        rewritten = await conn.fetch(REWRITTEN_STEPS)
        statuses = await conn.fetch(_STATUSES)
    finally:
        await conn.close()
    invited: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for row in decisions:
        (invited if row["type"] == "CustomerInvited" else failed)[row["actor_key"]] += row["n"]
    rerun_actors = {row["actor_key"] for row in rewritten if row["top_level"]}
    keys = [customer_actor_key(customer_id_for(email)) for email in emails]
    return {
        "customers_checked": len(keys),
        "customers_with_second_invite_run": sum(
            invited[key] + failed[key] > 1 or key in rerun_actors for key in keys
        ),
        "customers_without_one_invited": sum(invited[key] != 1 for key in keys),
        "invite_failed_events": sum(failed[key] for key in keys),
        "duplicate_completed_steps": sum(row["n"] for row in rewritten),
        "workflows_with_a_step_written_again": len(rewritten),
        "workflow_statuses": {row["status"]: row["n"] for row in statuses},
    }


async def measure(
    dsn: str, *, invites: int, nodes: int, concurrency: int, settle_within: float = 600
) -> dict[str, Any]:
    """Start `nodes` servers on the (empty) database `dsn`, invite, check; the figures."""
    servers = await _nodes._start(dsn, nodes)
    emails = [f"once-{i}@example.com" for i in range(invites)]
    exit_codes: list[int | None] = []
    try:
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            seconds, _, answers = await send_invites(
                session, [s.url for s in servers], emails, concurrency
            )
        unsettled = await _settle(dsn, settle_within)
    finally:
        for server in servers:
            exit_codes.append((await stop_server(server))[0])
    return {
        "bench": "exactly_once",
        "invites": invites,
        "nodes": nodes,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "invites_per_s": round(invites / seconds, 1),
        "answers": dict(sorted(answers.items())),
        **await check(dsn, emails),
        "unsettled_workflows": unsettled,
        "server_exit_codes": exit_codes,
        "revision": machine()["revision"],
        "machine": machine(),
    }


async def run(invites: int, nodes: int, concurrency: int) -> dict[str, Any]:
    async with bench_database("exactly_once") as dsn:
        began = time.perf_counter()
        result = await measure(dsn, invites=invites, nodes=nodes, concurrency=concurrency)
        result["wall_seconds"] = round(time.perf_counter() - began, 1)
        return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench exactly_once")
    parser.add_argument("--invites", type=int, default=50_000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=48)
    args = parser.parse_args(argv)
    emit(anyio.run(run, args.invites, args.nodes, args.concurrency))


if __name__ == "__main__":
    main()
