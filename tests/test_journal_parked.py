"""The parked status and the app versions in the journal (migration 5), against
MemoryJournal and PostgresJournal alike (the `journal` fixture)."""

from __future__ import annotations

import pytest

from journal import (
    Batch,
    InvalidTransitionError,
    Journal,
    NewWorkflow,
    StatusChange,
    StepRecord,
)

from .test_journal_fences import T0, by, new_workflow, record, refused

MISMATCH = {"seq": 2, "expected": "step b", "found": "step a", "found_version": "v1",
            "running_version": "v2"}


def park() -> StatusChange:
    return StatusChange(workflow_id="wf", status="parked", error="mismatch", parked=MISMATCH)


async def test_a_workflow_and_its_steps_keep_the_version_that_wrote_them(
    journal: Journal,
) -> None:
    await journal.create_workflow(NewWorkflow(id="wf", name="invite", actor_key="customer-1",
                                              partition=0, app_version="v1"))
    child = NewWorkflow(id="wf:2", name="send", actor_key="customer-1", partition=0,
                        parent_id="wf", app_version="v2")
    await journal.append(by("run-a", workflows=(child,), steps=(
        record(1, "completed", app_version="v1"), record(2, "started", app_version="v2"),
    )))
    row, kid = await journal.get_workflow("wf"), await journal.get_workflow("wf:2")
    assert row is not None and kid is not None
    assert (row.app_version, kid.app_version) == ("v1", "v2")
    assert [(s.seq, s.app_version) for s in await journal.load_steps("wf")] == [
        (1, "v1"), (2, "v2")]
    histories = await journal.load_histories(["wf"])
    assert [s.app_version for s in histories["wf"]] == ["v1", "v2"]


async def test_a_record_without_a_version_decodes_as_unversioned(journal: Journal) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", steps=(record(1, "completed"),)))
    row = await journal.get_workflow("wf")
    assert row is not None and (row.app_version, row.parked) == ("", None)
    assert [s.app_version for s in await journal.load_steps("wf")] == [""]


async def test_a_running_workflow_parks_with_its_mismatch_and_resumes(journal: Journal) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", statuses=(park(),)))
    row = await journal.get_workflow("wf")
    assert row is not None and (row.status, row.error, row.parked) == (
        "parked", "mismatch", MISMATCH)
    assert await journal.count_parked() == {"invite": 1}
    assert [r.id for r in await journal.unfinished_workflows(waiting=False)] == ["wf"]
    # A later run (a fixed deploy) takes it from the parked run and moves it on.
    running = StatusChange(workflow_id="wf", status="running")
    await journal.append(by("run-b", "run-a", statuses=(running,)))
    row = await journal.get_workflow("wf")
    assert row is not None and (row.status, row.parked, row.run_id) == ("running", None, "run-b")
    assert await journal.count_parked() == {}
    await journal.append(by("run-b", statuses=(park(),)))
    done = StatusChange(workflow_id="wf", status="completed", result=1)
    await journal.append(by("run-c", "run-b", statuses=(done,)))
    row = await journal.get_workflow("wf")
    assert row is not None and (row.status, row.parked) == ("completed", None)


@pytest.mark.parametrize("end", ["completed", "failed", "cancelled"])
async def test_a_finished_workflow_is_never_parked(journal: Journal, end: str) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", statuses=(StatusChange(workflow_id="wf", status=end),)))
    await refused(journal, by("run-a", statuses=(park(),)))
    row = await journal.get_workflow("wf")
    assert row is not None and (row.status, row.parked) == (end, None)
    assert await journal.count_parked() == {}


async def test_an_append_never_moves_a_parked_workflow_to_pending_or_a_made_up_status(
    journal: Journal,
) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", statuses=(park(),)))
    for status in ("pending", "asleep"):
        await refused(journal, by("run-a", statuses=(
            StatusChange(workflow_id="wf", status=status),)))
    row = await journal.get_workflow("wf")
    assert row is not None and (row.status, row.parked) == ("parked", MISMATCH)


async def test_an_operator_retries_or_cancels_a_parked_workflow(journal: Journal) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", steps=(record(1, "completed"),), statuses=(park(),)))
    assert await journal.request_cancel("wf") == ["wf"]
    await journal.retry_workflow("wf")
    row = await journal.get_workflow("wf")
    assert row is not None and (row.status, row.error, row.parked) == ("pending", None, None)
    assert [s.status for s in await journal.load_steps("wf")] == ["completed"]
    with pytest.raises(InvalidTransitionError):
        await journal.retry_workflow("wf")  # pending: neither failed nor parked


async def test_a_signal_to_a_parked_workflow_is_stored_for_when_it_resumes(
    journal: Journal,
) -> None:
    await new_workflow(journal)
    await journal.append(by("run-a", statuses=(park(),)))
    sent = await journal.send_signal("wf", "verify", {"token": "t"})
    found = await journal.next_signal("wf", "verify")
    assert found is not None and (found.id, found.payload) == (sent.id, {"token": "t"})
    rows, _ = await journal.runnable_workflows([0], 0)
    assert [r.id for r in rows] == ["wf"]


async def test_parked_workflows_are_counted_by_name(journal: Journal) -> None:
    for n, name in enumerate(["invite", "invite", "send"]):
        wf_id = f"wf-{n}"
        await journal.create_workflow(NewWorkflow(id=wf_id, name=name, actor_key="c",
                                                  partition=0))
        await journal.append(Batch(partition=0, epoch=0, statuses=(
            StatusChange(workflow_id=wf_id, status="parked", parked=MISMATCH),)))
    assert await journal.count_parked() == {"invite": 2, "send": 1}
    page = await journal.list_workflows(status="parked")
    assert sorted(r.id for r in page.workflows) == ["wf-0", "wf-1", "wf-2"]
    assert (await journal.count_workflows_by_status())["parked"] == 3


def test_records_gain_their_versions_with_defaults() -> None:
    step = StepRecord(workflow_id="wf", seq=1, name="s", status="completed", started_at=T0)
    assert step.app_version == ""
    assert StatusChange(workflow_id="wf", status="running").parked is None
