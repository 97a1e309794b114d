"""The journal is the fence: run claims, step and status guards, idempotent
re-append. Against MemoryJournal and PostgresJournal alike (the `journal` fixture).

Each refused append must write nothing of its batch; each guard has a test that
fails if the guard is removed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from journal import (
    Batch,
    Document,
    DomainEvent,
    Journal,
    NewWorkflow,
    RunFence,
    StaleRunError,
    StatusChange,
    StepRecord,
    WorkflowEventRecord,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def record(
    seq: int, status: str, attempt: int = 1, kind: str = "step", **fields: Any
) -> StepRecord:
    return StepRecord(workflow_id="wf", seq=seq, name=f"s{seq}", kind=kind, status=status,
                      attempt=attempt, started_at=T0, **fields)


def by(run_id: str, previous: str | None = None, **parts: Any) -> Batch:
    """A batch written by run `run_id` (which loaded the workflow from `previous`)."""
    return Batch(partition=0, epoch=0,
                 run=RunFence(workflow_id="wf", run_id=run_id, previous=previous), **parts)


async def new_workflow(journal: Journal) -> None:
    await journal.create_workflow(
        NewWorkflow(id="wf", name="invite", actor_key="customer-1", partition=0)
    )


async def steps(journal: Journal) -> list[tuple[int, str, int, str | None]]:
    return [(s.seq, s.status, s.attempt, s.run_id) for s in await journal.load_steps("wf")]


async def refused(journal: Journal, batch: Batch) -> StaleRunError:
    with pytest.raises(StaleRunError) as caught:
        await journal.append(batch)
    assert caught.value.workflow_id == "wf"
    assert "wf" in str(caught.value)
    return caught.value


# -- the run fence ----------------------------------------------------------------------


async def test_the_first_run_claims_a_new_workflow(journal: Journal) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", steps=(record(1, "started"),)))
    row = await journal.get_workflow("wf")
    assert row is not None and row.run_id == "run-a"
    assert await steps(journal) == [(1, "started", 1, "run-a")]


async def test_a_second_run_from_the_same_view_is_refused_and_writes_nothing(
    journal: Journal,
) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", steps=(record(1, "started"),)))
    stale = by(
        "run-b",
        steps=(record(2, "completed"),),
        statuses=(StatusChange(workflow_id="wf", status="running"),),
        events=(DomainEvent(actor_key="customer-1", seq=1, type="CustomerInvited"),),
        documents=(Document(kind="customer", id="c1", data={}),),
    )
    await refused(journal, stale)
    assert await steps(journal) == [(1, "started", 1, "run-a")]
    assert await journal.read_events("customer-1") == []
    assert await journal.get_document("customer", "c1") is None
    row = await journal.get_workflow("wf")
    assert row is not None and (row.status, row.run_id) == ("pending", "run-a")


async def test_a_run_that_loaded_after_the_holder_takes_over_and_fences_it(
    journal: Journal,
) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", steps=(record(1, "started"),)))
    # run-b read the workflow held by run-a (a crash, a moved partition): it takes over.
    await journal.append(by("run-b", previous="run-a", steps=(record(1, "started", 2),)))
    await refused(journal, by("run-a", steps=(record(1, "completed"),)))
    assert await steps(journal) == [(1, "started", 2, "run-b")]


async def test_a_finished_workflow_cannot_be_claimed(journal: Journal) -> None:
    await new_workflow(journal)
    done = StatusChange(workflow_id="wf", status="completed", result=1)
    await journal.append(by("run-a", statuses=(done,)))
    await refused(journal, by("run-b", previous="run-a", steps=(record(1, "started"),)))
    row = await journal.get_workflow("wf")
    assert row is not None and (row.status, row.result, row.run_id) == ("completed", 1, "run-a")


# -- step guards --------------------------------------------------------------------------


async def test_a_completed_step_is_never_rewritten(journal: Journal) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", steps=(record(1, "completed", output="first"),)))
    for status in ("started", "completed", "failed"):
        for attempt in (1, 2):
            if (status, attempt) != ("completed", 1):  # that one is the same write again
                await refused(journal, by("run-a", steps=(record(1, status, attempt),)))
    await journal.append(by("run-b", previous="run-a"))
    await refused(journal, by("run-b", steps=(record(1, "completed", output="second"),)))
    assert [s.output for s in await journal.load_steps("wf")] == ["first"]


async def test_a_started_step_is_not_started_again_at_the_same_attempt(journal: Journal) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", steps=(record(1, "started"),)))
    await journal.append(by("run-b", previous="run-a"))
    await refused(journal, by("run-b", steps=(record(1, "started"),)))
    await refused(journal, by("run-a", steps=(record(1, "started"),)))  # fenced: run-b holds it
    # A higher attempt moves it on; a lower one never replaces a higher one.
    await journal.append(by("run-b", steps=(record(1, "started", 3),)))
    await journal.append(by("run-b", steps=(record(1, "started", 3),)))  # the same write again
    await refused(journal, by("run-b", steps=(record(1, "started", 2),)))
    await refused(journal, by("run-b", steps=(record(1, "completed", 2),)))
    assert await steps(journal) == [(1, "started", 3, "run-b")]


async def test_a_step_is_completed_only_by_the_run_that_started_it(journal: Journal) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", steps=(record(1, "started"),)))
    await journal.append(by("run-b", previous="run-a", steps=(record(2, "started"),)))
    # run-b holds the workflow now, but step 1's attempt 1 was run-a's: run-b must
    # run it again as attempt 2, never complete run-a's attempt.
    await refused(journal, by("run-b", steps=(record(1, "completed"),)))
    await journal.append(by("run-b", steps=(record(1, "started", 2),)))
    await journal.append(by("run-b", steps=(record(1, "completed", 2),)))
    assert (await steps(journal))[0] == (1, "completed", 2, "run-b")


async def test_a_wait_is_completed_by_whichever_run_holds_the_workflow(journal: Journal) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", steps=(record(1, "started", kind="wait"),)))
    # The signal comes; a later run resumes the workflow and ends the wait.
    await journal.append(by("run-b", previous="run-a",
                            steps=(record(1, "completed", kind="wait", output={"x": 1}),)))
    assert await steps(journal) == [(1, "completed", 1, "run-b")]


async def test_a_retried_step_moves_to_a_higher_attempt(journal: Journal) -> None:
    await new_workflow(journal)
    failed = StatusChange(workflow_id="wf", status="failed", error="boom")
    await journal.append(by("run-a", steps=(record(1, "failed", error="boom"),),
                            statuses=(failed,)))
    await journal.retry_workflow("wf")
    assert await steps(journal) == [(1, "retrying", 1, "run-a")]
    await refused(journal, by("run-b", previous="run-a", steps=(record(1, "started", 1),)))
    await journal.append(by("run-b", previous="run-a", steps=(record(1, "started", 2),)))
    assert await steps(journal) == [(1, "started", 2, "run-b")]


# -- status guards ------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["completed", "failed", "cancelled"])
async def test_a_finished_workflow_never_changes(journal: Journal, end: str) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", statuses=(StatusChange(workflow_id="wf", status=end),)))
    for other in ("running", "waiting", "completed", "failed", "cancelled"):
        if other != end:
            change = StatusChange(workflow_id="wf", status=other)
            await refused(journal, by("run-a", statuses=(change,)))
            await refused(journal, Batch(partition=0, epoch=0, statuses=(change,)))
    row = await journal.get_workflow("wf")
    assert row is not None and row.status == end


async def test_an_append_never_moves_a_workflow_back_to_pending(journal: Journal) -> None:
    await new_workflow(journal)
    running = StatusChange(workflow_id="wf", status="running")
    await journal.append(by("run-a", statuses=(running,)))
    back = StatusChange(workflow_id="wf", status="pending")
    await refused(journal, by("run-a", statuses=(back,)))
    row = await journal.get_workflow("wf")
    assert row is not None and row.status == "running"


# -- idempotent re-append ---------------------------------------------------------------


async def test_the_same_batch_appended_again_is_a_no_op(journal: Journal) -> None:
    """An answer lost in an outage: the run sends its batch again and moves on."""
    await new_workflow(journal)
    batch = by(
        "run-a",
        steps=(record(1, "completed", output=1), record(2, "started")),
        statuses=(StatusChange(workflow_id="wf", status="completed", result="r"),),
        events=(DomainEvent(actor_key="customer-1", seq=1, type="CustomerInvited",
                            payload={"a": 1}, workflow_id="wf"),),
        documents=(Document(kind="customer", id="c1", data={"v": 1}, unique_key="x"),),
        workflow_events=(WorkflowEventRecord(workflow_id="wf", key="invite", value=2),),
        workflows=(NewWorkflow(id="wf:3", name="child", actor_key="customer-1", partition=0,
                               parent_id="wf"),),
    )
    await journal.append(batch)
    before = (await steps(journal), await journal.read_events("customer-1"))
    await journal.append(batch)
    assert (await steps(journal), await journal.read_events("customer-1")) == before
    row = await journal.get_workflow("wf")
    assert row is not None and (row.status, row.result) == ("completed", "r")
    assert len(await journal.children("wf")) == 1
    assert await journal.get_workflow_event("wf", "invite") == (True, 2)
