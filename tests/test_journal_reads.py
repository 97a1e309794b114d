"""The journal contract's reads and operator actions (`Workflows`, `Projections`,
`DeadLetters`), against both journals."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import pytest

from journal import (
    IntegrityError,
    InvalidTransitionError,
    Journal,
    StatusChange,
    WorkflowEventRecord,
    WorkflowNotFoundError,
)

from .journal_support import T0, TRICKY, batch, doc, event, is_utc, new_wf, step

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
