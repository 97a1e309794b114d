"""Retention and idempotency-key expiry end to end: the runtime's pruner on a
virtual clock (both journals), the HTTP API, and the configuration.

No sleeps decide anything: the runtime's VirtualClock moves past the retention
or the key's time to live, and the pruner (woken by the jump) or the next
create does the rest; polling only waits for that work to land."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bench.polling import eventually
from journal import Journal, JournalUnavailableError, MemoryJournal, WorkflowRow
from runtime import (
    DelegatingJournal,
    PruneCounts,
    RetentionSettings,
    Runtime,
    VirtualClock,
    WorkflowContext,
    prune_journal,
)
from server import parse_config
from tests.server_support import Served, invitation_token, serving

HOUR = 3600.0


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture(params=["memory", "postgres"])
def journal(request: pytest.FixtureRequest, clock: VirtualClock) -> Journal:
    """A MemoryJournal on the test's virtual clock, or PostgreSQL on its own."""
    if request.param == "memory":
        return MemoryJournal(clock=clock.timestamp)
    postgres: Journal = request.getfixturevalue("postgres_journal")
    return postgres


def _greet(name: str) -> str:
    return f"hello {name}"


async def flow(ctx: WorkflowContext, name: str) -> str:
    """A step, a signal waited for, an event published: all of what pruning removes."""
    greeting = await ctx.step("greet", _greet, name)
    woken = await ctx.wait_for_signal("go")
    await ctx.set_event("answer", greeting)
    return f"{greeting} {woken.payload}"


@pytest.fixture
async def runtime(journal: Journal, clock: VirtualClock) -> AsyncIterator[Runtime]:
    settings = RetentionSettings(retention=HOUR, idempotency_ttl=HOUR, interval=60)
    async with Runtime(journal, clock=clock, retention=settings,
                       registry=CollectorRegistry()) as rt:
        rt.register(flow)
        yield rt


async def _finished(rt: Runtime, key: str | None = None) -> WorkflowRow:
    row, _ = await rt.start_workflow("flow", "ada", actor_key="customer:ada",
                                     idempotency_key=key)
    await eventually(lambda: _status_is(rt, row.id, "waiting"), what="the flow to wait")
    await rt.signal(row.id, "go", "!")
    assert await rt.wait_for_finish(row.id, 5) is not None
    done = await rt.journal.get_workflow(row.id)  # as stamped by the journal's clock
    assert done is not None and done.status == "completed"
    return done


async def _status_is(rt: Runtime, workflow_id: str, status: str) -> bool:
    row = await rt.journal.get_workflow(workflow_id)
    return row is not None and row.status == status


async def _pruned(rt: Runtime, workflow_id: str) -> WorkflowRow | None:
    row = await rt.journal.get_workflow(workflow_id)
    return row if row is not None and row.pruned_at is not None else None


def _pruned_total(rt: Runtime) -> float:
    value = rt.metrics.registry.get_sample_value("retinue_pruned_workflows_total")
    return value or 0.0


# -- the runtime's pruner ------------------------------------------------------------------


async def test_the_owner_prunes_a_finished_workflow_once_the_retention_has_passed(
    runtime: Runtime, clock: VirtualClock
) -> None:
    done = await _finished(runtime)
    assert len(await runtime.journal.load_steps(done.id)) >= 2

    await clock.advance(minutes=30)  # a pass is due, the retention is not over
    assert await runtime.pruner.prune_once() == PruneCounts()
    assert await _pruned(runtime, done.id) is None
    assert len(await runtime.journal.load_steps(done.id)) >= 2

    await clock.advance(minutes=31)  # past the retention: the pruner's next pass
    pruned = await eventually(lambda: _pruned(runtime, done.id), what="the workflow pruned")

    assert (pruned.status, pruned.result, pruned.updated_at) == (
        "completed", done.result, done.updated_at)
    assert await runtime.journal.load_steps(done.id) == []
    assert await runtime.journal.get_workflow_event(done.id, "answer") == (False, None)
    assert _pruned_total(runtime) == 1


async def test_a_node_that_owns_nothing_prunes_nothing(
    journal: Journal, clock: VirtualClock
) -> None:
    settings = RetentionSettings(retention=HOUR, interval=60)
    async with Runtime(journal, clock=clock, retention=settings) as rt:
        rt.register(flow)
        done = await _finished(rt)
        rt.stop_partitions(list(rt.owned()))  # as if another node took them all
        await clock.advance(hours=2)
        assert await rt.pruner.prune_once() == PruneCounts()
    row = await journal.get_workflow(done.id)
    assert row is not None and row.pruned_at is None


class _Down(DelegatingJournal):
    """A journal whose retention calls find the database gone."""

    async def expire_idempotency_keys(self, *args: Any, **kwargs: Any) -> int:
        raise JournalUnavailableError("the database is down (test)")


async def test_an_outage_skips_a_pass_and_the_next_one_catches_up(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    memory = MemoryJournal(clock=clock.timestamp)
    down = _Down(memory)
    settings = RetentionSettings(retention=HOUR, idempotency_ttl=HOUR, interval=60)
    async with Runtime(down, clock=clock, retention=settings) as rt:
        rt.register(flow)
        done = await _finished(rt)
        await clock.advance(hours=2)
        assert await rt.pruner.prune_once() == PruneCounts()
        assert "pruning skipped a pass" in caplog.text
        down.expire_idempotency_keys = memory.expire_idempotency_keys  # type: ignore[method-assign]
        assert await rt.pruner.prune_once() in (PruneCounts(workflows=1), PruneCounts())
        assert await eventually(lambda: _pruned(rt, done.id))


async def test_zero_keeps_everything(journal: Journal, clock: VirtualClock) -> None:
    settings = RetentionSettings(retention=0, idempotency_ttl=0)
    async with Runtime(journal, clock=clock, retention=settings) as rt:
        rt.register(flow)
        done = await _finished(rt, key="k")
        await clock.advance(days=400)
        assert await rt.pruner.prune_once() == PruneCounts()
        again, created = await rt.start_workflow("flow", "ada", actor_key="customer:ada",
                                                 idempotency_key="k")
    assert (again.id, created) == (done.id, False)


async def test_an_operator_prune_covers_every_partition_in_batches(
    runtime: Runtime, clock: VirtualClock
) -> None:
    ids = [(await _finished(runtime)).id for _ in range(3)]
    await clock.advance(hours=2)
    batches: list[PruneCounts] = []

    counts = await prune_journal(runtime.journal, finished_before=clock.now(),
                                 keys_issued_before=None, batch=2, progress=batches.append)

    # Unless the node's own pass got there first: between them, all three.
    assert counts.workflows + _pruned_total(runtime) == 3
    assert all(batch.workflows <= 2 for batch in batches)
    for workflow_id in ids:
        assert await runtime.journal.load_steps(workflow_id) == []


# -- idempotency keys --------------------------------------------------------------------


async def test_a_key_answers_within_its_time_and_starts_anew_after_it(
    journal: Journal, clock: VirtualClock
) -> None:
    # The create frees an expired key itself; the pruner is kept out of it (its
    # first run a day away). On PostgreSQL rows are stamped by the database's
    # clock, not this virtual one: a pruner run after the new create would find
    # the new key "issued" an hour before virtual now, and free it too (seen once,
    # under load, as a flaky `stored.idempotency_key == None`).
    settings = RetentionSettings(retention=HOUR, idempotency_ttl=HOUR, interval=24 * HOUR)
    async with Runtime(journal, clock=clock, retention=settings,
                       registry=CollectorRegistry()) as runtime:
        runtime.register(flow)
        await _a_key_answers_within_its_time(runtime, clock)


async def _a_key_answers_within_its_time(runtime: Runtime, clock: VirtualClock) -> None:
    first, created = await runtime.start_workflow("flow", "ada", actor_key="customer:ada",
                                                  idempotency_key="k")
    assert created
    await clock.advance(minutes=59)
    again, created = await runtime.start_workflow("flow", "bob", actor_key="customer:bob",
                                                  idempotency_key="k")
    assert (again.id, created) == (first.id, False)

    await clock.advance(minutes=2)
    fresh, created = await runtime.start_workflow("flow", "bob", actor_key="customer:bob",
                                                  idempotency_key="k")

    assert created and fresh.id != first.id
    stored = await runtime.journal.get_workflow(fresh.id)
    assert stored is not None and stored.idempotency_key == "k"
    old = await runtime.journal.get_workflow(first.id)
    assert old is not None and old.idempotency_key is None


# -- over HTTP -----------------------------------------------------------------------------


async def _invite(served: Served, email: str, key: str | None = None) -> tuple[int, Any]:
    headers = {"Idempotency-Key": key} if key else {}
    reply = await served.client.post("/customers/invite", json={"email": email},
                                     headers=headers)
    return reply.status, await reply.json()


async def test_the_api_says_a_workflow_was_pruned_and_when(pg_dsn: str) -> None:
    clock = VirtualClock()
    settings = RetentionSettings(retention=60, interval=10)
    async with serving(pg_dsn, clock=clock, retention=settings) as served:
        status, invited = await _invite(served, "ada@example.com")
        assert status == 200
        workflow_id = invited["workflow_id"]
        token = await invitation_token(served.journal, invited["id"])
        verified = await served.client.post(f"/customers/{invited['id']}/verify",
                                            json={"token": token})
        assert verified.status == 200
        assert await served.runtime.wait_for_finish(workflow_id, 5) is not None
        before = await (await served.client.get(f"/workflows/{workflow_id}")).json()
        assert before["pruned_at"] is None and before["steps"]

        await clock.advance(seconds=120)

        async def pruned() -> dict[str, Any] | None:
            reply = await served.client.get(f"/workflows/{workflow_id}")
            body: dict[str, Any] = await reply.json()
            return body if body["pruned_at"] is not None else None

        body = await eventually(pruned, what="GET /workflows/{id} to say pruned")
        assert (body["status"], body["steps"]) == ("completed", [])
        assert body["updated_at"] == before["updated_at"]
        trace = await served.client.get(f"/workflows/{workflow_id}/trace")
        assert trace.status == 200
        # The business record stays: the customer and their event log.
        customer = await (await served.client.get(f"/customers/{invited['id']}")).json()
        assert customer["status"] == "verified"
        metrics = await (await served.client.get("/metrics")).text()
        counted = re.search(r"^retinue_pruned_workflows_total (\S+)$", metrics, re.MULTILINE)
        assert counted is not None and float(counted.group(1)) >= 1


async def test_an_idempotency_key_expires_after_its_ttl_over_http(pg_dsn: str) -> None:
    clock = VirtualClock()
    settings = RetentionSettings(idempotency_ttl=HOUR)
    async with serving(pg_dsn, clock=clock, retention=settings) as served:
        first = await _invite(served, "ada@example.com", key="invite-ada")
        assert first[0] == 200
        await clock.advance(minutes=30)
        assert await _invite(served, "ada@example.com", key="invite-ada") == first
        assert (await _invite(served, "bob@example.com", key="invite-ada"))[0] == 422

        await clock.advance(minutes=31)
        status, body = await _invite(served, "bob@example.com", key="invite-ada")

        # A new workflow for the key: bob is invited, by a workflow of his own.
        assert status == 200 and body["email"] == "bob@example.com"
        assert body["workflow_id"] != first[1]["workflow_id"]


# -- configuration -------------------------------------------------------------------------


def test_retention_settings_come_from_the_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert parse_config([], environ={}).retention == RetentionSettings()
    config = parse_config([], environ={"RETINUE_RETENTION": "0", "RETINUE_IDEMPOTENCY_TTL": "90",
                                       "RETINUE_PRUNE_INTERVAL": "2.5"})
    assert config.retention == RetentionSettings(retention=0, idempotency_ttl=90, interval=2.5)
    with pytest.raises(SystemExit):
        parse_config([], environ={"RETINUE_RETENTION": "7d"})
    assert "RETINUE_RETENTION='7d' is not a number of seconds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config([], environ={"RETINUE_PRUNE_INTERVAL": "0"})


def test_bad_retention_settings_say_what_to_fix() -> None:
    with pytest.raises(ValueError, match="0 \\(keep for ever\\) or more"):
        RetentionSettings(retention=-1)
    with pytest.raises(ValueError, match="must be positive"):
        RetentionSettings(interval=0)
    assert RetentionSettings(retention=0).finished_before(VirtualClock().now()) is None
    assert timedelta(seconds=RetentionSettings().retention) == timedelta(days=7)
