"""Supervision and bounds, against both journals: step retries and their durable
backoff, failing for good and retrying from the failed step, cancel, dead letters,
passivation, the in-flight bound, readiness after an outage."""

from __future__ import annotations

import anyio
import pytest

from journal import Journal
from runtime import (
    DelegatingJournal,
    NonRetryableError,
    OverloadedError,
    RestartPolicy,
    RetryPolicy,
    Runtime,
    WorkflowContext,
)

from .support import Effects, run_one, sequence, wait_status


async def test_retries_then_fails_then_resumes_from_the_failed_step(journal: Journal) -> None:
    effects = Effects()
    effects.failures = {"s2": 5}
    workflow = sequence(effects)
    async with Runtime(journal) as rt:
        rt.register(workflow, name="seq")
        row, _ = await rt.start_workflow("seq", 1, actor_key="a:1")
        failed = await rt.wait_for_finish(row.id, 5)
        assert failed is not None and failed.status == "failed"
        assert "s2" in (failed.error or "") and "ConnectionError" in (failed.error or "")
        steps = await journal.load_steps(row.id)
        assert (steps[2].status, steps[2].attempt) == ("failed", 3)
        tries = steps[2].history
        assert [t["attempt"] for t in tries] == [1, 2, 3]
        assert all("ConnectionError: s2 is down" == t["error"] for t in tries)
        assert effects.count() == {"s0": 1, "s1": 1, "s2": 3}
        effects.failures = {}
        await rt.retry(row.id)
        done = await rt.wait_for_finish(row.id, 5)
    assert done is not None and (done.status, done.result) == ("completed", 100)
    assert effects.count() == {"s0": 1, "s1": 1, "s2": 4, "s3": 1}
    retried = (await journal.load_steps(row.id))[2]
    # Attempts only go up: the operator's retry is attempt 4 (a new round of tries).
    assert [(t["attempt"], t["error"] is None) for t in retried.history] == [
        (1, False), (2, False), (3, False), (4, True),
    ]
    assert (retried.status, retried.attempt) == ("completed", 4)


async def test_a_step_backing_off_does_not_block_its_actor_and_survives_a_restart(
    journal: Journal,
) -> None:
    """The backoff between attempts is a durable timer, not a sleep in the actor."""
    effects = Effects()
    effects.failures = {"s1": 1}
    slow = RetryPolicy(max_attempts=3, initial_backoff=0.6, max_backoff=0.6, jitter=0.0)

    async def flaky(ctx: WorkflowContext, start: int) -> int:
        return await ctx.step("s1", effects.act, "s1", start, retry=slow)

    async def quick(ctx: WorkflowContext, start: int) -> int:
        return await ctx.step("s2", effects.act, "s2", start)

    async with Runtime(journal) as rt:
        rt.register(flaky)
        rt.register(quick)
        backing_off, _ = await rt.start_workflow("flaky", 1, actor_key="a:1")
        await wait_status(journal, backing_off.id, "waiting")
        step = (await journal.load_steps(backing_off.id))[0]
        assert (step.status, step.attempt, step.fire_at is not None) == ("backoff", 1, True)
        # The same actor handles another message while the first workflow backs off.
        other, _ = await rt.start_workflow("quick", 2, actor_key="a:1")
        done = await rt.wait_for_finish(other.id, 0.4)
        assert done is not None and done.status == "completed"
    # A restart in the middle of the backoff: the timer is re-armed by recovery.
    async with Runtime(journal) as rt:
        rt.register(flaky)
        rt.register(quick)
        resumed = await rt.wait_for_finish(backing_off.id, 5)
    assert resumed is not None and (resumed.status, resumed.result) == ("completed", 10)
    assert effects.count() == {"s1": 2, "s2": 1}
    step = (await journal.load_steps(backing_off.id))[0]
    assert (step.status, step.attempt) == ("completed", 2)


async def test_a_non_retryable_error_fails_the_step_at_once(journal: Journal) -> None:
    calls = 0

    async def refuse() -> None:
        nonlocal calls
        calls += 1
        raise NonRetryableError("card declined")

    async def flow(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("charge", refuse)

    done = await run_one(journal, lambda rt: rt.register(flow), "flow", None)
    assert done.status == "failed" and "card declined" in done.error and calls == 1


async def test_cancel_stops_a_waiting_workflow_and_its_children(journal: Journal) -> None:
    async def child(ctx: WorkflowContext, _: None) -> None:
        await ctx.wait_for_signal("never", timeout=60)

    async def parent(ctx: WorkflowContext, _: None) -> None:
        await ctx.start_child("child", None)
        await ctx.wait_for_signal("never", timeout=60)

    async with Runtime(journal) as rt:
        rt.register(parent)
        rt.register(child)
        row, _ = await rt.start_workflow("parent", None, actor_key="a:1")
        await wait_status(journal, row.id, "waiting")
        child_id = f"{row.id}:1"
        await wait_status(journal, child_id, "waiting")
        assert sorted(await rt.cancel(row.id)) == sorted([row.id, child_id])
        for workflow_id in (row.id, child_id):
            done = await rt.wait_for_finish(workflow_id, 5)
            assert done is not None and done.status == "cancelled"


async def test_a_crashing_message_goes_to_the_dead_letters_and_the_actor_goes_on(
    journal: Journal,
) -> None:
    attempts = 0

    async def buggy(ctx: WorkflowContext, _: None) -> None:
        nonlocal attempts
        attempts += 1
        raise KeyError("a bug, not a step failure")

    async def fine(ctx: WorkflowContext, _: None) -> str:
        return await ctx.step("ok", lambda: "ok")

    policy = RestartPolicy(max_crashes=3, initial_backoff=0.001)
    async with Runtime(journal, restart=policy) as rt:
        rt.register(buggy)
        rt.register(fine)
        bad, _ = await rt.start_workflow("buggy", None, actor_key="a:1")
        good, _ = await rt.start_workflow("fine", None, actor_key="a:1")
        done = await rt.wait_for_finish(good.id, 5)
        assert done is not None and done.result == "ok"
        failed = await rt.wait_for_finish(bad.id, 5)
        assert failed is not None and failed.status == "failed"
        assert "dead-lettered" in (failed.error or "")
        letters = await journal.list_dead_letters()
        assert [letter.message["workflow_id"] for letter in letters] == [bad.id]
        assert attempts == 3
        assert rt.metrics.actor_restarts._value.get() == 3  # noqa: SLF001
        letter = await rt.redeliver(letters[0].id)
        assert letter is not None
        await anyio.sleep(0.2)
        assert attempts == 6
        assert await rt.redeliver(letters[0].id) is None


async def test_idle_actors_passivate_and_come_back_on_demand(journal: Journal) -> None:
    async def flow(ctx: WorkflowContext, n: int) -> int:
        return await ctx.step("double", lambda: n * 2)

    async with Runtime(journal, idle_timeout=0.05) as rt:
        rt.register(flow)
        row, _ = await rt.start_workflow("flow", 1, actor_key="a:1")
        await rt.wait_for_finish(row.id, 5)
        assert rt.statistics().active_actors == 1
        with anyio.fail_after(5):
            while rt.statistics().active_actors:
                await anyio.sleep(0.02)
        row, _ = await rt.start_workflow("flow", 2, actor_key="a:1")
        done = await rt.wait_for_finish(row.id, 5)
        assert done is not None and done.result == 4
        assert rt.metrics.passivations._value.get() >= 1  # noqa: SLF001


async def test_past_the_in_flight_bound_nothing_is_accepted(journal: Journal) -> None:
    gate = anyio.Event()

    async def flow(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("block", gate.wait)

    async with Runtime(journal, max_in_flight=2) as rt:
        rt.register(flow)
        for i in range(2):
            await rt.start_workflow("flow", None, actor_key=f"a:{i}")
        # Totals, not per status: the two blocked ones may move to running meanwhile.
        before = sum((await journal.count_workflows_by_status()).values())
        with pytest.raises(OverloadedError, match="retry in"):
            await rt.start_workflow("flow", None, actor_key="a:9")
        assert sum((await journal.count_workflows_by_status()).values()) == before == 2
        gate.set()


async def test_commands_before_the_runtime_opens_are_refused(journal: Journal) -> None:
    rt = Runtime(journal)

    async def flow(ctx: WorkflowContext, _: None) -> None:
        return None

    rt.register(flow)
    with pytest.raises(OverloadedError, match="not accepting"):
        await rt.signal("wf", "go")
    with pytest.raises(OverloadedError, match="not accepting"):
        await rt.start_workflow("flow", None, actor_key="a:1")


async def test_an_idle_runtime_is_ready_again_once_its_heartbeat_reaches_the_journal() -> None:
    """No commit tells an idle node that an outage is over (it refuses commands
    while not ready): its heartbeat does."""
    from journal import ClusterView, JournalUnavailableError, MemoryJournal

    class Unreachable(DelegatingJournal):
        down = False

        async def heartbeat(self, node_id: str, ttl: float, *, stale_after: float) -> ClusterView:
            if self.down:
                raise JournalUnavailableError("simulated outage")
            return await self.inner.heartbeat(node_id, ttl, stale_after=stale_after)

    journal = Unreachable(MemoryJournal())
    async with Runtime(journal, heartbeat_interval=0.02, lease_ttl=0.2) as rt:
        assert rt.ready
        journal.down = True
        with anyio.fail_after(2):
            while rt.ready:
                await anyio.sleep(0.01)
        journal.down = False
        with anyio.fail_after(2):
            while not rt.ready:
                await anyio.sleep(0.01)
