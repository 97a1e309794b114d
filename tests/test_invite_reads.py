"""Reads and commits the runtime no longer makes (on the invite path, after a timer),
and an outage during a wait for an outcome surfacing as the outage (a 503 at the
edge), not as a group (a 500)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest

from journal import (
    Batch,
    Journal,
    JournalUnavailableError,
    MemoryJournal,
    StepRecord,
    WorkflowRow,
)
from runtime import Runtime, WorkflowContext
from runtime.faults import DelegatingJournal


class CountingJournal(DelegatingJournal):
    """Counts the reads a started child and an awaited event used to cost."""

    def __init__(self, inner: Journal) -> None:
        super().__init__(inner)
        self.reads: Counter[str] = Counter()
        self.batches: list[Batch] = []

    async def append(self, batch: Batch) -> None:
        self.batches.append(batch)
        await self.inner.append(batch)

    async def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        self.reads["get_workflow"] += 1
        return await self.inner.get_workflow(workflow_id)

    async def load_steps(self, workflow_id: str) -> list[StepRecord]:
        self.reads["load_steps"] += 1
        return await self.inner.load_steps(workflow_id)

    async def get_workflow_event(self, workflow_id: str, key: str) -> tuple[bool, Any]:
        self.reads["get_workflow_event"] += 1
        return await self.inner.get_workflow_event(workflow_id, key)


class EventsUnavailable(DelegatingJournal):
    async def get_workflow_event(self, workflow_id: str, key: str) -> tuple[bool, Any]:
        raise JournalUnavailableError("simulated outage")


async def _echo(value: Any) -> Any:
    return value


async def _completed(journal: Journal, workflow_id: str) -> WorkflowRow:
    with anyio.fail_after(10):
        while (row := await journal.get_workflow(workflow_id)) is None \
                or row.status != "completed":
            await anyio.sleep(0.01)
    return row


def _register(runtime: Runtime) -> None:
    async def child(ctx: WorkflowContext, n: int) -> int:
        return await ctx.step("child.effect", _echo, n)

    async def parent(ctx: WorkflowContext, n: int) -> int:
        await ctx.step("parent.effect", _echo, n)
        await ctx.set_event("answer", n)
        await ctx.start_child("child", n)
        await ctx.step("parent.after", _echo, n)
        return n

    runtime.register(child, name="child")
    runtime.register(parent, name="parent")


async def test_a_started_child_and_an_awaited_event_cost_no_reads() -> None:
    journal = CountingJournal(MemoryJournal())
    async with Runtime(journal, idle_timeout=5) as runtime:
        _register(runtime)
        row, _ = await runtime.start_workflow("parent", 7, actor_key="customer:reads")
        assert await runtime.wait_for_outcome(row.id, "answer", 10) == (True, 7, None)
        # The test's own looks go to the inner journal, uncounted.
        await _completed(journal.inner, row.id)
        (child,) = await journal.inner.children(row.id)
        assert (await _completed(journal.inner, child.id)).result == 7
    # The child was queued with the row its parent's commit wrote (no history to
    # read), and the event handed over in memory was not read back.
    assert journal.reads == Counter(), journal.reads


async def test_a_timer_that_came_due_commits_with_the_next_write_ahead() -> None:
    journal = CountingJournal(MemoryJournal())

    async def napping(ctx: WorkflowContext, n: int) -> int:
        await ctx.step("before", _echo, n)
        await ctx.sleep(0.01)
        return await ctx.step("after", _echo, n)

    async with Runtime(journal, idle_timeout=5) as runtime:
        runtime.register(napping, name="napping")
        row, _ = await runtime.start_workflow("napping", 3, actor_key="customer:nap")
        assert (await _completed(journal.inner, row.id)).result == 3
    steps = [[(s.kind, s.name, s.status) for s in b.steps] for b in journal.batches]
    woke = ("wait", "sleep", "completed")
    [with_wake] = [b for b in steps if woke in b]
    # No commit of its own: it rode with the next step's write-ahead record.
    assert ("step", "after", "started") in with_wake, steps
    # before (carrying the acceptance: eager start), the sleep, after, the end
    assert len(steps) == 4, steps
    # The timer's run started from the row and history the sleeping run left.
    assert journal.reads == Counter(), journal.reads


async def test_a_cancel_while_a_run_sleeps_is_read_by_the_next_run() -> None:
    """What a sleeping run left is dropped when the workflow changes: here a
    cancel requested by another node whose wake-up was lost, found by catch-up.
    The next run reads the row, and with it the request."""
    journal = CountingJournal(MemoryJournal())
    after: list[int] = []

    async def napping(ctx: WorkflowContext, n: int) -> int:
        await ctx.sleep(1.0)
        after.append(n)
        return n

    async with Runtime(journal, idle_timeout=5) as runtime:
        runtime.register(napping, name="napping")
        row, _ = await runtime.start_workflow("napping", 3, actor_key="customer:nap")
        with anyio.fail_after(5):
            while (await journal.inner.get_workflow(row.id)).status != "waiting":  # type: ignore[union-attr]
                await anyio.sleep(0.005)
        await journal.inner.request_cancel(row.id)  # another node's edge; no wake-up
        await runtime.catch_up()
        done = await runtime.wait_for_finish(row.id, 5)
    assert done is not None and done.status == "cancelled", done
    assert after == []


async def test_an_outage_while_waiting_for_an_outcome_is_the_outage() -> None:
    async with Runtime(EventsUnavailable(MemoryJournal()), idle_timeout=5) as runtime:
        _register(runtime)
        with pytest.raises(JournalUnavailableError, match="simulated outage"):
            # Not accepted here: the wait looks in the journal first.
            await runtime.wait_for_outcome("elsewhere", "answer", 5)
