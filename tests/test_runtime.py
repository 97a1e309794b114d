"""The runtime's promises, against both journals (the `journal` fixture)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest

from journal import Journal
from runtime import (
    CrashingJournal,
    DelegatingJournal,
    NonRetryableError,
    OverloadedError,
    RestartPolicy,
    RetryPolicy,
    Runtime,
    VirtualClock,
    WorkflowContext,
    current_step,
)

from .support import crashed, wait_status

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.002)


class Effects:
    """A side-effecting step target that records every call with its idempotency key."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.failures: dict[str, int] = {}

    async def act(self, name: str, value: int) -> int:
        self.calls.append((name, current_step().idempotency_key))
        if self.failures.get(name, 0) > 0:
            self.failures[name] -= 1
            raise ConnectionError(f"{name} is down")
        return value * 10

    def count(self) -> Counter[str]:
        return Counter(name for name, _ in self.calls)


def sequence(effects: Effects, steps: int = 4) -> Any:
    async def workflow(ctx: WorkflowContext, start: int) -> int:
        total = 0
        for i in range(steps):
            total += await ctx.step(f"s{i}", effects.act, f"s{i}", start + i, retry=FAST_RETRY)
        return total

    return workflow


async def run_one(journal: Journal, register: Any, name: str, payload: Any, key: str = "a:1",
                  **options: Any) -> Any:
    async with Runtime(journal, **options) as rt:
        register(rt)
        row, _ = await rt.start_workflow(name, payload, actor_key=key)
        done = await rt.wait_for_finish(row.id, 10)
        assert done is not None
        return done


async def test_a_workflow_runs_its_steps_once_and_returns_the_result(journal: Journal) -> None:
    effects = Effects()
    done = await run_one(journal, lambda rt: rt.register(sequence(effects), name="seq"), "seq", 1)
    assert (done.status, done.result) == ("completed", 10 + 20 + 30 + 40)
    assert effects.count() == {"s0": 1, "s1": 1, "s2": 1, "s3": 1}
    steps = await journal.load_steps(done.id)
    assert [(s.seq, s.name, s.status) for s in steps] == [
        (1, "s0", "completed"), (2, "s1", "completed"), (3, "s2", "completed"),
        (4, "s3", "completed"),
    ]
    assert {key for _, key in effects.calls} == {f"{done.id}:{seq}" for seq in range(1, 5)}


async def test_replay_after_a_crash_at_every_journal_write(journal: Journal) -> None:
    """Crash after write k for every k; reopen; each step that completed before the
    crash ran exactly once, one in flight ran at most twice with the same key."""
    clean = CrashingJournal(journal)
    effects = Effects()
    await run_one(clean, lambda rt: rt.register(sequence(effects), name="seq"), "seq", 1)
    writes = clean.writes
    assert writes >= 6  # accept, 4 write-ahead records (completions ride along), finish
    for k in range(1, writes + 1):
        effects = Effects()
        workflow = sequence(effects)
        crashing = CrashingJournal(journal, crash_after=k)
        key = f"crash:{k}"
        async with crashed():
            async with Runtime(crashing) as rt:
                rt.register(workflow, name="seq")
                await rt.start_workflow("seq", 1, actor_key=key, workflow_id=f"wf-{k}")
                await anyio.sleep(10)
        row = await journal.get_workflow(f"wf-{k}")
        assert row is not None, f"crash after write {k}: the accepted workflow was lost"
        completed_before = {s.name for s in await journal.load_steps(row.id)
                            if s.status == "completed"}
        calls_before = effects.count()
        async with Runtime(journal) as rt:
            rt.register(workflow, name="seq")
            done = await rt.wait_for_finish(row.id, 10)
        assert done is not None and (done.status, done.result) == ("completed", 100), k
        for name, count in effects.count().items():
            if name in completed_before:
                assert count == calls_before[name] == 1, (k, name)
            else:
                assert count <= 2, (k, name)
        keys: dict[str, set[str]] = {}
        for name, idem in effects.calls:
            keys.setdefault(name, set()).add(idem)
        assert all(len(v) == 1 for v in keys.values()), (k, keys)
        steps = await journal.load_steps(row.id)
        assert [s.status for s in steps] == ["completed"] * 4


async def test_a_changed_workflow_fails_naming_both_steps(journal: Journal) -> None:

    async def v1(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("charge", lambda: 1)
        await ctx.wait_for_signal("go")

    async def v2(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("refund", lambda: 1)

    async with Runtime(journal) as rt:
        rt.register(v1, name="flow")
        row, _ = await rt.start_workflow("flow", None, actor_key="a:1")
        await wait_status(journal, row.id, "waiting")
    async with Runtime(journal) as rt:
        rt.register(v2, name="flow")
        # A waiting workflow stays out of memory until it wakes; then it replays.
        await rt.signal(row.id, "go")
        done = await rt.wait_for_finish(row.id, 5)
    assert done is not None and done.status == "failed"
    assert "'step refund'" in (done.error or "") and "'step charge'" in (done.error or "")
    assert "seq 1" in (done.error or "")


async def test_signal_sent_before_the_wait_is_consumed_once(journal: Journal) -> None:
    gate = anyio.Event()

    async def flow(ctx: WorkflowContext, _: None) -> list[Any]:
        await ctx.step("gate", gate.wait)
        first = await ctx.wait_for_signal("go", timeout=5)
        second = await ctx.wait_for_signal("go", timeout=0.2)
        return [first.payload, second.timed_out]

    async with Runtime(journal) as rt:
        rt.register(flow)
        row, _ = await rt.start_workflow("flow", None, actor_key="a:1")
        await rt.signal(row.id, "go", {"n": 1})
        gate.set()
        done = await rt.wait_for_finish(row.id, 5)
    assert done is not None and done.result == [{"n": 1}, True]


async def test_signal_and_wait_survive_a_restart(journal: Journal) -> None:
    async def flow(ctx: WorkflowContext, _: None) -> Any:
        wake = await ctx.wait_for_signal("go", timeout=60)
        return wake.payload

    async with Runtime(journal) as rt:
        rt.register(flow)
        row, _ = await rt.start_workflow("flow", None, actor_key="a:1")
        await wait_status(journal, row.id, "waiting")
    # Delivered while no runtime runs: stored, consumed by the next one.
    await journal.send_signal(row.id, "go", "hello")
    async with Runtime(journal) as rt:
        rt.register(flow)
        done = await rt.wait_for_finish(row.id, 5)
    assert done is not None and done.result == "hello"


async def test_a_timer_that_came_due_while_down_fires_once(journal: Journal) -> None:
    effects = Effects()
    clock = VirtualClock()

    async def flow(ctx: WorkflowContext, _: None) -> int:
        await ctx.sleep(3 * 3600)
        return await ctx.step("after", effects.act, "after", 1)

    async with Runtime(journal, clock=clock) as rt:
        rt.register(flow)
        row, _ = await rt.start_workflow("flow", None, actor_key="a:1")
        await wait_status(journal, row.id, "waiting")
    await clock.advance(hours=4)  # while no runtime runs
    async with Runtime(journal, clock=clock) as rt:
        rt.register(flow)
        done = await rt.wait_for_finish(row.id, 5)
        await clock.advance(hours=4)  # a second firing would show in the effects
    assert done is not None and done.result == 10
    assert effects.count() == {"after": 1}
    waits = [s for s in await journal.load_steps(row.id) if s.kind == "wait"]
    assert [(w.status, w.output["timed_out"]) for w in waits] == [("completed", True)]


async def test_a_child_is_started_once_across_a_replay(journal: Journal) -> None:
    effects = Effects()

    async def child(ctx: WorkflowContext, n: int) -> int:
        return await ctx.step("child-step", effects.act, "child", n)

    async def parent(ctx: WorkflowContext, _: None) -> str:
        child_id = await ctx.start_child("child", 7)
        await ctx.wait_for_signal("go", timeout=60)
        return child_id

    async with Runtime(journal) as rt:
        rt.register(parent)
        rt.register(child)
        row, _ = await rt.start_workflow("parent", None, actor_key="a:1")
        await wait_status(journal, row.id, "waiting")
    async with Runtime(journal) as rt:  # replays the parent past start_child
        rt.register(parent)
        rt.register(child)
        await rt.signal(row.id, "go")
        done = await rt.wait_for_finish(row.id, 5)
        assert done is not None
        child_row = await rt.wait_for_finish(done.result, 5)
    children = await journal.children(row.id)
    assert [c.id for c in children] == [done.result]
    assert child_row is not None and child_row.result == 70
    assert effects.count() == {"child": 1}


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


async def test_one_actor_never_interleaves_two_workflows_steps(journal: Journal) -> None:
    trace: list[str] = []

    async def flow(ctx: WorkflowContext, tag: str) -> None:
        for i in range(3):
            async def note(i: int = i) -> None:
                trace.append(f"{tag}{i}")
                await anyio.sleep(0.001)
            await ctx.step(f"n{i}", note)

    async with Runtime(journal) as rt:
        rt.register(flow)
        rows = [(await rt.start_workflow("flow", tag, actor_key="a:1"))[0] for tag in "xyz"]
        for row in rows:
            await rt.wait_for_finish(row.id, 5)
    assert trace == [f"{t}{i}" for t in "xyz" for i in range(3)]


async def test_an_idempotency_key_starts_one_workflow(journal: Journal) -> None:
    async def flow(ctx: WorkflowContext, n: int) -> int:
        return n

    async with Runtime(journal) as rt:
        rt.register(flow)
        first, created = await rt.start_workflow("flow", 1, actor_key="a:1", idempotency_key="k")
        again, created_again = await rt.start_workflow("flow", 1, actor_key="a:1",
                                                       idempotency_key="k")
        assert created and not created_again and again.id == first.id


async def test_a_signal_sent_after_the_deadline_does_not_beat_the_timer(journal: Journal) -> None:
    """Even when the actor is too busy to handle the timer before the signal."""
    busy = anyio.Event()

    async def blocker(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("busy", busy.wait)

    async def flow(ctx: WorkflowContext, _: None) -> bool:
        wake = await ctx.wait_for_signal("go", timeout=0.2)
        return wake.timed_out

    async with Runtime(journal) as rt:
        rt.register(flow)
        rt.register(blocker)
        row, _ = await rt.start_workflow("flow", None, actor_key="a:1")
        await wait_status(journal, row.id, "waiting")
        await rt.start_workflow("blocker", None, actor_key="a:1")
        await anyio.sleep(0.4)
        await rt.signal(row.id, "go", "too late")
        busy.set()
        done = await rt.wait_for_finish(row.id, 5)
    assert done is not None and done.result is True
    assert (await journal.next_signal(row.id, "go")) is not None  # left unconsumed


async def test_waits_that_time_out_leave_nothing_behind(journal: Journal) -> None:
    async def flow(ctx: WorkflowContext, _: None) -> None:
        await ctx.wait_for_signal("never", timeout=60)

    async with Runtime(journal) as rt:
        rt.register(flow)
        row, _ = await rt.start_workflow("flow", None, actor_key="a:1")
        assert await rt.wait_for_event(row.id, "nothing", 0.05) == (False, None)
        assert await rt.wait_for_finish(row.id, 0.05) is None
        assert rt.statistics().waiters == 0


async def test_commands_before_the_runtime_opens_are_refused(journal: Journal) -> None:
    rt = Runtime(journal)

    async def flow(ctx: WorkflowContext, _: None) -> None:
        return None

    rt.register(flow)
    with pytest.raises(OverloadedError, match="not accepting"):
        await rt.signal("wf", "go")
    with pytest.raises(OverloadedError, match="not accepting"):
        await rt.start_workflow("flow", None, actor_key="a:1")


async def test_a_write_that_breaks_a_unique_key_is_recorded_failed_and_writes_nothing(
    journal: Journal,
) -> None:
    def claim(db: Any, owner: str) -> None:
        db.put("handle", owner, {"owner": owner}, unique_key="@ada")
        db.emit({"claimed": owner})

    async def flow(ctx: WorkflowContext, owner: str) -> None:
        await ctx.write("claim", claim, owner)

    async with Runtime(journal) as rt:
        rt.register(flow)
        first, _ = await rt.start_workflow("flow", "a", actor_key="a:1")
        second, _ = await rt.start_workflow("flow", "b", actor_key="b:1")
        done = [await rt.wait_for_finish(w.id, 5) for w in (first, second)]
    # Two actors race for the key; exactly one wins.
    outcome = {d.actor_key: d for d in done if d is not None}
    assert sorted(d.status for d in outcome.values()) == ["completed", "failed"]
    winner = next(d for d in outcome.values() if d.status == "completed")
    loser = next(d for d in outcome.values() if d.status == "failed")
    steps = await journal.load_steps(loser.id)
    assert [(s.name, s.status) for s in steps] == [("claim", "failed")]
    assert "IntegrityError" in (steps[0].error or "")
    assert [d.id for d in await journal.list_documents("handle")] == [winner.input]
    assert await journal.read_events(loser.actor_key) == []


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
