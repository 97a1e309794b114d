"""The journal contract's write path (`Writer`), against MemoryJournal and PostgresJournal
alike: creating workflows, atomic batches, collisions, concurrent appends."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from journal import (
    Batch,
    IntegrityError,
    Journal,
    StatusChange,
    WorkflowEventRecord,
    WorkflowNotFoundError,
)

from .journal_support import T0, TRICKY, batch, doc, event, is_utc, new_wf, statuses, step

# -- create_workflow -----------------------------------------------------------------


async def test_create_workflow_accepts_a_pending_workflow(journal: Journal) -> None:
    row, created = await journal.create_workflow(
        new_wf("wf-1", input=TRICKY, idempotency_key="k1", request_hash="h", trace_id="t")
    )
    assert created
    assert (row.id, row.name, row.actor_key, row.partition) == ("wf-1", "invite", "customer-1", 0)
    assert (row.status, row.input, row.result, row.error) == ("pending", TRICKY, None, None)
    assert (row.idempotency_key, row.request_hash, row.trace_id) == ("k1", "h", "t")
    assert not row.cancel_requested
    assert is_utc(row.created_at) and is_utc(row.updated_at)
    assert await journal.get_workflow("wf-1") == row
    assert await journal.get_workflow("nope") is None
    again, created = await journal.create_workflow(new_wf("wf-2", idempotency_key="k1"))
    assert not created and again == row


async def test_create_workflow_with_a_known_id_returns_the_existing_row(journal: Journal) -> None:
    first, _ = await journal.create_workflow(new_wf("wf-1", input=1))
    again, created = await journal.create_workflow(new_wf("wf-1", input=2, name="other"))
    assert not created
    assert again == first


async def test_create_workflow_with_a_known_key_returns_the_existing_row(journal: Journal) -> None:
    first, _ = await journal.create_workflow(new_wf("wf-1", idempotency_key="key"))
    again, created = await journal.create_workflow(new_wf("wf-2", idempotency_key="key"))
    assert not created
    assert again == first
    assert await journal.get_workflow("wf-2") is None


async def test_concurrent_creates_with_one_key_create_exactly_one(journal: Journal) -> None:
    results: list[tuple[str, bool]] = []

    async def create(i: int) -> None:
        row, created = await journal.create_workflow(new_wf(f"wf-{i}", idempotency_key="same"))
        results.append((row.id, created))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(create, i)
    assert sum(created for _, created in results) == 1
    winner = next(wf_id for wf_id, created in results if created)
    assert {wf_id for wf_id, _ in results} == {winner}
    assert sum((await journal.count_workflows_by_status()).values()) == 1


# -- append -------------------------------------------------------------------------


async def test_append_writes_every_part_of_a_batch(journal: Journal) -> None:
    await journal.create_workflow(new_wf("wf-1"))
    signal = await journal.send_signal("wf-1", "go", {"token": "t"})
    await journal.append(
        batch(
            workflows=(new_wf("child", parent_id="wf-1", input=TRICKY),),
            steps=(step("wf-1", 1, "completed", output=TRICKY, finished_at=T0),),
            statuses=(StatusChange(workflow_id="wf-1", status="running"),),
            events=(event("customer-1", 1, payload=TRICKY, workflow_id="wf-1"),),
            documents=(doc("c1", data=TRICKY, unique_key="a@example.com", owner="o"),),
            workflow_events=(WorkflowEventRecord(workflow_id="wf-1", key="k", value=TRICKY),),
            consumed_signals=(signal.id,),
        )
    )
    child = await journal.get_workflow("child")
    assert child is not None and (child.status, child.parent_id, child.input) == (
        "pending",
        "wf-1",
        TRICKY,
    )
    assert await journal.load_steps("wf-1") == [
        step("wf-1", 1, "completed", output=TRICKY, finished_at=T0)
    ]
    assert await statuses(journal, "wf-1") == ["running"]
    [stored_event] = await journal.read_events("customer-1")
    assert (stored_event.seq, stored_event.payload, stored_event.workflow_id) == (1, TRICKY, "wf-1")
    assert is_utc(stored_event.created_at)
    stored_doc = await journal.get_document("customer", "c1")
    assert stored_doc is not None and (stored_doc.data, stored_doc.owner) == (TRICKY, "o")
    assert is_utc(stored_doc.updated_at)
    assert await journal.get_workflow_event("wf-1", "k") == (True, TRICKY)
    assert await journal.next_signal("wf-1", "go") is None


async def test_append_of_a_known_workflow_changes_nothing(journal: Journal) -> None:
    first, _ = await journal.create_workflow(new_wf("wf-1", input=1))
    await journal.append(batch(workflows=(new_wf("wf-1", input=2),)))
    assert await journal.get_workflow("wf-1") == first


async def test_a_status_change_sets_result_and_error(journal: Journal) -> None:
    await journal.create_workflow(new_wf("wf-1"))
    change = StatusChange(workflow_id="wf-1", status="failed", result=TRICKY, error="boom")
    await journal.append(batch(statuses=(change,)))
    row = await journal.get_workflow("wf-1")
    assert row is not None and (row.status, row.result, row.error) == ("failed", TRICKY, "boom")
    assert row.updated_at >= row.created_at


async def test_a_step_is_upserted_by_workflow_and_seq(journal: Journal) -> None:
    await journal.create_workflow(new_wf("wf-1"))
    await journal.append(batch(steps=(step("wf-1", 2, input=[1]), step("wf-1", 1, input=[0]))))
    done = step("wf-1", 2, "completed", input=[1], output={"ok": 1}, finished_at=T0, attempt=2)
    await journal.append(batch(steps=(done,)))
    assert await journal.load_steps("wf-1") == [step("wf-1", 1, input=[0]), done]
    assert await journal.load_steps("unknown") == []


def colliding_document() -> Batch:
    return batch(documents=(doc("c2", unique_key="taken@example.com"),))


def colliding_event() -> Batch:
    # Another event at a taken seq (the very same event again is a re-append: a no-op).
    return batch(events=(event("customer-1", 1, type="Other"),))


def colliding_idempotency_key() -> Batch:
    return batch(workflows=(new_wf("wf-other", idempotency_key="taken-key"),))


def event_twice_in_one_batch() -> Batch:
    return batch(events=(event("customer-9", 1), event("customer-9", 1, type="Other")))


@pytest.mark.parametrize(
    ("collision", "constraint"),
    [
        (colliding_document, "documents_unique_key"),
        (colliding_event, "events_pkey"),
        (event_twice_in_one_batch, "events_pkey"),
        (colliding_idempotency_key, "workflows_idempotency_key"),
    ],
)
async def test_a_batch_that_collides_writes_nothing(
    journal: Journal, collision: Any, constraint: str
) -> None:
    await journal.create_workflow(new_wf("wf-1", idempotency_key="taken-key"))
    await journal.append(
        batch(
            documents=(doc("c1", unique_key="taken@example.com"),),
            events=(event("customer-1", 1),),
        )
    )
    colliding: Batch = collision()
    doomed = Batch(
        partition=0,
        epoch=0,
        workflows=(new_wf("wf-new"), *colliding.workflows),
        steps=(step("wf-1", 1, "completed"),),
        statuses=(StatusChange(workflow_id="wf-1", status="completed"),),
        events=(event("customer-2", 1), *colliding.events),
        documents=(doc("c3"), *colliding.documents),
        workflow_events=(WorkflowEventRecord(workflow_id="wf-1", key="k", value=1),),
    )
    with pytest.raises(IntegrityError) as caught:
        await journal.append(doomed)
    assert caught.value.constraint == constraint
    await assert_nothing_of_the_doomed_batch(journal)


async def assert_nothing_of_the_doomed_batch(journal: Journal) -> None:
    assert await statuses(journal, "wf-1", "wf-new", "wf-other") == ["pending", None, None]
    assert await journal.load_steps("wf-1") == []
    assert await journal.read_events("customer-2") == []
    assert await journal.get_document("customer", "c3") is None
    assert await journal.get_document("customer", "c2") is None
    assert await journal.get_workflow_event("wf-1", "k") == (False, None)


async def test_a_status_for_an_unknown_workflow_fails_the_whole_batch(journal: Journal) -> None:
    await journal.create_workflow(new_wf("wf-1"))
    doomed = batch(
        steps=(step("wf-1", 1),),
        statuses=(StatusChange(workflow_id="ghost", status="completed"),),
        events=(event("customer-2", 1),),
    )
    with pytest.raises(WorkflowNotFoundError):
        await journal.append(doomed)
    assert await journal.load_steps("wf-1") == []
    assert await journal.read_events("customer-2") == []


async def test_a_status_may_follow_the_creation_in_the_same_batch(journal: Journal) -> None:
    change = StatusChange(workflow_id="wf-1", status="running")
    await journal.append(batch(workflows=(new_wf("wf-1"),), statuses=(change,)))
    assert await statuses(journal, "wf-1") == ["running"]


# -- concurrency ------------------------------------------------------------------------------


async def test_concurrent_appends_all_land(journal: Journal) -> None:
    tasks, appends = 50, 20

    async def writer(t: int) -> None:
        actor = f"actor-{t:02}"
        await journal.create_workflow(new_wf(f"wf-{t}", actor_key=actor, partition=t % 4))
        for seq in range(1, appends + 1):
            await journal.append(
                Batch(
                    partition=t % 4,
                    epoch=0,
                    steps=(step(f"wf-{t}", seq, "completed"),),
                    events=(event(actor, seq, workflow_id=f"wf-{t}"),),
                )
            )

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for t in range(tasks):
                tg.start_soon(writer, t)

    everything = await journal.read_all_events()
    assert len(everything) == tasks * appends
    assert len({(e.actor_key, e.seq) for e in everything}) == tasks * appends
    for t in (0, tasks - 1):
        assert [e.seq for e in await journal.read_events(f"actor-{t:02}")] == list(
            range(1, appends + 1)
        )
        assert len(await journal.load_steps(f"wf-{t}")) == appends
