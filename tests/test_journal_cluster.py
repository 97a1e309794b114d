"""The journal contract's `Cluster` protocol (nodes, partition leases, epochs, wake-ups)
and the reads recovery and catch-up make, against both journals."""

from __future__ import annotations

import anyio
import pytest

from journal import (
    PARTITION_COUNT,
    Batch,
    FencedError,
    Journal,
    StatusChange,
)

from .journal_support import T0, event, new_wf, step

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
