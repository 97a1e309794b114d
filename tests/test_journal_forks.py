"""The journal contract's forks and history reads (`fork_workflow`, `forks`,
`workflow_signals`), against MemoryJournal and PostgresJournal alike."""

from __future__ import annotations

import anyio
import pytest

from journal import (
    InvalidForkError,
    InvalidTransitionError,
    Journal,
    StatusChange,
    WorkflowNotFoundError,
)

from .journal_support import TRICKY, batch, new_wf, step


async def _failed_at_three(journal: Journal, wf_id: str = "wf-1") -> None:
    """A workflow whose steps 1 (a step), 2 (an event) completed and 3 failed."""
    await journal.create_workflow(new_wf(wf_id, input=TRICKY, actor_key="a:1", partition=7))
    await journal.append(batch(partition=7, steps=(
        step(wf_id, 1, "completed", output={"n": 10}, attempt=2, history=[{"attempt": 1}]),
        step(wf_id, 2, "completed", name="ready", kind="event", output="yes"),
        step(wf_id, 3, "failed", error="NonRetryableError: boom"),
    ), statuses=(StatusChange(workflow_id=wf_id, status="failed", error="step 3 failed"),)))


async def test_a_fork_copies_the_completed_steps_before_its_seq(journal: Journal) -> None:
    await _failed_at_three(journal)
    fork, created = await journal.fork_workflow("wf-1", 3, "fork-1", trace_id="t2")
    assert created
    assert (fork.id, fork.name, fork.actor_key, fork.partition, fork.input) == (
        "fork-1", "invite", "a:1", 7, TRICKY)
    assert (fork.status, fork.forked_from, fork.forked_at_seq, fork.trace_id) == (
        "pending", "wf-1", 3, "t2")
    assert fork.parent_id is None and fork.run_id is None
    assert await journal.get_workflow("fork-1") == fork
    original = {s.seq: s for s in await journal.load_steps("wf-1")}
    copied = await journal.load_steps("fork-1")
    assert [s.seq for s in copied] == [1, 2]
    for record in copied:
        kept = original[record.seq]
        assert record.workflow_id == "fork-1" and record.run_id is None
        assert (record.name, record.kind, record.status, record.attempt, record.output,
                record.history, record.started_at, record.finished_at) == (
            kept.name, kept.kind, kept.status, kept.attempt, kept.output,
            kept.history, kept.started_at, kept.finished_at)
    assert await journal.get_workflow_event("fork-1", "ready") == (True, "yes")
    assert [r.id for r in await journal.forks("wf-1")] == ["fork-1"]
    assert await journal.forks("fork-1") == []
    assert (await journal.get_workflow("wf-1")).status == "failed"  # type: ignore[union-attr]


async def test_a_fork_skips_failed_steps_and_may_start_after_the_last(journal: Journal) -> None:
    await _failed_at_three(journal)
    fork, _ = await journal.fork_workflow("wf-1", 4, "fork-1")
    assert [s.seq for s in await journal.load_steps("fork-1")] == [1, 2]  # 3 failed: not kept
    first, _ = await journal.fork_workflow("wf-1", 1, "fork-2")
    assert await journal.load_steps("fork-2") == []
    assert await journal.get_workflow_event("fork-2", "ready") == (False, None)
    assert [r.id for r in await journal.forks("wf-1")] == ["fork-1", "fork-2"]
    assert first.forked_at_seq == 1 and fork.forked_at_seq == 4


@pytest.mark.parametrize("from_seq", [0, -1, 5, 99])
async def test_a_fork_outside_one_to_last_plus_one_is_refused(
    journal: Journal, from_seq: int
) -> None:
    await _failed_at_three(journal)
    with pytest.raises(InvalidForkError, match="choose a seq from 1 to 4") as caught:
        await journal.fork_workflow("wf-1", from_seq, "fork-1")
    assert (caught.value.from_seq, caught.value.last_seq) == (from_seq, 3)
    assert await journal.get_workflow("fork-1") is None


async def test_only_a_finished_or_parked_workflow_can_be_forked(journal: Journal) -> None:
    with pytest.raises(WorkflowNotFoundError):
        await journal.fork_workflow("ghost", 1, "fork-1")
    await journal.create_workflow(new_wf("wf-1"))
    with pytest.raises(InvalidTransitionError, match="cannot fork workflow 'wf-1'.*'pending'"):
        await journal.fork_workflow("wf-1", 1, "fork-1")
    for status in ("running", "waiting"):
        await journal.append(batch(statuses=(StatusChange(workflow_id="wf-1", status=status),)))
        with pytest.raises(InvalidTransitionError):
            await journal.fork_workflow("wf-1", 1, "fork-1")
    await journal.append(batch(statuses=(StatusChange(workflow_id="wf-1", status="parked"),)))
    fork, created = await journal.fork_workflow("wf-1", 1, "fork-1")
    assert created and fork.forked_from == "wf-1"
    assert await journal.get_workflow("ghost") is None


async def test_a_fork_with_a_used_idempotency_key_returns_the_first(journal: Journal) -> None:
    await _failed_at_three(journal)
    first, created = await journal.fork_workflow("wf-1", 3, "fork-1", idempotency_key="k",
                                                 request_hash="h")
    assert created and (first.idempotency_key, first.request_hash) == ("k", "h")
    again, created = await journal.fork_workflow("wf-1", 2, "fork-2", idempotency_key="k")
    assert not created and again == first
    assert await journal.get_workflow("fork-2") is None
    assert await journal.load_steps("fork-2") == []


async def test_concurrent_forks_with_one_key_fork_once(journal: Journal) -> None:
    await _failed_at_three(journal)
    results: list[tuple[str, bool]] = []

    async def fork(i: int) -> None:
        row, created = await journal.fork_workflow("wf-1", 3, f"fork-{i}", idempotency_key="k")
        results.append((row.id, created))

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(fork, i)
    assert sum(created for _, created in results) == 1
    assert len({wf_id for wf_id, _ in results}) == 1
    assert len(await journal.forks("wf-1")) == 1


async def test_workflow_signals_lists_every_signal_of_one_workflow(journal: Journal) -> None:
    await journal.create_workflow(new_wf("wf-1"))
    await journal.create_workflow(new_wf("wf-2"))
    first = await journal.send_signal("wf-1", "go", {"n": 1})
    await journal.send_signal("wf-2", "go", None)
    second = await journal.send_signal("wf-1", "stop", TRICKY)
    await journal.append(batch(consumed_signals=(first.id,)))
    signals = await journal.workflow_signals("wf-1")
    assert [(s.id, s.name, s.payload, s.consumed) for s in signals] == [
        (first.id, "go", {"n": 1}, True), (second.id, "stop", TRICKY, False)]
    assert await journal.workflow_signals("ghost") == []
