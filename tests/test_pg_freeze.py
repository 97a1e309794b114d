"""A hung PostgreSQL (every process of the server SIGSTOPped) is an outage, not a hang.

A frozen server keeps its sockets open and answers nothing: no reset, no refusal.
Every wait on it must still end (journal/_pgconn.py bounds them), a group write
that stalls must fail every batch in it (journal/_groupcommit.py), and once the
server answers again everything accepted runs to its end, exactly once.

- in-process: a journal on a frozen server raises JournalUnavailableError within
  its bound, and works again (its node session too) once the server is thawed;
- a real `python server.py` under a load of invites (some with an
  Idempotency-Key, retried through 503s and timeouts; some without, sent once)
  while PostgreSQL is frozen for longer than every internal timeout.

Run with -s to see the figures.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import asyncpg
import pytest

from bench.exactly_once import check as exactly_once_figures
from bench.polling import eventually
from bench.processes import ServerProcess
from journal import Batch, EmbeddedPostgres, JournalUnavailableError, NewWorkflow, PostgresJournal
from tests.faults_support import (
    InviteLoad,
    WebhookReceiver,
    check_journal,
    frozen_postgres,
    wait_all_finished,
)

# Unverified invitations expire after 3 s, so every workflow finishes soon.
SERVER_ENV = {"RETINUE_VERIFICATION_TTL": "3", "RETINUE_RESOLVE_TIMEOUT": "3"}
# Longer than every timeout inside the server (5 s per wait on the database, 5 s
# leases): everything that can give up on the database has, before it comes back.
FREEZE_SECONDS = 35.0


def _batch(i: int) -> Batch:
    workflow = NewWorkflow(id=f"frozen-{i}", name="invite", actor_key=f"customer:{i}",
                           partition=0)
    return Batch(partition=0, epoch=None, workflows=(workflow,))


async def _append_all(journal: PostgresJournal, batches: list[Batch]) -> list[BaseException]:
    """Append concurrently (they share groups); the error each raised, if any."""
    errors: list[BaseException] = []

    async def append(batch: Batch) -> None:
        try:
            await journal.append(batch)
        except JournalUnavailableError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for batch in batches:
            tg.start_soon(append, batch)
    return errors


async def test_a_journal_on_a_frozen_server_is_unavailable_within_its_bound(
    tmp_path: Path,
) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg")
    dsn = await anyio.to_thread.run_sync(pg.start)
    wakes: list[str] = []
    try:
        journal = await PostgresJournal.connect(dsn, timeout=1.0)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(journal.serve_node, "frozen-node", wakes.append)
                await _append_all(journal, [_batch(0)])
                with frozen_postgres(pg.data_dir):
                    began = time.monotonic()
                    with anyio.move_on_after(0.2):  # as /readyz bounds its ping
                        await journal.ping()
                    # A caller that gives up leaves at once: the cancel of its
                    # statement (a new connection, never accepted) goes on behind it.
                    assert time.monotonic() - began < 0.6
                    with pytest.raises(JournalUnavailableError):
                        await journal.ping()
                    errors = await _append_all(journal, [_batch(i) for i in range(1, 41)])
                    stalled = time.monotonic() - began
                    await anyio.sleep(3)  # the session's ping gives up meanwhile
                # Every batch had its answer: none waited for the server.
                assert len(errors) == 40, errors
                assert stalled < 10, f"the journal waited {stalled:.1f} s on a frozen server"
                await eventually(_answers(journal), within=10, what="the journal to answer again")
                assert not await _append_all(journal, [_batch(i) for i in range(1, 41)])
                # The node's session came back: a wake-up reaches it again.
                await eventually(_woken(journal, wakes), within=15, what="a wake-up after the thaw")
                tg.cancel_scope.cancel()
        finally:
            await journal.aclose()
    finally:
        await anyio.to_thread.run_sync(pg.stop)


def _answers(journal: PostgresJournal) -> Any:
    async def probe() -> bool:
        try:
            await journal.ping()
        except JournalUnavailableError:
            return False
        return True

    return probe


def _woken(journal: PostgresJournal, wakes: list[str]) -> Any:
    sent = [0]

    async def probe() -> bool:
        sent[0] += 1
        await journal.wake([f"thawed-{sent[0]}"])
        await anyio.sleep(0.2)
        return any(w.startswith("thawed-") for w in wakes)

    return probe


# -- a real server under load ------------------------------------------------------------


@dataclass
class Freeze:
    """What the server showed while PostgreSQL was frozen, and after."""

    frozen: bool = False
    readyz: Counter[int | None] = field(default_factory=Counter)  # while frozen
    server_exited: list[int] = field(default_factory=list)
    invite_answers: Counter[int | None] = field(default_factory=Counter)  # while frozen
    seconds_to_answer: float = 0.0  # from SIGCONT until PostgreSQL answers
    seconds_to_ready: float = 0.0  # from PostgreSQL answering until /readyz says 200

    def observe(self, path: str, status: int | None) -> None:
        if self.frozen and path.endswith("/invite"):
            self.invite_answers[status] += 1


async def _watch_readyz(server: ServerProcess, freeze: Freeze) -> None:
    """While frozen, ask /readyz (each answer bounded), and check the process lives."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while freeze.frozen:
            if server.returncode is not None:
                freeze.server_exited.append(server.returncode)
                return
            try:
                async with session.get(f"{server.url}/readyz") as reply:
                    freeze.readyz[reply.status] += 1
            except (aiohttp.ClientError, TimeoutError):
                freeze.readyz[None] += 1
            await anyio.sleep(0.25)


async def _postgres_answers(dsn: str) -> bool:
    try:
        with anyio.fail_after(1):
            conn = await asyncpg.connect(dsn, timeout=1)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    try:
        return bool(await conn.fetchval("SELECT 1", timeout=1) == 1)
    finally:
        await conn.close()


async def _freeze_midway(
    pg: EmbeddedPostgres, server: ServerProcess, load: InviteLoad, freeze: Freeze, after: int
) -> None:
    await eventually(functools.partial(_reached, load, after), within=60,
                     what=f"{after} answers")
    with frozen_postgres(pg.data_dir):
        freeze.frozen = True
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_readyz, server, freeze)
            await anyio.sleep(FREEZE_SECONDS)
            freeze.frozen = False
    thawed = time.monotonic()
    await eventually(functools.partial(_postgres_answers, pg.dsn), within=30,
                     what="PostgreSQL to answer")
    answering = time.monotonic()
    freeze.seconds_to_answer = answering - thawed
    await server.wait_ready(within=30)
    freeze.seconds_to_ready = time.monotonic() - answering


async def _reached(load: InviteLoad, answers: int) -> bool:
    return load.answered >= answers


@pytest.mark.timeout(150)
async def test_postgres_frozen_under_load_is_an_outage_that_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    pg = EmbeddedPostgres(tmp_path / "pg")
    dsn = await anyio.to_thread.run_sync(pg.start)
    receiver = WebhookReceiver(fail_rate=0.05, seed=35)
    freeze = Freeze()
    emails = [f"frozen-{i}@example.com" for i in range(400)]
    try:
        async with receiver.running() as hook:
            server = ServerProcess(database_url=dsn, log=tmp_path / "server.log",
                                   env={**SERVER_ENV, "COMMUNICATION_WEBHOOK_URL": hook})
            try:
                await server.start()
                await server.wait_ready()
                load = InviteLoad(server.url, receiver, emails, seed=35, concurrency=16,
                                  verify_fraction=0.2, keyless_fraction=0.5, give_up_after=80)
                load.observers.append(freeze.observe)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_freeze_midway, pg, server, load, freeze, 60)
                    await load.run()
                await wait_all_finished(dsn, within=60)
                exit_code = await server.terminate()
            finally:
                await server.aclose()
        figures = await check_journal(dsn, receiver, load)
        once = await exactly_once_figures(dsn, emails)
    finally:
        await anyio.to_thread.run_sync(pg.stop)
    keyless = Counter(o.status for o in load.outcomes.values() if o.key is None)
    print(f"\nfrozen {FREEZE_SECONDS:.0f} s: /readyz while frozen {dict(freeze.readyz)}, "
          f"invite answers while frozen {dict(freeze.invite_answers)}, PostgreSQL answered "
          f"{freeze.seconds_to_answer:.2f} s after SIGCONT and the server was ready "
          f"{freeze.seconds_to_ready:.2f} s later; invites checked {figures.invites_checked}, "
          f"customers {figures.customers}, keyless answers {dict(keyless)}, deliveries "
          f"{figures.deliveries} (same key again {figures.duplicate_deliveries}), steps "
          f"re-run {figures.steps_rerun}, answers {dict(sorted(load.statuses.items()))}, "
          f"exactly-once {once}, {time.monotonic() - began:.1f} s")
    assert not freeze.server_exited, f"server.py exited while frozen; see {server.log}"
    assert exit_code == 0, f"see {server.log}"
    assert freeze.readyz[503] > 0, f"/readyz never said 503 while frozen: {freeze.readyz}"
    assert freeze.seconds_to_ready <= 10, freeze
    shown = "\n".join(figures.problems[:20])
    assert not figures.problems, f"{len(figures.problems)} problems:\n{shown}"
    assert figures.conflicting_keys == 0
    assert once["customers_with_second_invite_run"] == 0, once
    assert once["invite_failed_events"] == 0, once
    assert once["duplicate_completed_steps"] == 0, once
    # Every keyed invite got its answer, and every 2xx is a customer (check_journal).
    assert all(o.status in (200, 202) for o in load.outcomes.values() if o.key is not None)
