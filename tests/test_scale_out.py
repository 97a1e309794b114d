"""Scale-out with real processes: several `python server.py` on one PostgreSQL.

- two and three nodes share the partitions (rendezvous) and finish every invite
  sent round-robin to them, each customer written by one owner at a time;
- SIGKILL of a node under load: its partitions move within the lease TTL and
  every accepted invite finishes, nothing twice;
- fencing: a node frozen (SIGSTOP) past its lease is taken over; resumed
  (SIGCONT), none of its late appends commit and it notices the loss;
- SIGTERM hands the partitions over at once, not after the lease TTL.

Run with -s to see the figures (failover time, fenced appends).
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc
import asyncpg
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from actors import customer_actor_key, customer_id_for
from bench.processes import ServerProcess
from journal import PARTITION_COUNT
from runtime import partition_of
from runtime.cluster import desired_partitions

HEARTBEAT = 0.25
TTL = 2.0
# Invitations expire after 1.5 s, so every invite workflow ends (through its timer).
FAST_ENV = {
    "RETINUE_HEARTBEAT_INTERVAL": str(HEARTBEAT),
    "RETINUE_LEASE_TTL": str(TTL),
    "RETINUE_VERIFICATION_TTL": "1.5",
    "RETINUE_RESOLVE_TIMEOUT": "5",
    "RETINUE_API_TOKEN": "",
}


# -- the processes ------------------------------------------------------------------------


class Node(ServerProcess):
    """One `python server.py --port 0` with its own node id; output to a log file."""

    def __init__(self, name: str, dsn: str, log_dir: Path, env: dict[str, str]) -> None:
        super().__init__(database_url=dsn, log=log_dir / f"{name}.log", env=env, name=name)
        self.name = name

    async def metric(self, name: str, **labels: str) -> float:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/metrics") as reply:
            text = await reply.text()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    total += sample.value
        return total


@asynccontextmanager
async def cluster(
    dsn: str, log_dir: Path, count: int, env: dict[str, str] | None = None
) -> AsyncIterator[list[Node]]:
    """`count` nodes started together; the block begins once they share the partitions."""
    nodes = [Node(f"node-{i}", dsn, log_dir, {**FAST_ENV, **(env or {})}) for i in range(count)]
    try:
        async with anyio.create_task_group() as tg:
            for node in nodes:
                tg.start_soon(node.start)
        await settled(dsn, [n.name for n in nodes])
        yield nodes
    finally:
        for node in nodes:
            await node.aclose()


# -- the database ---------------------------------------------------------------------------


async def query(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def leases(dsn: str) -> dict[int, tuple[str, int]]:
    rows = await query(dsn, "SELECT partition, owner, epoch FROM partitions")
    return {r["partition"]: (r["owner"], r["epoch"]) for r in rows}


async def settled(dsn: str, names: Sequence[str], within: float = 20) -> None:
    """Until `names` own the partitions between them, each its rendezvous share."""
    wanted = {p: name for name in names for p in desired_partitions(name, names)}
    with anyio.fail_after(within):
        while {p: owner for p, (owner, _) in (await leases(dsn)).items()} != wanted:
            await anyio.sleep(0.02)


async def all_finished(dsn: str, within: float = 30) -> None:
    with anyio.fail_after(within):
        while (await query(dsn, "SELECT count(*) AS n FROM workflows WHERE status NOT IN "
                                "('completed', 'failed', 'cancelled')"))[0]["n"]:
            await anyio.sleep(0.1)


async def check_one_writer_at_a_time(dsn: str) -> None:
    """Every step and event carries the epoch it was written under; per workflow (by
    seq) and per customer (by event seq) the epochs never go back: no two owners'
    writes interleave. And nothing happened twice."""
    rows = await query(dsn, "SELECT workflow_id, seq, epoch FROM steps ORDER BY workflow_id, seq")
    assert rows and all(r["epoch"] is not None for r in rows)
    last: dict[str, int] = {}
    for r in rows:
        assert r["epoch"] >= last.get(r["workflow_id"], 0), f"interleaved writers: {r}"
        last[r["workflow_id"]] = r["epoch"]
    events = await query(dsn, "SELECT actor_key, seq, type, epoch FROM events "
                              "ORDER BY actor_key, seq")
    latest: dict[str, int] = {}
    kinds: dict[str, Counter[str]] = {}
    for e in events:
        assert e["epoch"] >= latest.get(e["actor_key"], 0), f"interleaved writers: {e}"
        latest[e["actor_key"]] = e["epoch"]
        kinds.setdefault(e["actor_key"], Counter())[e["type"]] += 1
    twice = {key: k for key, k in kinds.items() if max(k.values()) > 1}
    assert not twice, f"events written twice: {twice}"
    assert not await query(dsn, "SELECT id FROM dead_letters")
    failed = await query(dsn, "SELECT id, error FROM workflows WHERE status <> 'completed'")
    assert not failed, failed


# -- the load -------------------------------------------------------------------------------


def emails(label: str, count: int) -> list[str]:
    return [f"{label}-{i}@example.com" for i in range(count)]


def partition_of_email(email: str) -> int:
    return partition_of(customer_actor_key(customer_id_for(email)))


async def invite_all(
    nodes: Callable[[], Sequence[Node]], addresses: Sequence[str], concurrency: int = 8,
    on_answer: Callable[[int], Awaitable[None]] | None = None,
) -> dict[str, int]:
    """Invite each address once, round-robin over the nodes alive now; a request cut
    off by a dying node is sent again, with the same Idempotency-Key, to the next."""
    answers: dict[str, int] = {}
    pending = iter(enumerate(addresses))
    timeout = aiohttp.ClientTimeout(total=15)

    async def client(session: aiohttp.ClientSession) -> None:
        for i, email in pending:
            for attempt in range(20):
                live = nodes()
                node = live[(i + attempt) % len(live)]
                try:
                    async with session.post(f"{node.url}/customers/invite",
                                            json={"email": email},
                                            headers={"Idempotency-Key": email}) as reply:
                        if reply.status in (200, 202):
                            answers[email] = reply.status
                            break
                        assert reply.status == 503, (reply.status, await reply.text())
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await anyio.sleep(0.1)
            else:
                raise AssertionError(f"{email} was never accepted")
            if on_answer is not None:
                await on_answer(len(answers))

    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(client, session)
    return answers


# -- sharing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3])
async def test_nodes_share_the_partitions_and_finish_every_invite_sent_to_any(
    pg_dsn: str, tmp_path: Path, count: int
) -> None:
    async with cluster(pg_dsn, tmp_path, count) as nodes:
        began = time.monotonic()
        answers = await invite_all(lambda: nodes, emails("share", 60))
        elapsed = time.monotonic() - began
        assert set(answers.values()) <= {200, 202} and len(answers) == 60
        await all_finished(pg_dsn)
        owned = [await n.metric("retinue_partitions_owned") for n in nodes]
        assert sum(owned) == PARTITION_COUNT and min(owned) > 0
    await check_one_writer_at_a_time(pg_dsn)
    print(f"\n{count} nodes: partitions owned {owned}, 60 invites accepted in {elapsed:.2f} s")


# -- failures ------------------------------------------------------------------------------


async def _kill_one_under_load(pg_dsn: str, tmp_path: Path, invites: int) -> None:
    async with cluster(pg_dsn, tmp_path, 3) as nodes:
        victim = nodes[1]
        alive = list(nodes)
        before = await leases(pg_dsn)
        lost = {p for p, (owner, _) in before.items() if owner == victim.name}
        killed_at: list[float] = []

        async def kill_at_a_third(answered: int) -> None:
            if answered == invites // 3 and not killed_at:
                await victim.kill()
                killed_at.append(time.monotonic())
                alive.remove(victim)

        async def watch_the_move() -> float:
            while not killed_at:
                await anyio.sleep(0.005)
            while True:
                owners = await leases(pg_dsn)
                if all(owners[p][0] != victim.name for p in lost):
                    break
                await anyio.sleep(0.01)
            return time.monotonic() - killed_at[0]

        moved: list[float] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _append(moved, watch_the_move()))
            answers = await invite_all(lambda: alive, emails("kill", invites),
                                       on_answer=kill_at_a_third)
        assert len(answers) == invites
        await all_finished(pg_dsn)
        failover = await _first_write_after(pg_dsn, lost, before, victim.name)
    await check_one_writer_at_a_time(pg_dsn)
    print(f"\nSIGKILL of {victim.name} ({len(lost)} partitions): all moved in {moved[0]:.2f} s "
          f"(lease TTL {TTL:g} s); first write by a new owner {failover:.2f} s after the "
          "victim's last")
    assert moved[0] < TTL


async def _append(into: list[float], measuring: Awaitable[float]) -> None:
    into.append(await measuring)


async def _first_write_after(
    dsn: str, partitions: set[int], before: dict[int, tuple[str, int]], victim: str
) -> float:
    """Seconds from the kill (the victim's last write) to the first event written by
    a new owner in its partitions, on the database clock."""
    rows = await query(dsn, """
        SELECT partition, epoch, created_at FROM events WHERE partition = ANY($1::integer[])
    """, list(partitions))
    old = [r["created_at"] for r in rows if r["epoch"] <= before[r["partition"]][1]]
    new = [r["created_at"] for r in rows if r["epoch"] > before[r["partition"]][1]]
    assert old and new, f"no writes on both sides of the kill of {victim}"
    return (min(new) - max(old)).total_seconds()


async def test_a_killed_nodes_partitions_move_within_the_ttl_and_every_invite_finishes(
    pg_dsn: str, tmp_path: Path
) -> None:
    await _kill_one_under_load(pg_dsn, tmp_path, invites=90)


@pytest.mark.soak
async def test_a_killed_node_under_heavier_load(pg_dsn: str, tmp_path: Path) -> None:
    await _kill_one_under_load(pg_dsn, tmp_path, invites=600)


async def test_sigterm_hands_the_partitions_over_without_waiting_for_the_ttl(
    pg_dsn: str, tmp_path: Path
) -> None:
    # Default heartbeat and TTL (1 s, 5 s); invitations that stay open.
    env = {"RETINUE_HEARTBEAT_INTERVAL": "1", "RETINUE_LEASE_TTL": "5",
           "RETINUE_VERIFICATION_TTL": "3600"}
    async with cluster(pg_dsn, tmp_path, 2, env) as (leaving, staying):
        answers = await invite_all(lambda: [leaving], emails("term", 20))
        assert set(answers.values()) == {200}
        began = time.monotonic()
        leaving.send_signal(signal.SIGTERM)
        await settled(pg_dsn, [staying.name], within=5)
        handover = time.monotonic() - began
        with anyio.fail_after(30):
            assert await leaving.wait() == 0
        # The waiting invite workflows are the staying node's now: verify one there.
        email = next(e for e in answers if partition_of_email(e) not in
                     desired_partitions(staying.name, [leaving.name, staying.name]))
        token = await _token(pg_dsn, email)
        async with aiohttp.ClientSession(staying.url) as session, session.post(
            f"/customers/{customer_id_for(email)}/verify", json={"token": token}
        ) as reply:
            assert reply.status == 200, await reply.text()
    print(f"\nSIGTERM hand-over: {handover:.2f} s (heartbeat 1 s, lease TTL 5 s)")
    assert handover < 1.5


async def _token(dsn: str, email: str) -> str:
    rows = await query(dsn, "SELECT payload FROM events WHERE actor_key = $1 AND type = "
                            "'CustomerInvited'", customer_actor_key(customer_id_for(email)))
    return str(json.loads(rows[0]["payload"])["token"])  # jsonb comes back as text here


# -- fencing -----------------------------------------------------------------------------------


class HoldingWebhook:
    """A webhook receiver that holds the first delivery of each message until
    `release` is set, and answers later tries (another node's) at once."""

    def __init__(self) -> None:
        self.held: list[str] = []
        self.answered: list[str] = []
        self.release = anyio.Event()

    async def receive(self, request: web.Request) -> web.Response:
        key = request.headers["Idempotency-Key"]
        if key not in self.held:
            self.held.append(key)
            await self.release.wait()
        else:
            self.answered.append(key)
        return web.json_response({"ok": True})

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_post("/hook", self.receive)
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            host, port = runner.addresses[0][:2]
            yield f"http://{host}:{port}/hook"
        finally:
            self.release.set()
            await runner.cleanup()


async def test_a_frozen_node_that_wakes_up_late_cannot_write(pg_dsn: str, tmp_path: Path) -> None:
    hook = HoldingWebhook()
    async with hook.running() as url, \
            cluster(pg_dsn, tmp_path, 2, {"COMMUNICATION_WEBHOOK_URL": url,
                                          "RETINUE_VERIFICATION_TTL": "3600"}) as nodes:
        frozen, other = nodes
        mine = desired_partitions(frozen.name, [n.name for n in nodes])
        addresses = [e for e in emails("fence", 200) if partition_of_email(e) in mine][:8]
        answers = await invite_all(lambda: nodes, addresses)
        assert set(answers.values()) == {200}
        with anyio.fail_after(10):
            while len(hook.held) < len(addresses):  # every invitation is inside its webhook
                await anyio.sleep(0.01)
        before = await leases(pg_dsn)

        frozen.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        await settled(pg_dsn, [other.name], within=3 * TTL)  # the lease ran out; taken over
        takeover = time.monotonic() - stopped_at
        with anyio.fail_after(15):  # the new owner delivered again (same key) and went on
            while len(await _delivered(pg_dsn)) < len(addresses):
                await anyio.sleep(0.05)
        written = await _rows_of_held(pg_dsn)

        hook.release.set()  # the frozen node's deliveries return while it is stopped...
        await anyio.sleep(0.2)
        frozen.send_signal(signal.SIGCONT)  # ...and it carries on where it was: at the next write
        with anyio.fail_after(10):
            while await frozen.metric("retinue_lease_changes_total", change="lost") == 0:
                await anyio.sleep(0.05)
        await anyio.sleep(1)
        fenced = await frozen.metric("retinue_fenced_appends_total")
        assert await _rows_of_held(pg_dsn) == written, "a late write of the frozen node landed"
        # It rejoins: the partitions are shared again, under new epochs.
        await settled(pg_dsn, [n.name for n in nodes])
        after = await leases(pg_dsn)
        assert all(after[p][1] > before[p][1] for p in mine)
    assert sorted(hook.answered) == sorted(hook.held)  # each delivered again by the other node
    print(f"\nfencing: {frozen.name} frozen; taken over after {takeover:.2f} s (lease TTL "
          f"{TTL:g} s); late appends refused by the fence: {fenced:g}")
    assert fenced >= 1


async def _delivered(dsn: str) -> list[asyncpg.Record]:
    return await query(dsn, "SELECT id FROM workflows WHERE name = 'communicate_to_customer' "
                            "AND status = 'completed'")


async def _rows_of_held(dsn: str) -> list[tuple[Any, ...]]:
    """Every step and event row of the messages, with the epoch that wrote it."""
    steps = await query(dsn, """
        SELECT s.workflow_id, s.seq, s.status, s.epoch FROM steps s
        JOIN workflows w ON w.id = s.workflow_id WHERE w.name = 'communicate_to_customer'
        ORDER BY 1, 2""")
    events = await query(dsn, "SELECT actor_key, seq, type, epoch FROM events ORDER BY 1, 2")
    statuses = await query(dsn, "SELECT id, status FROM workflows ORDER BY id")
    return [tuple(r) for r in (*steps, *events, *statuses)]
