"""ctx.patched and ctx.deprecate_patch: changing a workflow while runs of it
wait, against both journals (the `journal` fixture). Each test deploys one
version of the code after another on the same journal."""

from __future__ import annotations

from typing import Any

from journal import Journal
from runtime import Runtime, WorkflowContext

from .support import wait_status

Flow = Any


def _mark(name: str) -> str:
    return name


def version_1(trail: list[str]) -> Flow:
    """a, wait for go, b."""

    async def flow(ctx: WorkflowContext, _: None) -> str:
        await ctx.step("a", _mark, "a")
        await ctx.wait_for_signal("go")
        await ctx.step("b", _mark, "b")
        trail.append("v1")
        return "old"

    return flow


def version_2(trail: list[str]) -> Flow:
    """Version 1 with a new step behind the patch "extra"."""

    async def flow(ctx: WorkflowContext, _: None) -> str:
        await ctx.step("a", _mark, "a")
        patched = await ctx.patched("extra")
        if patched:
            await ctx.step("extra", _mark, "extra")
        await ctx.wait_for_signal("go")
        await ctx.step("b", _mark, "b")
        trail.append(f"v2:{patched}")
        return "new" if patched else "old"

    return flow


def version_3(trail: list[str]) -> Flow:
    """The patch deprecated: the new step always runs; no marker is written."""

    async def flow(ctx: WorkflowContext, _: None) -> str:
        await ctx.step("a", _mark, "a")
        await ctx.deprecate_patch("extra")
        await ctx.step("extra", _mark, "extra")
        await ctx.wait_for_signal("go")
        await ctx.step("b", _mark, "b")
        trail.append("v3")
        return "new"

    return flow


async def _start_waiting(journal: Journal, flow: Flow, key: str) -> str:
    async with Runtime(journal) as rt:
        rt.register(flow, name="flow")
        row, _ = await rt.start_workflow("flow", None, actor_key=key)
        await wait_status(journal, row.id, "waiting")
    return row.id


async def _finish(rt: Runtime, workflow_id: str) -> Any:
    await rt.signal(workflow_id, "go")
    done = await rt.wait_for_finish(workflow_id, 5)
    assert done is not None and done.status == "completed", done
    return done.result


async def _history(journal: Journal, workflow_id: str) -> list[tuple[int, str, str]]:
    return [(s.seq, s.kind, s.name) for s in await journal.load_steps(workflow_id)]


async def test_an_old_history_takes_the_old_path_and_a_new_run_the_patched_one(
    journal: Journal,
) -> None:
    trail: list[str] = []
    old = await _start_waiting(journal, version_1(trail), "a:1")
    async with Runtime(journal) as rt:
        rt.register(version_2(trail), name="flow")
        assert await _finish(rt, old) == "old"
        new, _ = await rt.start_workflow("flow", None, actor_key="a:2")
        await wait_status(journal, new.id, "waiting")
        assert await _finish(rt, new.id) == "new"
    assert trail == ["v2:False", "v2:True"]
    # The old history is untouched at the patch: no marker, nothing consumed.
    assert await _history(journal, old) == [(1, "step", "a"), (2, "wait", "signal:go"),
                                            (3, "step", "b")]
    assert await _history(journal, new.id) == [
        (1, "step", "a"), (2, "patch", "extra"), (3, "step", "extra"), (4, "wait", "signal:go"),
        (5, "step", "b")]
    steps = await journal.load_steps(new.id)
    assert steps[1].status == "completed" and steps[1].app_version == rt.app_version


async def test_a_history_with_the_marker_replays_through_it(journal: Journal) -> None:
    trail: list[str] = []
    patched = await _start_waiting(journal, version_2(trail), "a:1")
    async with Runtime(journal) as rt:
        rt.register(version_2(trail), name="flow")
        assert await _finish(rt, patched) == "new"
    assert trail == ["v2:True"]
    kinds = [kind for _, kind, _ in await _history(journal, patched)]
    assert kinds.count("patch") == 1


async def test_deprecate_patch_steps_over_an_old_marker_and_writes_none(
    journal: Journal,
) -> None:
    trail: list[str] = []
    with_marker = await _start_waiting(journal, version_2(trail), "a:1")
    async with Runtime(journal) as rt:
        rt.register(version_3(trail), name="flow")
        assert await _finish(rt, with_marker) == "new"
        fresh, _ = await rt.start_workflow("flow", None, actor_key="a:2")
        await wait_status(journal, fresh.id, "waiting")
        assert await _finish(rt, fresh.id) == "new"
    assert trail == ["v3", "v3"]
    assert [kind for _, kind, _ in await _history(journal, with_marker)].count("patch") == 1
    assert await _history(journal, fresh.id) == [
        (1, "step", "a"), (2, "step", "extra"), (3, "wait", "signal:go"), (4, "step", "b")]


async def test_another_patch_at_that_point_is_not_this_one(journal: Journal) -> None:
    seen: list[bool] = []

    async def first(ctx: WorkflowContext, _: None) -> None:
        await ctx.patched("second")  # journals the marker of "second"
        await ctx.wait_for_signal("go")

    async def later(ctx: WorkflowContext, _: None) -> None:
        seen.append(await ctx.patched("first"))  # added later, before "second"
        seen.append(await ctx.patched("second"))
        await ctx.wait_for_signal("go")

    workflow_id = await _start_waiting(journal, first, "a:1")
    async with Runtime(journal) as rt:
        rt.register(later, name="flow")
        await _finish(rt, workflow_id)
    assert seen == [False, True]
    assert await _history(journal, workflow_id) == [(1, "patch", "second"),
                                                    (2, "wait", "signal:go")]
