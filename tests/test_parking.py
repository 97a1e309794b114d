"""A deploy that disagrees with a waiting workflow's journal parks it (nothing
runs); a deploy that agrees resumes it; an operator can retry or cancel it.
Against both journals (the `journal` fixture)."""

from __future__ import annotations

from typing import Any

from bench.polling import eventually
from journal import Batch, Journal, StatusChange
from runtime import Runtime, WorkflowContext

from .support import wait_status


def deployed(journal: Journal, flow: Any) -> Runtime:
    """A runtime with `flow` registered before it opens (as server.py does), so
    recovery replays parked workflows with it."""
    rt = Runtime(journal)
    rt.register(flow, name="flow")
    return rt


def _one() -> int:
    return 1


def matching(runs: list[str]) -> Any:
    """The code the workflows were started with: charge, two signals, ship."""

    async def flow(ctx: WorkflowContext, _: None) -> list[Any]:
        runs.append("matching")
        await ctx.step("charge", _one)
        first = await ctx.wait_for_signal("go")
        second = await ctx.wait_for_signal("go")
        await ctx.step("ship", _one)
        return [first.payload, second.payload]

    return flow


def breaking(runs: list[str]) -> Any:
    """A deploy that inserted a step before the first wait, without a patch."""

    async def flow(ctx: WorkflowContext, _: None) -> None:
        runs.append("breaking")
        await ctx.step("charge", _one)
        await ctx.step("audit", _one)
        await ctx.wait_for_signal("go")

    return flow


async def _waiting(journal: Journal, runs: list[str]) -> tuple[str, str]:
    async with deployed(journal, matching(runs)) as rt:
        row, _ = await rt.start_workflow("flow", None, actor_key="a:1")
        await wait_status(journal, row.id, "waiting")
    return row.id, rt.app_version


async def _parked(journal: Journal, rt: Runtime, workflow_id: str, payload: str) -> None:
    await rt.signal(workflow_id, "go", payload)
    await wait_status(journal, workflow_id, "parked")


async def _idle(rt: Runtime) -> None:
    async def idle() -> bool:
        return not rt.statistics().in_flight
    await eventually(idle, within=5, interval=0.01, what="the runtime to be idle")


async def test_a_parked_workflow_keeps_its_signals_and_resumes_under_matching_code(
    journal: Journal,
) -> None:
    runs: list[str] = []
    workflow_id, old_version = await _waiting(journal, runs)
    async with deployed(journal, breaking(runs)) as rt:
        await _parked(journal, rt, workflow_id, "one")
        # Sent while it is parked: stored, the workflow replays and parks again.
        await rt.signal(workflow_id, "go", "two")
        await _idle(rt)
        assert await rt.count_parked() == {"flow": 1}
        new_version = rt.app_version
    row = await journal.get_workflow(workflow_id)
    assert row is not None and row.status == "parked"
    assert row.parked == {"seq": 2, "expected": "step audit", "found": "wait signal:go",
                          "found_version": old_version, "running_version": new_version}
    steps = await journal.load_steps(workflow_id)
    assert [(s.name, s.status) for s in steps] == [("charge", "completed"),
                                                   ("signal:go", "started")]
    # The matching code again: recovery replays the parked workflow, which takes
    # both signals, once each, and nothing that completed runs again.
    async with deployed(journal, matching(runs)) as rt:
        done = await rt.wait_for_finish(workflow_id, 5)
        assert await rt.count_parked() == {}
    assert done is not None and (done.status, done.result) == ("completed", ["one", "two"])
    assert done.parked is None
    assert await journal.next_signal(workflow_id, "go") is None


async def test_an_unfixed_deploy_parks_them_again_without_a_hot_loop(journal: Journal) -> None:
    runs: list[str] = []
    workflow_id, _ = await _waiting(journal, runs)
    async with deployed(journal, breaking(runs)) as rt:
        await _parked(journal, rt, workflow_id, "one")
    runs.clear()
    async with deployed(journal, breaking(runs)) as rt:
        # Recovery tries it, and a catch-up that has not yet seen its unconsumed
        # signal (the first, and a heartbeat's running beside it) may too: it parks
        # again each time. After that, catch-ups leave it alone: a hot loop would
        # run it at every one of them.
        for _ in range(8):
            await rt.catch_up()
            await _idle(rt)
        assert 1 <= len(runs) <= 3, runs
    row = await journal.get_workflow(workflow_id)
    assert row is not None and row.status == "parked"


async def test_an_operator_retries_a_parked_workflow_with_todays_code(journal: Journal) -> None:
    runs: list[str] = []
    workflow_id, _ = await _waiting(journal, runs)
    async with deployed(journal, breaking(runs)) as rt:
        await _parked(journal, rt, workflow_id, "one")
        await rt.retry(workflow_id)  # today's code still disagrees: parked again
        await _idle(rt)
        await wait_status(journal, workflow_id, "parked")
        rt.register(matching(runs), name="flow")  # a fix deployed
        await rt.retry(workflow_id)
        await rt.signal(workflow_id, "go", "two")
        done = await rt.wait_for_finish(workflow_id, 5)
    assert done is not None and (done.status, done.result) == ("completed", ["one", "two"])


async def test_an_operator_cancels_a_parked_workflow(journal: Journal) -> None:
    runs: list[str] = []
    workflow_id, _ = await _waiting(journal, runs)
    async with deployed(journal, breaking(runs)) as rt:
        await _parked(journal, rt, workflow_id, "one")
        assert await rt.cancel(workflow_id) == [workflow_id]
        done = await rt.wait_for_finish(workflow_id, 5)
    assert done is not None and done.status == "cancelled"
    assert "parked" in (done.error or "") and done.parked is None


async def test_a_resumed_workflow_with_nothing_to_take_waits_again(journal: Journal) -> None:
    runs: list[str] = []
    workflow_id, _ = await _waiting(journal, runs)
    row = await journal.get_workflow(workflow_id)
    assert row is not None
    # Parked by an earlier deploy, with no signal left for it.
    await journal.append(Batch(partition=row.partition, epoch=None, statuses=(
        StatusChange(workflow_id=workflow_id, status="parked", parked={"seq": 2}),)))
    async with deployed(journal, matching(runs)) as rt:
        await wait_status(journal, workflow_id, "waiting")  # recovery resumed it
        assert await rt.count_parked() == {}
        # Parked again, then retried by an operator: pending, then waiting again.
        await journal.append(Batch(partition=row.partition, epoch=None, statuses=(
            StatusChange(workflow_id=workflow_id, status="parked", parked={"seq": 2}),)))
        await rt.retry(workflow_id)
        await wait_status(journal, workflow_id, "waiting")
        await _idle(rt)
        runs.clear()
        await rt.catch_up()  # a pending one would be run again at every heartbeat
        await _idle(rt)
        assert runs == []
        await rt.signal(workflow_id, "go", "one")
        await rt.signal(workflow_id, "go", "two")
        done = await rt.wait_for_finish(workflow_id, 5)
    assert done is not None and (done.status, done.result) == ("completed", ["one", "two"])
