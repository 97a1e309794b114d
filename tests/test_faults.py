"""Crash and fault tests against `python server.py` as a real process on real PostgreSQL.

- kill -9 at seeded random moments while concurrent clients invite customers;
- SIGTERM while workflows are in flight (graceful: exit 0, nothing lost);
- PostgreSQL stopped and started again under load, and while idle.

After each run: every invite that got a 2xx is carried to its end (customer,
invitation delivered, workflow completed with the expected steps), nothing is
duplicated, and no message went out under two idempotency keys. Run with -s to
see the figures.
"""

from __future__ import annotations

import functools
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import asyncpg
import msgspec
import pytest

from bench.polling import eventually
from bench.processes import ServerProcess
from journal import Batch, EmbeddedPostgres, Journal, JournalUnavailableError
from journal._groupcommit import GroupCommitter
from runtime import (
    Reader,
    RestartPolicy,
    RetryPolicy,
    Runtime,
    WorkflowContext,
    WriteSet,
    current_step,
)
from tests.faults_support import (
    Figures,
    FlakyJournal,
    InviteLoad,
    WebhookReceiver,
    check_journal,
    wait_all_finished,
)

# Short waits keep a run short: unverified invitations expire after 3 s.
SERVER_ENV = {"RETINUE_VERIFICATION_TTL": "3", "RETINUE_RESOLVE_TIMEOUT": "3"}


def _emails(label: str, count: int) -> list[str]:
    return [f"{label}-{i}@example.com" for i in range(count)]


def _report(label: str, figures: Figures, load: InviteLoad, extra: str = "") -> None:
    print(
        f"\n{label}: invites checked {figures.invites_checked}, customers {figures.customers} "
        f"(verified {figures.verified}, expired {figures.expired}), workflows "
        f"{figures.workflows}, deliveries {figures.deliveries}, duplicates found "
        f"{figures.duplicate_deliveries} (same key, allowed), conflicting keys "
        f"{figures.conflicting_keys}, steps run more than once (same key) {figures.steps_rerun}, "
        f"requests cut off "
        f"{load.interrupted}, answers {dict(sorted(load.statuses.items()))}{extra}"
    )


def _assert_sound(figures: Figures, invites: int) -> None:
    shown = "\n".join(figures.problems[:20])
    assert not figures.problems, f"{len(figures.problems)} problems:\n{shown}"
    assert figures.invites_checked == figures.customers == invites
    assert figures.conflicting_keys == 0


# -- kill -9 and SIGTERM under load --------------------------------------------------------


async def _faults_under_load(
    dsn: str, tmp_path: Path, *, seed: int, invites: int, faults: int, graceful: bool
) -> None:
    """Invite `invites` customers while stopping the server `faults` times at seeded
    random moments (SIGKILL, or SIGTERM when `graceful`), restarting it each time."""
    began = time.monotonic()
    rng = random.Random(seed)
    receiver = WebhookReceiver(fail_rate=0.05, seed=seed)
    async with receiver.running() as hook:
        server = ServerProcess(database_url=dsn, log=tmp_path / "server.log",
                               env={**SERVER_ENV, "COMMUNICATION_WEBHOOK_URL": hook})
        try:
            await server.start()
            await server.wait_ready()
            load = InviteLoad(server.url, receiver, _emails(f"s{seed}", invites), seed=seed)
            exit_codes: list[int] = []

            async def inject() -> None:
                moments = sorted(rng.sample(range(invites // 10, invites * 9 // 10), faults))
                for moment in moments:
                    await eventually(functools.partial(_reached, load, moment), within=120,
                                     what=f"{moment} answers")
                    await anyio.sleep(rng.uniform(0, 0.05))
                    if graceful:
                        exit_codes.append(await server.terminate())
                    else:
                        await server.kill()
                    await server.start()

            async with anyio.create_task_group() as tg:
                tg.start_soon(inject)
                await load.run()
            await wait_all_finished(dsn, within=90)
            assert await server.terminate() == 0, f"see {server.log}"
        finally:
            await server.aclose()
    figures = await check_journal(dsn, receiver, load)
    stops = f"SIGTERMs survived {faults} (exit codes {exit_codes})" if graceful else (
        f"kills survived {faults}")
    _report(f"seed {seed}: {stops}", figures, load,
            f", {time.monotonic() - began:.1f} s")
    _assert_sound(figures, invites)
    assert exit_codes == ([0] * faults if graceful else [])


async def _reached(load: InviteLoad, answers: int) -> bool:
    return load.answered >= answers


@pytest.mark.parametrize("seed", [1, 2])
async def test_kill_9_under_load_loses_nothing_and_repeats_nothing(
    pg_dsn: str, tmp_path: Path, seed: int
) -> None:
    await _faults_under_load(pg_dsn, tmp_path, seed=seed, invites=200, faults=2, graceful=False)


@pytest.mark.soak
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [11, 12, 13, 14, 15, 16])
async def test_kill_9_soak(pg_dsn: str, tmp_path: Path, seed: int) -> None:
    await _faults_under_load(pg_dsn, tmp_path, seed=seed, invites=3000, faults=6, graceful=False)


async def test_sigterm_with_workflows_in_flight_exits_0_and_loses_nothing(
    pg_dsn: str, tmp_path: Path
) -> None:
    await _faults_under_load(pg_dsn, tmp_path, seed=3, invites=100, faults=1, graceful=True)


# -- PostgreSQL goes away ----------------------------------------------------------------


@dataclass
class Outage:
    """What clients saw while PostgreSQL was down."""

    down: bool = False
    load_answers: Counter[int | None] = field(default_factory=Counter)
    verifies_found_done: int = 0
    readyz: Counter[int | None] = field(default_factory=Counter)
    probes: list[tuple[str, int | None, str | None]] = field(default_factory=list)
    seconds_to_ready: float = 0.0

    def observe(self, path: str, status: int | None) -> None:
        if self.down:
            # A verify retried after an answer lost in the outage finds the customer
            # verified: 409 is its contract answer. Invites (retried with their
            # Idempotency-Key) must only ever see 200, 202 or 503.
            if path.endswith("/verify") and status == 409:
                self.verifies_found_done += 1
                return
            self.load_answers[status] += 1


async def _get_status(session: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with session.get(url) as reply:
            return reply.status
    except (aiohttp.ClientError, TimeoutError):
        return None


async def _probe_invite(session: aiohttp.ClientSession, url: str, email: str,
                        outage: Outage) -> None:
    """One fresh invite while the database is down: it must be refused with 503."""
    try:
        async with session.post(f"{url}/customers/invite", json={"email": email},
                                headers={"Idempotency-Key": f"probe-{email}"}) as reply:
            outage.probes.append((email, reply.status, reply.headers.get("Retry-After")))
    except (aiohttp.ClientError, TimeoutError):
        outage.probes.append((email, None, None))


async def _postgres_away(
    pg: EmbeddedPostgres, server: ServerProcess, outage: Outage, label: str, seconds: float
) -> None:
    """Stop PostgreSQL ("fast"), watch /readyz and a fresh invite for `seconds`,
    start it again, and time the server's way back to ready."""
    dsn = pg.dsn
    await anyio.to_thread.run_sync(pg.stop, "fast")
    outage.down = True
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with anyio.move_on_after(seconds):
            for i in range(10_000):
                outage.readyz[await _get_status(session, f"{server.url}/readyz")] += 1
                await _probe_invite(session, server.url, f"probe-{label}-{i}@example.com",
                                    outage)
                outage.readyz[await _get_status(session, f"{server.url}/readyz")] += 1
                await anyio.sleep(0.1)
    assert await anyio.to_thread.run_sync(pg.start) == dsn  # the server's DATABASE_URL holds
    outage.down = False
    began = time.monotonic()
    await server.wait_ready(within=60)
    outage.seconds_to_ready = time.monotonic() - began


async def _probes_left_nothing(dsn: str, outage: Outage) -> list[str]:
    """Probe invites refused with 503 must have journaled nothing."""
    refused = [email for email, status, _ in outage.probes if status == 503]
    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetch("SELECT idempotency_key FROM workflows "
                                 "WHERE idempotency_key LIKE 'invite:probe-%'")
    finally:
        await conn.close()
    keys = {row["idempotency_key"] for row in found}
    return [email for email in refused if f"invite:probe-{email}" in keys]


def _describe(label: str, outage: Outage) -> str:
    probes = Counter((status, retry) for _, status, retry in outage.probes)
    return (f"\n{label}: /readyz answers {dict(outage.readyz)}, fresh invites "
            f"(status, Retry-After) {dict(probes)}, load answers {dict(outage.load_answers)}, "
            f"ready again {outage.seconds_to_ready:.2f} s after PostgreSQL was back")


async def test_postgres_restarts_under_load_and_while_idle(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg")
    dsn = await anyio.to_thread.run_sync(pg.start)
    invites = 200
    receiver = WebhookReceiver(seed=7)
    busy, idle = Outage(), Outage()
    try:
        async with receiver.running() as hook:
            server = ServerProcess(database_url=dsn, log=tmp_path / "server.log",
                                   env={**SERVER_ENV, "COMMUNICATION_WEBHOOK_URL": hook})
            try:
                await server.start()
                await server.wait_ready()
                load = InviteLoad(server.url, receiver, _emails("pg", invites), seed=7,
                                  concurrency=8)
                load.observers.append(busy.observe)

                async def outage_midway() -> None:
                    await eventually(functools.partial(_reached, load, invites // 4), within=60,
                                     what="a quarter answered")
                    await _postgres_away(pg, server, busy, "busy", seconds=2.0)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(outage_midway)
                    await load.run()
                await wait_all_finished(dsn, within=90)
                await _postgres_away(pg, server, idle, "idle", seconds=1.5)
                assert await server.terminate() == 0, f"see {server.log}"
            finally:
                await server.aclose()
        figures = await check_journal(dsn, receiver, load)
        leaked = await _probes_left_nothing(dsn, busy) + await _probes_left_nothing(dsn, idle)
    finally:
        await anyio.to_thread.run_sync(pg.stop)
    _report("postgres restart", figures, load,
            _describe("under load", busy) + _describe("idle", idle))
    _assert_sound(figures, invites)
    assert not leaked, f"refused probe invites were journaled: {leaked}"
    for outage in (busy, idle):
        # Refused, never failed: a 503 with Retry-After, never a 500.
        assert outage.probes and all(
            status == 503 and retry is not None for _, status, retry in outage.probes
        ), outage.probes
        assert all(s is None or s in (200, 202, 503) for s in outage.load_answers), outage
    assert busy.readyz[503] > 0, "/readyz said ready while PostgreSQL was down under load"
    # Idle, no workflow writes: /readyz asks the database itself.
    assert idle.readyz[503] > 0, "/readyz said ready while PostgreSQL was down and idle"


# -- journal faults, injected in-process ---------------------------------------------------


class Note(msgspec.Struct, frozen=True, kw_only=True):
    text: str


def _write_note(db: WriteSet, text: str) -> str:
    db.emit(Note(text=text))
    return text


async def test_a_retried_message_replays_what_its_failed_attempt_journaled(
    journal: Journal,
) -> None:
    effects: list[str] = []
    crashes: list[str] = []

    async def act() -> str:
        effects.append(current_step().idempotency_key)
        return "acted"

    async def crashes_once(ctx: WorkflowContext, payload: dict[str, Any]) -> str:
        await ctx.step("act", act)
        await ctx.write("mark", _write_note, "acted")  # commits the step's completion
        if not crashes:
            crashes.append(ctx.workflow_id)
            raise RuntimeError("the actor crashes after its first commit")
        return "done"

    restart = RestartPolicy(max_crashes=3, initial_backoff=0.01)
    async with Runtime(journal, restart=restart) as runtime:
        runtime.register(crashes_once)
        row, _ = await runtime.start_workflow("crashes_once", {}, actor_key="crashy:1")
        done = await runtime.wait_for_finish(row.id, 10)
    assert done is not None and done.status == "completed", done
    assert effects == [f"{row.id}:1"], "a step with a recorded result ran again"


async def test_a_database_outage_inside_a_read_step_is_waited_out(journal: Journal) -> None:
    flaky = FlakyJournal(journal)
    quick = RetryPolicy(max_attempts=2, initial_backoff=0.01)

    async def read(reader: Reader) -> Any:
        return await reader.get("customer", "nobody")

    async def reads(ctx: WorkflowContext, payload: dict[str, Any]) -> str:
        await ctx.step("lookup", read, ctx.reader, effect=False, retry=quick)
        return "read"

    async with Runtime(flaky) as runtime:
        runtime.register(reads)
        flaky.reads_down = quick.max_attempts + 1  # longer than the step's retry policy
        row, _ = await runtime.start_workflow("reads", {}, actor_key="reader:1")
        done = await runtime.wait_for_finish(row.id, 10)
    assert done is not None and done.status == "completed", done.error if done else done


async def test_a_commit_whose_answer_was_lost_is_not_a_conflict(journal: Journal) -> None:
    flaky = FlakyJournal(journal, lose_ack_of=1)

    async def notes(ctx: WorkflowContext, payload: dict[str, Any]) -> str:
        return await ctx.write("note", _write_note, "hello")

    async with Runtime(flaky) as runtime:
        runtime.register(notes)
        row, _ = await runtime.start_workflow("notes", {}, actor_key="notes:1")
        done = await runtime.wait_for_finish(row.id, 10)
    assert flaky.lost_acks == 1
    assert done is not None and done.status == "completed", done.error if done else done
    assert [e.type for e in await journal.read_events("notes:1")] == ["Note"]


async def test_an_accepted_workflow_whose_answer_was_lost_still_runs(journal: Journal) -> None:
    flaky = FlakyJournal(journal, lose_ack_of_create=1)

    async def accepted(ctx: WorkflowContext, payload: dict[str, Any]) -> str:
        return "ran"

    async with Runtime(flaky) as runtime:
        runtime.register(accepted)
        with pytest.raises(JournalUnavailableError):  # the HTTP edge answers 503 ...
            await runtime.start_workflow("accepted", {}, actor_key="a:1", idempotency_key="k")
        # ... and the client sends it again, with the same key.
        row, created = await runtime.start_workflow("accepted", {}, actor_key="a:1",
                                                    idempotency_key="k")
        done = await runtime.wait_for_finish(row.id, 5)
    assert (flaky.lost_acks, created) == (1, False)
    assert done is not None and done.status == "completed", done


# -- group commit: every batch of a group gets its answer ----------------------------------


async def _append_each(committer: GroupCommitter, count: int) -> list[BaseException]:
    errors: list[BaseException] = []

    async def append(i: int) -> None:
        try:
            await committer.append(Batch(partition=i, epoch=None))
        except JournalUnavailableError as exc:
            errors.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(append, i)
                await anyio.lowlevel.checkpoint()  # queued in order
    return errors


async def test_a_stalled_group_write_fails_every_batch_in_it() -> None:
    groups: list[list[int]] = []

    async def hangs(batches: Sequence[Batch]) -> None:
        groups.append([b.partition for b in batches])
        await anyio.sleep_forever()  # a frozen database: no answer, no error

    errors = await _append_each(GroupCommitter(hangs, write_timeout=0.2), 20)
    assert len(errors) == 20, "a batch in a stalled group got no answer"
    assert sorted(p for group in groups for p in group) == list(range(20))
    assert any(len(group) > 1 for group in groups), groups  # whole groups failed


async def test_batches_written_again_alone_each_get_the_whole_timeout() -> None:
    """A group that fails for one batch's fault is written again batch by batch;
    each of those writes has the timeout to itself, not what the group's first
    try left of it (here 3 x 0.15 s of retries after a 0.15 s try, timeout 0.2 s)."""
    groups: list[list[int]] = []
    release = anyio.Event()

    async def write(batches: Sequence[Batch]) -> None:
        groups.append([b.partition for b in batches])
        if len(groups) == 1:
            await release.wait()  # the next three queue up behind it, as one group
            return
        await anyio.sleep(0.15)
        if len(batches) > 1:
            raise RuntimeError("one batch's fault: each is written alone to find which")

    committer = GroupCommitter(write, max_writers=1, write_timeout=0.2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_append_each, committer, 1)
        await anyio.wait_all_tasks_blocked()
        errors: list[BaseException] = []

        async def rest() -> None:
            errors.extend(await _append_each(committer, 3))

        tg.start_soon(rest)
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert errors == [], errors
    assert [len(group) for group in groups] == [1, 3, 1, 1, 1], groups


async def test_a_queued_append_cancelled_at_the_head_leaves_the_others_their_turn() -> None:
    """Appends 1 and 2 queue behind a group in flight; 1 is cancelled. The writer's
    turn must go to 2, not to 1's dead slot (2 would then wait for a newcomer).
    Found by the group-reads helper; 1 is not written."""
    release = anyio.Event()
    groups: list[list[int]] = []

    async def write(batches: Sequence[Batch]) -> None:
        groups.append([b.partition for b in batches])
        await release.wait()

    committer = GroupCommitter(write, max_writers=1)
    scopes: dict[int, anyio.CancelScope] = {}
    done: list[int] = []

    async def append(i: int) -> None:
        with anyio.CancelScope() as scope:
            scopes[i] = scope
            await committer.append(Batch(partition=i, epoch=None))
            done.append(i)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(append, i)
                await anyio.wait_all_tasks_blocked()
            scopes[1].cancel()
            await anyio.wait_all_tasks_blocked()
            release.set()
    assert done == [0, 2] and groups == [[0], [2]], (done, groups)


async def test_a_failed_group_that_finds_the_database_gone_answers_the_rest_at_once() -> None:
    groups: list[list[int]] = []
    first_written = anyio.Event()

    async def write(batches: Sequence[Batch]) -> None:
        groups.append([b.partition for b in batches])
        if len(groups) == 1:
            await first_written.wait()  # the others queue up meanwhile
            return
        if len(batches) > 1:
            raise RuntimeError("one batch's fault: each is written alone to find which")
        raise JournalUnavailableError("the database went away")

    committer = GroupCommitter(write, max_writers=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_append_each, committer, 1)
        await anyio.sleep(0.01)
        errors: list[BaseException] = []

        async def rest() -> None:
            errors.extend(await _append_each(committer, 6))

        tg.start_soon(rest)
        await anyio.sleep(0.05)
        first_written.set()
    assert len(errors) == 6
    # The group, then its first batch alone; the others were not tried one by one.
    assert groups == [[0], [0, 1, 2, 3, 4, 5], [0]]
