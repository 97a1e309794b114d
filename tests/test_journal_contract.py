"""The journal contract (`journal/base.py`), against MemoryJournal and PostgresJournal alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from journal import (
    PARTITION_COUNT,
    Batch,
    Document,
    DomainEvent,
    FencedError,
    IntegrityError,
    InvalidTransitionError,
    Journal,
    NewWorkflow,
    StatusChange,
    StepRecord,
    WorkflowEventRecord,
    WorkflowNotFoundError,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

# A payload that exercises the JSON codec: unicode, nesting, floats, nulls.
TRICKY: Any = {"name": "Zoë ✓", "n": [1, 2.5, -3], "ok": True, "none": None, "deep": {"a": [{}]}}


def new_wf(wf_id: str, **fields: Any) -> NewWorkflow:
    fields.setdefault("name", "invite")
    fields.setdefault("actor_key", "customer-1")
    fields.setdefault("partition", 0)
    return NewWorkflow(id=wf_id, **fields)


def step(wf_id: str, seq: int, status: str = "started", **fields: Any) -> StepRecord:
    fields.setdefault("name", f"step-{seq}")
    fields.setdefault("started_at", T0)
    return StepRecord(workflow_id=wf_id, seq=seq, status=status, **fields)


def event(actor_key: str, seq: int, **fields: Any) -> DomainEvent:
    fields.setdefault("type", "Happened")
    return DomainEvent(actor_key=actor_key, seq=seq, **fields)


def doc(doc_id: str, **fields: Any) -> Document:
    fields.setdefault("kind", "customer")
    fields.setdefault("data", {"id": doc_id})
    return Document(id=doc_id, **fields)


def batch(**parts: Any) -> Batch:
    """A batch on partition 0 at epoch 0, where every fresh journal starts."""
    parts.setdefault("partition", 0)
    parts.setdefault("epoch", 0)
    return Batch(**parts)


async def statuses(journal: Journal, *ids: str) -> list[str | None]:
    rows = [await journal.get_workflow(wf_id) for wf_id in ids]
    return [None if row is None else row.status for row in rows]


def is_utc(moment: datetime | None) -> bool:
    return moment is not None and moment.utcoffset() == timedelta(0)


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


# -- fencing --------------------------------------------------------------------------


async def test_claiming_a_partition_fences_appends_with_the_old_epoch(journal: Journal) -> None:
    # Neither node heartbeats, so neither is live: each takes the other's leases.
    assert await journal.acquire_leases("node-a", [0, 1], TTL, stale_after=TTL) == {0: 1, 1: 1}
    assert await journal.acquire_leases("node-b", [1, 0], TTL, stale_after=TTL) == {0: 2, 1: 2}
    stale = Batch(partition=0, epoch=1, events=(event("customer-1", 1),), steps=(step("w", 1),))
    with pytest.raises(FencedError) as caught:
        await journal.append(stale)
    assert (caught.value.partition, caught.value.epoch) == (0, 1)
    assert await journal.read_events("customer-1") == []
    assert await journal.load_steps("w") == []
    await journal.append(Batch(partition=0, epoch=2, events=(event("customer-1", 1),)))
    await journal.append(Batch(partition=2, epoch=0, events=(event("customer-3", 1),)))
    assert await journal.last_event_seq("customer-1") == 1


async def test_every_partition_exists_at_epoch_zero(journal: Journal) -> None:
    claimed = await journal.acquire_leases("node", range(PARTITION_COUNT), TTL, stale_after=TTL)
    assert claimed == {p: 1 for p in range(PARTITION_COUNT)}


# -- scale-out: nodes, leases, wake-ups -------------------------------------------------

TTL = 30.0  # long enough never to run out within a test, unless the test means it to


async def test_a_heartbeat_makes_a_node_live_until_it_leaves(journal: Journal) -> None:
    view = await journal.heartbeat("node-a", TTL, stale_after=TTL)
    assert view.live_nodes == ("node-a",)
    assert [lease.partition for lease in view.leases] == list(range(PARTITION_COUNT))
    assert all(lease.owner == "" and lease.epoch == 0 and lease.expired for lease in view.leases)
    await journal.heartbeat("node-b", TTL, stale_after=TTL)
    assert (await journal.heartbeat("node-a", TTL, stale_after=TTL)).live_nodes == (
        "node-a", "node-b")
    await journal.leave("node-b")
    assert (await journal.heartbeat("node-a", TTL, stale_after=TTL)).live_nodes == ("node-a",)


async def test_a_lease_is_renewed_while_held_and_fences_once_taken_over(journal: Journal) -> None:
    await journal.heartbeat("node-a", TTL, stale_after=TTL)
    await journal.heartbeat("node-b", TTL, stale_after=TTL)
    assert await journal.acquire_leases("node-a", [0, 1], TTL, stale_after=TTL) == {0: 1, 1: 1}
    # A live node's current lease is not taken; a free partition is.
    assert await journal.acquire_leases("node-b", [0, 1, 2], TTL, stale_after=TTL) == {2: 1}
    assert await journal.renew_leases("node-a", {0: 1, 1: 1, 2: 1}, TTL) == {0: 1, 1: 1}
    await journal.append(Batch(partition=0, epoch=1, events=(event("customer-1", 1),)))

    await journal.release_leases("node-a", {0: 1})
    assert await journal.acquire_leases("node-b", [0], TTL, stale_after=TTL) == {0: 2}
    with pytest.raises(FencedError):
        await journal.append(Batch(partition=0, epoch=1, events=(event("customer-1", 2),)))
    assert await journal.renew_leases("node-a", {0: 1, 1: 1}, TTL) == {1: 1}  # 0 was lost
    view = await journal.heartbeat("node-a", TTL, stale_after=TTL)
    assert [(lease.owner, lease.epoch, lease.expired) for lease in view.leases[:4]] == [
        ("node-b", 2, False), ("node-a", 1, False), ("node-b", 1, False), ("", 0, True)]


async def test_a_lease_that_ran_out_is_taken_over_with_the_next_epoch(journal: Journal) -> None:
    await journal.heartbeat("node-a", TTL, stale_after=TTL)
    await journal.heartbeat("node-b", TTL, stale_after=TTL)
    assert await journal.acquire_leases("node-a", [5], 0.2, stale_after=TTL) == {5: 1}
    assert await journal.acquire_leases("node-b", [5], TTL, stale_after=TTL) == {}
    await anyio.sleep(0.3)
    assert await journal.acquire_leases("node-b", [5], TTL, stale_after=TTL) == {5: 2}
    assert await journal.renew_leases("node-a", {5: 1}, TTL) == {}
    assert await journal.acquire_leases("node-b", [5], TTL, stale_after=TTL) == {5: 3}  # again


async def test_the_leases_of_a_dead_node_are_taken_before_they_run_out(journal: Journal) -> None:
    await journal.heartbeat("node-a", 0.2, stale_after=TTL)  # its heartbeat lease runs out
    await journal.heartbeat("node-b", TTL, stale_after=TTL)
    assert await journal.acquire_leases("node-a", [7], TTL, stale_after=TTL) == {7: 1}
    await anyio.sleep(0.3)
    assert (await journal.heartbeat("node-b", TTL, stale_after=TTL)).live_nodes == ("node-b",)
    assert await journal.acquire_leases("node-b", [7], TTL, stale_after=TTL) == {7: 2}


async def test_an_attached_node_is_live_and_a_detached_one_dies_once_stale(
    journal: Journal,
) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(journal.serve_node, "node-a", lambda _: None)
        await journal.heartbeat("node-a", TTL, stale_after=0.1)
        await journal.heartbeat("node-b", TTL, stale_after=0.1)  # never attached
        await anyio.sleep(0.2)
        view = await journal.heartbeat("node-c", TTL, stale_after=0.1)
        assert view.live_nodes == ("node-a", "node-c")
        tg.cancel_scope.cancel()
    # Detached (a killed process), with a stale heartbeat: dead at once, not after TTL.
    assert (await journal.heartbeat("node-c", TTL, stale_after=0.1)).live_nodes == ("node-c",)


async def test_a_wake_reaches_every_attached_node(journal: Journal) -> None:
    got: dict[str, list[str]] = {"a": [], "b": []}
    async with anyio.create_task_group() as tg:
        await tg.start(journal.serve_node, "node-a", got["a"].append)
        await tg.start(journal.serve_node, "node-b", got["b"].append)
        await journal.wake(["key-1 wf-1", ""])
        with anyio.fail_after(5):
            while len(got["a"]) < 2 or len(got["b"]) < 2:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert got == {"a": ["key-1 wf-1", ""], "b": ["key-1 wf-1", ""]}


async def test_runnable_workflows_are_what_a_lost_wake_up_would_hide(journal: Journal) -> None:
    for wf_id, partition in [("pending", 1), ("running", 1), ("cancelling", 1),
                             ("signalled", 1), ("done", 1), ("elsewhere", 2)]:
        await journal.create_workflow(new_wf(wf_id, partition=partition))
    for wf_id, status in [("running", "running"), ("cancelling", "running"),
                          ("signalled", "waiting"), ("done", "completed")]:
        change = StatusChange(workflow_id=wf_id, status=status)
        await journal.append(Batch(partition=1, epoch=0, statuses=(change,)))
    await journal.request_cancel("cancelling")
    await journal.send_signal("signalled", "go", None)
    await journal.send_signal("done", "go", None)

    rows, newest = await journal.runnable_workflows([1], 0)
    assert [r.id for r in rows] == ["pending", "cancelling", "signalled"]
    rows, again = await journal.runnable_workflows([1], newest)
    assert ([r.id for r in rows], again) == (["pending", "cancelling"], newest)
    assert (await journal.runnable_workflows([3], 0))[0] == []


async def test_recovery_reads_can_be_limited_to_partitions(journal: Journal) -> None:
    for wf_id, partition in [("wf-1", 1), ("wf-2", 2), ("wf-3", 3)]:
        await journal.create_workflow(new_wf(wf_id, partition=partition))
        wait = step(wf_id, 1, kind="wait", fire_at=T0)
        await journal.append(Batch(partition=partition, epoch=0, steps=(wait,)))
    assert [r.id for r in await journal.unfinished_workflows([1, 3])] == ["wf-1", "wf-3"]
    assert [r.id for r in await journal.unfinished_workflows()] == ["wf-1", "wf-2", "wf-3"]
    assert [w.workflow_id for w in await journal.waiting_steps([2])] == ["wf-2"]
    assert len(await journal.waiting_steps()) == 3
    # A waiting workflow is left out when recovery asks for the others only.
    waiting = StatusChange(workflow_id="wf-3", status="waiting")
    await journal.append(Batch(partition=3, epoch=0, statuses=(waiting,)))
    assert [r.id for r in await journal.unfinished_workflows([1, 3], waiting=False)] == ["wf-1"]
    assert [r.id for r in await journal.unfinished_workflows([1, 3])] == ["wf-1", "wf-3"]


# -- workflow queries -----------------------------------------------------------------


async def create_many(journal: Journal, count: int, **fields: Any) -> list[str]:
    ids = []
    for i in range(count):
        row, _ = await journal.create_workflow(new_wf(f"{fields.get('name', 'wf')}-{i}", **fields))
        ids.append(row.id)
    return ids


async def test_list_workflows_pages_newest_first(journal: Journal) -> None:
    ids = await create_many(journal, 7)
    seen: list[str] = []
    cursor = None
    for expected_size in (3, 3, 1):
        page = await journal.list_workflows(limit=3, cursor=cursor)
        assert len(page.workflows) == expected_size
        seen += [row.id for row in page.workflows]
        cursor = page.next_cursor
    assert cursor is None
    assert seen == ids[::-1]
    exact = await journal.list_workflows(limit=7)
    assert len(exact.workflows) == 7 and exact.next_cursor is None


async def test_list_workflows_filters(journal: Journal) -> None:
    invites = await create_many(journal, 3, name="invite", actor_key="a")
    mails = await create_many(journal, 3, name="mail", actor_key="b")
    change = StatusChange(workflow_id=mails[1], status="completed")
    await journal.append(batch(statuses=(change,)))

    async def ids(**filters: Any) -> list[str]:
        return [row.id for row in (await journal.list_workflows(**filters)).workflows]

    assert await ids(name="invite") == invites[::-1]
    assert await ids(actor_key="b") == mails[::-1]
    assert await ids(status="completed") == [mails[1]]
    assert await ids(status="pending", actor_key="b") == [mails[2], mails[0]]
    assert await ids(status="pending", name="mail", actor_key="a") == []
    first = await journal.list_workflows(actor_key="b", limit=1)
    assert first.next_cursor is not None
    assert await ids(actor_key="b", cursor=first.next_cursor) == [mails[1], mails[0]]


async def test_count_workflows_by_status(journal: Journal) -> None:
    assert await journal.count_workflows_by_status() == {}
    ids = await create_many(journal, 4)
    changes = (
        StatusChange(workflow_id=ids[0], status="completed"),
        StatusChange(workflow_id=ids[1], status="failed", error="x"),
        StatusChange(workflow_id=ids[2], status="completed"),
    )
    await journal.append(batch(statuses=changes))
    assert await journal.count_workflows_by_status() == {"completed": 2, "failed": 1, "pending": 1}


async def test_children_and_unfinished_workflows_are_oldest_first(journal: Journal) -> None:
    await journal.create_workflow(new_wf("parent"))
    for child_id in ("c-b", "c-a", "c-c"):
        await journal.create_workflow(new_wf(child_id, parent_id="parent"))
    await journal.create_workflow(new_wf("other", parent_id="elsewhere"))
    done = StatusChange(workflow_id="c-a", status="completed")
    await journal.append(batch(statuses=(done,)))
    assert [row.id for row in await journal.children("parent")] == ["c-b", "c-a", "c-c"]
    assert await journal.children("c-a") == []
    unfinished = [row.id for row in await journal.unfinished_workflows()]
    assert unfinished == ["parent", "c-b", "c-c", "other"]


async def test_waiting_steps_are_started_waits_with_a_timer(journal: Journal) -> None:
    await journal.create_workflow(new_wf("wf-1", actor_key="alice"))
    await journal.create_workflow(new_wf("wf-2", actor_key="bob"))
    later, sooner = T0 + timedelta(hours=2), T0 + timedelta(hours=1)
    steps = (
        step("wf-1", 1, kind="wait", fire_at=later),
        step("wf-1", 2, kind="wait"),  # waits for a signal only
        step("wf-1", 3, "completed", kind="wait", fire_at=sooner),
        step("wf-2", 1, kind="wait", fire_at=sooner),
        step("wf-2", 2, kind="step", fire_at=sooner),
    )
    await journal.append(batch(steps=steps))
    waiting = [
        (w.workflow_id, w.seq, w.actor_key, w.fire_at) for w in await journal.waiting_steps()
    ]
    assert waiting == [("wf-2", 1, "bob", sooner), ("wf-1", 1, "alice", later)]


# -- operator actions -------------------------------------------------------------------


async def test_request_cancel_marks_unfinished_descendants(journal: Journal) -> None:
    for wf_id, parent in [
        ("root", None),
        ("child", "root"),
        ("grandchild", "child"),
        ("done-child", "root"),
        ("under-done", "done-child"),
        ("bystander", None),
    ]:
        await journal.create_workflow(new_wf(wf_id, parent_id=parent))
    await journal.append(
        batch(statuses=(StatusChange(workflow_id="done-child", status="completed"),))
    )

    marked = await journal.request_cancel("root")

    assert set(marked) == {"root", "child", "grandchild"}
    flags = {}
    for wf_id in ("root", "child", "grandchild", "done-child", "under-done", "bystander"):
        row = await journal.get_workflow(wf_id)
        assert row is not None
        flags[wf_id] = row.cancel_requested
    assert flags == {
        "root": True,
        "child": True,
        "grandchild": True,
        "done-child": False,
        "under-done": False,
        "bystander": False,
    }


async def test_request_cancel_refuses_finished_and_unknown_workflows(journal: Journal) -> None:
    await journal.create_workflow(new_wf("wf-1"))
    await journal.append(batch(statuses=(StatusChange(workflow_id="wf-1", status="failed"),)))
    with pytest.raises(InvalidTransitionError) as caught:
        await journal.request_cancel("wf-1")
    assert (caught.value.workflow_id, caught.value.status) == ("wf-1", "failed")
    with pytest.raises(WorkflowNotFoundError):
        await journal.request_cancel("ghost")


async def test_retry_workflow_reruns_failed_steps_only(journal: Journal) -> None:
    await journal.create_workflow(new_wf("wf-1"))
    ok = step("wf-1", 1, "completed", output=1, finished_at=T0)
    bad = step("wf-1", 2, "failed", error="boom", attempt=3, finished_at=T0)
    failed = StatusChange(workflow_id="wf-1", status="failed", error="boom")
    await journal.append(batch(steps=(ok, bad), statuses=(failed,)))

    await journal.retry_workflow("wf-1")

    row = await journal.get_workflow("wf-1")
    assert row is not None and (row.status, row.error) == ("pending", None)
    steps = await journal.load_steps("wf-1")
    assert [(s.seq, s.status) for s in steps] == [(1, "completed"), (2, "retrying")]
    assert (steps[1].error, steps[1].attempt) == ("boom", 3)
    with pytest.raises(InvalidTransitionError):
        await journal.retry_workflow("wf-1")
    with pytest.raises(WorkflowNotFoundError):
        await journal.retry_workflow("ghost")


# -- signals and workflow events ---------------------------------------------------------


async def test_signals_are_delivered_oldest_first_until_consumed(journal: Journal) -> None:
    await journal.create_workflow(new_wf("wf-1"))
    with pytest.raises(WorkflowNotFoundError):
        await journal.send_signal("ghost", "go", None)
    first = await journal.send_signal("wf-1", "go", TRICKY)
    await journal.send_signal("wf-1", "other", 0)
    second = await journal.send_signal("wf-1", "go", None)
    assert (first.workflow_id, first.name, first.payload, first.consumed) == (
        "wf-1",
        "go",
        TRICKY,
        False,
    )
    assert is_utc(first.created_at) and first.id < second.id

    assert await journal.next_signal("wf-1", "go") == first
    await journal.append(batch(consumed_signals=(first.id,)))
    assert await journal.next_signal("wf-1", "go") == second
    await journal.append(batch(consumed_signals=(second.id,)))
    assert await journal.next_signal("wf-1", "go") is None
    other = await journal.next_signal("wf-1", "other")
    assert other is not None and other.payload == 0
    assert await journal.next_signal("wf-2", "go") is None


async def test_workflow_events_are_published_by_key(journal: Journal) -> None:
    assert await journal.get_workflow_event("wf-1", "result") == (False, None)
    publish = WorkflowEventRecord(workflow_id="wf-1", key="result", value={"v": 1})
    await journal.append(batch(workflow_events=(publish,)))
    assert await journal.get_workflow_event("wf-1", "result") == (True, {"v": 1})
    # Published is history: the same key again (a batch sent again) keeps the first value.
    again = WorkflowEventRecord(workflow_id="wf-1", key="result", value={"v": 2})
    await journal.append(batch(workflow_events=(again,)))
    assert await journal.get_workflow_event("wf-1", "result") == (True, {"v": 1})
    publish_null = WorkflowEventRecord(workflow_id="wf-1", key="nothing", value=None)
    await journal.append(batch(workflow_events=(publish_null,)))
    assert await journal.get_workflow_event("wf-1", "nothing") == (True, None)
    assert await journal.get_workflow_event("wf-1", "other") == (False, None)


# -- domain events and documents -------------------------------------------------------


async def test_domain_events_are_read_in_order(journal: Journal) -> None:
    assert await journal.last_event_seq("b") == 0
    await journal.append(batch(events=(event("b", 2, type="Two"), event("b", 1, type="One"))))
    await journal.append(batch(events=(event("a", 1), event("B", 1), event("b", 3))))
    assert [e.seq for e in await journal.read_events("b")] == [1, 2, 3]
    assert [(e.seq, e.type) for e in await journal.read_events("b", after_seq=1)] == [
        (2, "Two"),
        (3, "Happened"),
    ]
    assert await journal.last_event_seq("b") == 3
    everything = [(e.actor_key, e.seq) for e in await journal.read_all_events()]
    assert everything == [("B", 1), ("a", 1), ("b", 1), ("b", 2), ("b", 3)]


async def test_documents_by_id_unique_key_and_owner(journal: Journal) -> None:
    await journal.append(
        batch(
            documents=(
                doc("c2", unique_key="two@example.com", owner="o1"),
                doc("c1", unique_key="one@example.com", owner="o1"),
                doc("c3", owner="o2"),
                doc("m1", kind="message", owner="o1"),
            )
        )
    )
    assert (await journal.get_document("customer", "c1")) == (
        await journal.find_document("customer", "one@example.com")
    )
    assert await journal.find_document("message", "one@example.com") is None
    assert await journal.get_document("message", "c1") is None
    assert [d.id for d in await journal.list_documents("customer")] == ["c1", "c2", "c3"]
    assert [d.id for d in await journal.list_documents("customer", owner="o1")] == ["c1", "c2"]
    assert [d.id for d in await journal.list_documents("message")] == ["m1"]

    moved = doc("c1", data={"v": 2}, unique_key="new@example.com", owner="o2")
    await journal.append(batch(documents=(moved,)))
    stored = await journal.get_document("customer", "c1")
    assert stored is not None and (stored.data, stored.owner) == ({"v": 2}, "o2")
    assert await journal.find_document("customer", "one@example.com") is None
    # The old key is free again.
    await journal.append(batch(documents=(doc("c9", unique_key="one@example.com"),)))


async def test_replace_documents_swaps_one_kind_atomically(journal: Journal) -> None:
    await journal.append(
        batch(documents=(doc("c1", unique_key="k1"), doc("c2"), doc("m1", kind="message")))
    )
    await journal.replace_documents("customer", [doc("c2", data=2), doc("c3", unique_key="k1")])
    assert [(d.id, d.data) for d in await journal.list_documents("customer")] == [
        ("c2", 2),
        ("c3", {"id": "c3"}),
    ]
    assert await journal.get_document("message", "m1") is not None

    clash = [doc("c4", unique_key="k"), doc("c5", unique_key="k")]
    with pytest.raises(IntegrityError):
        await journal.replace_documents("customer", clash)
    assert [d.id for d in await journal.list_documents("customer")] == ["c2", "c3"]
    await journal.replace_documents("customer", [])
    assert await journal.list_documents("customer") == []


# -- dead letters ---------------------------------------------------------------------------


async def test_dead_letters_are_listed_and_taken_once(journal: Journal) -> None:
    first = await journal.add_dead_letter("customer-1", TRICKY, "crashed 3 times")
    second = await journal.add_dead_letter("customer-2", {"n": 2}, "boom")
    assert (first.actor_key, first.message, first.error) == (
        "customer-1",
        TRICKY,
        "crashed 3 times",
    )
    assert is_utc(first.created_at) and first.redelivered_at is None
    assert await journal.list_dead_letters() == [first, second]

    taken = await journal.take_dead_letter(first.id)
    assert taken is not None and taken.id == first.id and is_utc(taken.redelivered_at)
    assert await journal.take_dead_letter(first.id) is None
    assert await journal.take_dead_letter(10_000) is None
    assert await journal.list_dead_letters() == [second]
    assert [d.id for d in await journal.list_dead_letters(include_redelivered=True)] == [
        first.id,
        second.id,
    ]


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


async def test_histories_of_many_workflows_load_at_once(journal: Journal) -> None:
    for workflow_id in ("wf-h1", "wf-h2", "wf-h3"):
        await journal.create_workflow(new_wf(workflow_id))
    await journal.append(batch(steps=(step("wf-h1", 2), step("wf-h1", 1), step("wf-h2", 1))))
    histories = await journal.load_histories(["wf-h1", "wf-h2", "wf-h3"])
    assert histories == {
        "wf-h1": await journal.load_steps("wf-h1"),
        "wf-h2": await journal.load_steps("wf-h2"),
        "wf-h3": [],
    }
    assert [s.seq for s in histories["wf-h1"]] == [1, 2]


async def test_workflows_are_listed_by_creation_time(journal: Journal) -> None:
    rows = []
    for wf_id in ("wf-1", "wf-2", "wf-3"):
        row, _ = await journal.create_workflow(new_wf(wf_id))
        rows.append(row)
        await anyio.sleep(0.002)  # distinct creation times
    since, before = rows[1].created_at, rows[2].created_at
    page = await journal.list_workflows(created_since=since)
    assert [r.id for r in page.workflows] == ["wf-3", "wf-2"]
    page = await journal.list_workflows(created_since=since, created_before=before)
    assert [r.id for r in page.workflows] == ["wf-2"]
    page = await journal.list_workflows(created_before=since, limit=1)
    assert [r.id for r in page.workflows] == ["wf-1"] and page.next_cursor is None
