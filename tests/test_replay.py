"""The replay check (runtime/replay.py) and exported histories, against both journals:
today's code against stored histories, with no side effects and nothing written."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest

from journal import Batch, Journal, MemoryJournal, NewWorkflow, WorkflowNotFoundError
from runtime import (
    HISTORY_FORMAT,
    SYSTEM_CLOCK,
    NonRetryableError,
    WorkflowContext,
    app_version,
    export_history,
    load_history,
    partition_of,
    replay_check,
)
from runtime.testing import assert_replays, check_history_replays, open_test_runtime

from .support import Effects, wait_status


def _workflows(effects: Effects) -> dict[str, Any]:
    """Version 1 of the code: `pay` runs two steps and publishes; `hold` runs a step,
    waits for a signal, then runs another; `broken` fails its second step."""

    async def pay(ctx: WorkflowContext, n: int) -> int:
        a = await ctx.step("a", effects.act, "a", n)
        b = await ctx.step("b", effects.act, "b", n)
        await ctx.set_event("paid", a + b)
        return a + b

    async def hold(ctx: WorkflowContext, n: int) -> int:
        a = await ctx.step("a", effects.act, "a", n)
        await ctx.wait_for_signal("go")
        return a + await ctx.step("c", effects.act, "c", n)

    async def broken(ctx: WorkflowContext, n: int) -> int:
        await ctx.step("a", effects.act, "a", n)
        return await ctx.step("b", _refuse)

    return {"pay": pay, "hold": hold, "broken": broken}


async def _refuse() -> int:
    raise NonRetryableError("the card was declined")


async def _journal_state(journal: Journal) -> Any:
    """Everything a replay could write, read through the contract."""
    rows = (await journal.list_workflows(limit=500)).workflows
    return (rows, [await journal.load_steps(r.id) for r in rows],
            [await journal.workflow_signals(r.id) for r in rows],
            await journal.read_all_events(), await journal.list_dead_letters(),
            await journal.count_workflows_by_status())


async def _history(journal: Journal, effects: Effects) -> dict[str, str]:
    """One completed `pay`, one `hold` waiting for its signal, one failed `broken`."""
    async with open_test_runtime(journal=journal) as rt:
        for name, fn in _workflows(effects).items():
            rt.register(fn, name=name)
        ids = {}
        for name in ("pay", "hold", "broken"):
            row, _ = await rt.start_workflow(name, 1, actor_key=f"{name}:1")
            ids[name] = row.id
        assert (await rt.wait_for_finish(ids["pay"], 5)) is not None
        assert (await rt.wait_for_finish(ids["broken"], 5)) is not None
        await wait_status(journal, ids["hold"], "waiting")
        # The check reads only: it may run beside a live runtime.
        report = await replay_check(journal, rt.workflows, finished=10)
        assert report.ok, report.describe()
    return ids


async def test_todays_code_replays_its_own_histories_cleanly(journal: Journal) -> None:
    effects = Effects()
    ids = await _history(journal, effects)
    calls = len(effects.calls)
    before = await _journal_state(journal)
    report = await replay_check(journal, _workflows(effects), finished=10)
    assert report.ok and report.summary == {"replays": 3}, report.describe()
    by_id = {r.workflow_id: r for r in report.results}
    assert [r.workflow_id for r in report.results] == [ids["hold"], ids["pay"], ids["broken"]]
    waiting = by_id[ids["hold"]]
    # The pending wait is where it stops: nothing after it runs, nothing is consumed.
    assert (waiting.status, waiting.seq, waiting.expected) == ("waiting", 2, "wait signal:go")
    assert "it is started" in waiting.detail
    assert (by_id[ids["pay"]].seq, by_id[ids["pay"]].detail) == (
        None, "replays cleanly to its end (3 steps)")
    assert by_id[ids["broken"]].status == "failed" and by_id[ids["broken"]].ok
    # Each names the version its history was written under (the code is the same).
    assert {r.version for r in report.results} == {app_version(_workflows(effects))}
    assert len(effects.calls) == calls  # no step ran
    assert await _journal_state(journal) == before  # nothing written


async def test_a_reordered_or_added_step_is_reported_with_seq_expected_found(
    journal: Journal,
) -> None:
    effects = Effects()
    ids = await _history(journal, effects)
    before = await _journal_state(journal)

    async def pay(ctx: WorkflowContext, n: int) -> int:  # b before a now
        b = await ctx.step("b", effects.act, "b", n)
        return b + await ctx.step("a", effects.act, "a", n)

    async def hold(ctx: WorkflowContext, n: int) -> int:  # a new step before the wait
        a = await ctx.step("a", effects.act, "a", n)
        await ctx.step("audit", effects.act, "audit", n)
        await ctx.wait_for_signal("go")
        return a

    changed = {**_workflows(effects), "pay": pay, "hold": hold}
    calls = len(effects.calls)
    report = await replay_check(journal, changed, finished=10)
    assert not report.ok and report.summary == {"mismatch": 2, "replays": 1}
    by_id = {r.workflow_id: r for r in report.results}
    assert (by_id[ids["pay"]].seq, by_id[ids["pay"]].expected, by_id[ids["pay"]].found) == (
        1, "step b", "step a")
    assert (by_id[ids["hold"]].seq, by_id[ids["hold"]].expected, by_id[ids["hold"]].found) == (
        2, "step audit", "wait signal:go")
    assert [r.workflow_id for r in report.problems] == [ids["hold"], ids["pay"]]
    assert "asked for step 'step b'" in report.describe()
    assert len(effects.calls) == calls
    assert await _journal_state(journal) == before


async def test_a_step_added_at_the_end_replays_up_to_it(journal: Journal) -> None:
    effects = Effects()
    ids = await _history(journal, effects)

    async def pay(ctx: WorkflowContext, n: int) -> int:  # a receipt after the old end
        total = await _workflows(effects)["pay"](ctx, n)
        await ctx.step("receipt", effects.act, "receipt", n)
        return int(total)

    calls = len(effects.calls)
    (result,) = (await replay_check(journal, {"pay": pay}, ids=[ids["pay"]])).results
    assert (result.outcome, result.ok, result.seq, result.expected, result.found) == (
        "replays", True, 4, "step receipt", None)
    assert "nothing is recorded there" in result.detail
    assert len(effects.calls) == calls


async def test_code_that_awaits_outside_its_steps_is_reported_not_waited_for(
    journal: Journal,
) -> None:
    ids = await _history(journal, Effects())
    never = anyio.Event()

    async def hold(ctx: WorkflowContext, n: int) -> int:
        await never.wait()
        return n

    report = await replay_check(journal, {"hold": hold}, timeout=0.05)
    (result,) = report.results
    assert (result.workflow_id, result.outcome, result.ok) == (ids["hold"], "error", False)
    assert "did not end within 0.05 s" in result.detail


async def test_the_replay_host_refuses_every_write() -> None:
    from runtime.replay import _ReplayHost, _Stop

    host = _ReplayHost(MemoryJournal(), SYSTEM_CLOCK, "v1")
    with pytest.raises(_Stop):
        await host.commit(Batch(partition=0, epoch=None))
    with pytest.raises(_Stop):
        await host.next_event_seq("a:1")
    for write in (lambda: host.events_committed("a:1", 1),
                  lambda: host.child_started(NewWorkflow(id="c", name="n", actor_key="a",
                                                         partition=0)),
                  lambda: host.event_published("w", "k", 1)):
        with pytest.raises(_Stop):
            write()
    assert (host.epoch_of(3), host.cancel_requested("w")) == (0, False)
    assert host.partition_of("a:1") == partition_of("a:1")


async def test_code_that_ends_before_its_history_does_is_a_mismatch(journal: Journal) -> None:
    effects = Effects()
    ids = await _history(journal, effects)

    async def pay(ctx: WorkflowContext, n: int) -> int:  # dropped b and the event
        return await ctx.step("a", effects.act, "a", n)

    report = await replay_check(journal, {"pay": pay}, ids=[ids["pay"]])
    (result,) = report.results
    assert (result.outcome, result.seq, result.expected, result.found) == (
        "mismatch", 2, "the end of the workflow", "step b")
    assert "2 steps the code no longer asks for" in result.detail


async def test_selection_by_name_ids_and_finished_count(journal: Journal) -> None:
    effects = Effects()
    ids = await _history(journal, effects)
    code = _workflows(effects)
    only_unfinished = await replay_check(journal, code)
    assert [r.workflow_id for r in only_unfinished.results] == [ids["hold"]]
    newest = await replay_check(journal, code, finished=1)
    assert len(newest.results) == 2
    named = await replay_check(journal, code, workflow="pay", finished=5)
    assert [r.workflow_id for r in named.results] == [ids["pay"]]
    chosen = await replay_check(journal, code, ids=[ids["broken"], "ghost", ids["pay"]],
                                workflow="broken")
    assert [(r.workflow_id, r.outcome, r.ok) for r in chosen.results] == [
        (ids["broken"], "replays", True), ("ghost", "missing", False)]
    assert not chosen.ok and "ghost" in chosen.describe()


async def test_an_unregistered_workflow_or_code_that_raises_fails_the_check(
    journal: Journal,
) -> None:
    effects = Effects()
    ids = await _history(journal, effects)

    async def hold(ctx: WorkflowContext, n: int) -> int:
        raise TypeError("a bug")

    report = await replay_check(journal, {"hold": hold}, finished=10)
    by_id = {r.workflow_id: r for r in report.results}
    assert (by_id[ids["hold"]].outcome, by_id[ids["hold"]].ok) == ("error", False)
    assert by_id[ids["hold"]].detail == "the code raised TypeError: a bug"
    assert (by_id[ids["pay"]].outcome, by_id[ids["pay"]].ok) == ("unknown", False)
    assert "register it" in by_id[ids["pay"]].detail
    assert report.summary == {"error": 1, "unknown": 2}


async def test_an_export_round_trips_through_json_and_replays(journal: Journal) -> None:
    effects = Effects()
    ids = await _history(journal, effects)
    exported = await export_history(journal, ids["hold"])
    assert exported["format"] == HISTORY_FORMAT
    assert exported["workflow"]["id"] == ids["hold"]
    assert [s["seq"] for s in exported["steps"]] == [1, 2]
    as_json = msgspec.json.encode(exported)
    assert msgspec.json.decode(as_json) == exported
    row, steps = load_history(as_json)
    assert row == await journal.get_workflow(ids["hold"])
    assert steps == await journal.load_steps(ids["hold"])
    calls = len(effects.calls)
    result = await assert_replays(as_json, _workflows(effects))
    assert (result.outcome, result.seq) == ("replays", 2)
    assert (await check_history_replays(exported, _workflows(effects))).ok
    assert len(effects.calls) == calls


async def test_an_export_keeps_the_signals_and_a_changed_code_fails_the_assert(
    journal: Journal,
) -> None:
    effects = Effects()
    ids = await _history(journal, effects)
    await journal.send_signal(ids["hold"], "go", {"token": "t-1"})
    exported = await export_history(journal, ids["hold"])
    assert [(s["name"], s["payload"], s["consumed"]) for s in exported["signals"]] == [
        ("go", {"token": "t-1"}, False)]

    async def hold(ctx: WorkflowContext, n: int) -> int:
        await ctx.wait_for_signal("go")
        return 0

    with pytest.raises(AssertionError, match=r"at seq 1 asked for step 'wait signal:go', but "
                       r"the journal holds 'step a'"):
        await assert_replays(msgspec.json.encode(exported), {"hold": hold})
    with pytest.raises(WorkflowNotFoundError):
        await export_history(journal, "ghost")


@pytest.mark.parametrize(("exported", "problem"), [
    (b"{nope", "not an exported workflow history"),
    ({"format": HISTORY_FORMAT}, "not an exported workflow history"),
    ({"format": "other/9", "workflow": {}}, "not an exported workflow history"),
])
async def test_something_else_than_an_export_is_refused_saying_why(
    exported: Any, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        load_history(exported)


async def test_an_export_of_another_format_is_refused(journal: Journal) -> None:
    ids = await _history(journal, Effects())
    exported = await export_history(journal, ids["pay"])
    with pytest.raises(ValueError, match="format 'retinue.history/0' is not"):
        load_history({**exported, "format": "retinue.history/0"})
