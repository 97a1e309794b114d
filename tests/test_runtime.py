"""The runtime's promises, against both journals (the `journal` fixture)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from journal import Journal
from runtime import (
    CrashingJournal,
    Runtime,
    VirtualClock,
    WorkflowContext,
)

from .support import Effects, crashed, ids, run_one, sequence, wait_status


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


@pytest.mark.parametrize(
    ("eager", "writes_expected"),
    [
        # accept, 4 write-ahead records (completions ride along), finish
        pytest.param(False, 6, id="accepted-alone"),
        # the acceptance rides with the first write-ahead record (eager start)
        pytest.param(True, 5, id="eager-start"),
    ],
)
async def test_replay_after_a_crash_at_every_journal_write(
    journal: Journal, eager: bool, writes_expected: int
) -> None:
    """Crash after write k for every k; reopen; each step that completed before the
    crash ran exactly once, one in flight ran at most twice with the same key."""
    clean = CrashingJournal(journal)
    effects = Effects()
    await run_one(clean, lambda rt: rt.register(sequence(effects), name="seq"), "seq", 1,
                  eager_start=eager)
    writes = clean.writes
    assert writes == writes_expected
    for k in range(1, writes + 1):
        effects = Effects()
        workflow = sequence(effects)
        crashing = CrashingJournal(journal, crash_after=k)
        key = f"crash:{k}:{eager}"
        workflow_id = f"wf-{k}-{eager}"
        async with crashed():
            # A fresh id (eager start takes only those) that the test knows.
            async with Runtime(crashing, eager_start=eager, new_id=ids(workflow_id)) as rt:
                rt.register(workflow, name="seq")
                await rt.start_workflow("seq", 1, actor_key=key)
                await anyio.sleep(10)
        row = await journal.get_workflow(workflow_id)
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


async def test_a_changed_workflow_is_parked_naming_both_steps(journal: Journal) -> None:

    async def v1(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("charge", lambda: 1)
        await ctx.wait_for_signal("go")

    async def v2(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("refund", lambda: 1)

    async with Runtime(journal) as rt:
        rt.register(v1, name="flow")
        old_version = rt.app_version
        row, _ = await rt.start_workflow("flow", None, actor_key="a:1")
        await wait_status(journal, row.id, "waiting")
    async with Runtime(journal) as rt:
        rt.register(v2, name="flow")
        # A waiting workflow stays out of memory until it wakes; then it replays.
        await rt.signal(row.id, "go")
        await wait_status(journal, row.id, "parked")
        new_version = rt.app_version
    parked = await journal.get_workflow(row.id)
    assert parked is not None
    assert old_version != new_version
    assert "'step refund'" in (parked.error or "") and "'step charge'" in (parked.error or "")
    assert "seq 1" in (parked.error or "")
    assert parked.parked == {"seq": 1, "expected": "step refund", "found": "step charge",
                             "found_version": old_version, "running_version": new_version}


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

    # The journal stamps the signal on its own (real) clock; the runtime's virtual one
    # starts an hour back, so the deadline has passed for the journal once it is due.
    clock = VirtualClock(datetime.now(UTC) - timedelta(hours=1))
    async with Runtime(journal, clock=clock) as rt:
        rt.register(flow)
        rt.register(blocker)
        row, _ = await rt.start_workflow("flow", None, actor_key="a:1")
        await wait_status(journal, row.id, "waiting")
        await rt.start_workflow("blocker", None, actor_key="a:1")
        await clock.advance(0.4)  # the timer is due; the actor is busy with the blocker
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


