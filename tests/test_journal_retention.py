"""The `Retention` contract: pruning finished workflows and expiring idempotency
keys, against MemoryJournal and PostgresJournal alike.

Cut-offs are taken from rows' own timestamps (the journal's clock), so no test
sleeps; the MemoryJournal here ticks a millisecond per reading, so two writes
never share a moment, as two PostgreSQL transactions do not.
"""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timedelta

import anyio
import pytest

from journal import (
    InvalidForkError,
    InvalidTransitionError,
    Journal,
    MemoryJournal,
    StatusChange,
    WorkflowEventRecord,
    WorkflowRow,
)
from tests.journal_support import batch, doc, event, new_wf, step

_TICK = timedelta(microseconds=1)


@pytest.fixture(params=["memory", "postgres"])
def journal(request: pytest.FixtureRequest) -> Journal:
    if request.param == "memory":
        ticks, start = itertools.count(), time.time()
        return MemoryJournal(clock=lambda: start + next(ticks) / 1000)
    postgres: Journal = request.getfixturevalue("postgres_journal")
    return postgres


async def _row(journal: Journal, workflow_id: str) -> WorkflowRow:
    row = await journal.get_workflow(workflow_id)
    assert row is not None
    return row


async def _finish(journal: Journal, workflow_id: str, status: str = "completed", *,
                  key: str | None = None, partition: int = 0, seq: int = 1) -> WorkflowRow:
    """A workflow with everything retention removes (a step, a consumed and an
    unconsumed signal, a published event) and what it keeps (an event in the
    log, a document), then ended with `status`."""
    actor = f"customer-{workflow_id}"
    await journal.create_workflow(new_wf(workflow_id, actor_key=actor, partition=partition,
                                         idempotency_key=key))
    consumed = await journal.send_signal(workflow_id, "go", {"n": 1})
    await journal.send_signal(workflow_id, "late", None)
    await journal.append(batch(
        partition=partition, steps=(step(workflow_id, 1, "completed", output={"ok": True}),),
        events=(event(actor, seq, workflow_id=workflow_id),),
        documents=(doc(workflow_id),),
        workflow_events=(WorkflowEventRecord(workflow_id=workflow_id, key="result", value=7),),
        consumed_signals=(consumed.id,),
    ))
    return await _end(journal, workflow_id, status, partition=partition)


async def _end(journal: Journal, workflow_id: str, status: str, *, partition: int = 0
               ) -> WorkflowRow:
    await journal.append(batch(partition=partition, statuses=(
        StatusChange(workflow_id=workflow_id, status=status,
                     error="boom" if status == "failed" else None),)))
    return await _row(journal, workflow_id)


async def _kept_whole(journal: Journal, workflow_id: str) -> bool:
    row = await _row(journal, workflow_id)
    return (row.pruned_at is None and len(await journal.load_steps(workflow_id)) == 1
            and await journal.get_workflow_event(workflow_id, "result") == (True, 7)
            and await journal.next_signal(workflow_id, "late") is not None)


# -- pruning ---------------------------------------------------------------------------


async def test_a_pruned_workflow_loses_steps_signals_and_published_events_only(
    journal: Journal,
) -> None:
    done = await _finish(journal, "wf-1")

    assert await journal.prune_finished(done.updated_at + _TICK) == 1

    row = await _row(journal, "wf-1")
    assert row.pruned_at is not None and row.pruned_at >= done.updated_at
    # The row stays as it was: status, result, and its end (updated_at).
    assert (row.status, row.updated_at, row.input) == ("completed", done.updated_at, done.input)
    assert await journal.load_steps("wf-1") == []
    assert await journal.load_histories(["wf-1"]) == {"wf-1": []}
    assert await journal.next_signal("wf-1", "late") is None
    assert await journal.get_workflow_event("wf-1", "result") == (False, None)
    # The business record stays: the event log and the documents.
    assert [e.workflow_id for e in await journal.read_events("customer-wf-1")] == ["wf-1"]
    assert await journal.get_document("customer", "wf-1") is not None
    # Pruned once: the next pass finds nothing.
    assert await journal.prune_finished(done.updated_at + _TICK) == 0


@pytest.mark.parametrize("end", ["failed", "cancelled"])
async def test_every_finished_status_is_pruned(journal: Journal, end: str) -> None:
    done = await _finish(journal, "wf-1", end)
    assert await journal.prune_finished(done.updated_at + _TICK) == 1
    assert (await _row(journal, "wf-1")).status == end


async def test_unfinished_recent_and_keyed_workflows_are_kept(journal: Journal) -> None:
    await journal.create_workflow(new_wf("running", actor_key="customer-running"))
    await journal.append(batch(steps=(step("running", 1),), statuses=(
        StatusChange(workflow_id="running", status="running"),)))
    await journal.send_signal("running", "late", None)
    keyed = await _finish(journal, "keyed", key="invite:k1", seq=1)
    old = await _finish(journal, "old", seq=1)
    cutoff = old.updated_at + _TICK
    recent = await _finish(journal, "recent", seq=1)
    assert recent.updated_at >= cutoff

    assert await journal.prune_finished(cutoff) == 1

    assert (await _row(journal, "old")).pruned_at is not None
    assert await _kept_whole(journal, "recent")
    assert await _kept_whole(journal, "keyed")  # its key still answers retries
    assert (await _row(journal, "running")).pruned_at is None
    assert len(await journal.load_steps("running")) == 1
    assert await journal.next_signal("running", "late") is not None
    # Once its key has expired, the keyed workflow goes too.
    assert await journal.expire_idempotency_keys(keyed.created_at + _TICK) == 1
    assert await journal.prune_finished(cutoff) == 1
    assert (await _row(journal, "keyed")).pruned_at is not None
    assert await _kept_whole(journal, "recent")


async def test_pruning_goes_in_bounded_batches(journal: Journal) -> None:
    for n in range(5):
        last = await _finish(journal, f"wf-{n}")
    cutoff = last.updated_at + _TICK

    assert [await journal.prune_finished(cutoff, limit=2) for _ in range(4)] == [2, 2, 1, 0]
    for n in range(5):
        assert (await _row(journal, f"wf-{n}")).pruned_at is not None


async def test_an_owner_prunes_only_the_partitions_it_holds_at_their_epoch(
    journal: Journal,
) -> None:
    await _finish(journal, "mine", partition=3)
    lost = await _finish(journal, "lost", partition=4)
    cutoff = lost.updated_at + _TICK
    epochs = await journal.acquire_leases("node-a", [3, 4], 30, stale_after=30)
    # node-b took partition 4 over: node-a's epoch for it is stale now.
    taken = await journal.acquire_leases("node-b", [4], 30, stale_after=30)
    assert taken[4] > epochs[4]

    assert await journal.prune_finished(cutoff, leases={}) == 0
    assert await journal.prune_finished(cutoff, leases=epochs) == 1
    assert (await _row(journal, "mine")).pruned_at is not None
    assert await _kept_whole(journal, "lost")
    assert await journal.prune_finished(cutoff, leases={4: taken[4]}) == 1


async def test_a_pruned_workflow_can_be_neither_retried_nor_cancelled(journal: Journal) -> None:
    done = await _finish(journal, "wf-1", "failed")
    await journal.prune_finished(done.updated_at + _TICK)

    with pytest.raises(InvalidTransitionError, match="pruned"):
        await journal.retry_workflow("wf-1")
    with pytest.raises(InvalidTransitionError, match="pruned"):
        await journal.request_cancel("wf-1")
    assert (await _row(journal, "wf-1")).status == "failed"


async def test_a_pruned_workflow_forks_from_seq_one_only(journal: Journal) -> None:
    # Its steps are gone: a fork from a later seq would silently run them again.
    done = await _finish(journal, "wf-1")
    assert [s.seq for s in await journal.load_steps("wf-1")] == [1]  # seq 2 was forkable
    await journal.prune_finished(done.updated_at + _TICK)
    pruned = await _row(journal, "wf-1")

    with pytest.raises(InvalidForkError, match=r"pruned on .*only from seq 1") as refused:
        await journal.fork_workflow("wf-1", 2, "fork-1")
    assert refused.value.pruned_at == pruned.pruned_at
    assert await journal.get_workflow("fork-1") is None and await journal.forks("wf-1") == []

    fork, created = await journal.fork_workflow("wf-1", 1, "fork-2")  # again from the start
    assert created and (fork.status, fork.forked_from, fork.forked_at_seq) == (
        "pending", "wf-1", 1)
    assert await journal.load_steps("fork-2") == []


async def test_a_limit_below_one_is_refused(journal: Journal) -> None:
    moment = datetime.now().astimezone()
    with pytest.raises(ValueError, match="limit"):
        await journal.prune_finished(moment, limit=0)
    with pytest.raises(ValueError, match="limit"):
        await journal.expire_idempotency_keys(moment, limit=0)


# -- idempotency keys ------------------------------------------------------------------


async def test_a_key_within_its_time_gets_the_stored_workflow(journal: Journal) -> None:
    first, created = await journal.create_workflow(new_wf("wf-1", idempotency_key="k"))
    assert created

    again, created = await journal.create_workflow(
        new_wf("wf-2", idempotency_key="k"), key_expired_before=first.created_at)

    assert (again.id, created) == ("wf-1", False)
    assert await journal.get_workflow("wf-2") is None


async def test_a_key_reused_after_it_expired_starts_a_new_workflow(journal: Journal) -> None:
    first, _ = await journal.create_workflow(new_wf("wf-1", idempotency_key="k"))
    expired = first.created_at + _TICK

    second, created = await journal.create_workflow(
        new_wf("wf-2", idempotency_key="k"), key_expired_before=expired)

    assert (second.id, second.idempotency_key, created) == ("wf-2", "k", True)
    old = await _row(journal, "wf-1")
    assert (old.idempotency_key, old.status) == (None, "pending")  # the row stays
    # The key is wf-2's now, and fresh for the same cut-off.
    third, created = await journal.create_workflow(
        new_wf("wf-3", idempotency_key="k"), key_expired_before=expired)
    assert (third.id, created) == ("wf-2", False)


async def test_the_same_id_again_writes_nothing_even_with_its_key_expired(
    journal: Journal,
) -> None:
    first, _ = await journal.create_workflow(new_wf("wf-1", idempotency_key="k"))

    again, created = await journal.create_workflow(
        new_wf("wf-1", idempotency_key="k"), key_expired_before=first.created_at + _TICK)

    assert (again.id, again.idempotency_key, created) == ("wf-1", "k", False)


async def test_two_creates_racing_with_one_expired_key_start_one_workflow(
    journal: Journal,
) -> None:
    first, _ = await journal.create_workflow(new_wf("wf-0", idempotency_key="k"))
    expired = first.created_at + _TICK
    answers: dict[str, tuple[str, bool]] = {}

    async def create(workflow_id: str) -> None:
        row, created = await journal.create_workflow(
            new_wf(workflow_id, idempotency_key="k"), key_expired_before=expired)
        answers[workflow_id] = (row.id, created)

    async with anyio.create_task_group() as tg:
        for workflow_id in ("wf-a", "wf-b", "wf-c"):
            tg.start_soon(create, workflow_id)

    winners = [wid for wid, (row_id, created) in answers.items() if created]
    assert len(winners) == 1
    assert {row_id for row_id, _ in answers.values()} == set(winners)


async def test_expired_keys_are_freed_in_bounded_batches(journal: Journal) -> None:
    for n in range(3):
        last, _ = await journal.create_workflow(new_wf(f"wf-{n}", idempotency_key=f"k{n}"))
    await journal.create_workflow(new_wf("keyless"))
    fresh, _ = await journal.create_workflow(new_wf("fresh", idempotency_key="k-fresh"))
    cutoff = last.created_at + _TICK
    assert fresh.created_at >= cutoff

    assert [await journal.expire_idempotency_keys(cutoff, limit=2) for _ in range(3)] == [2, 1, 0]

    for n in range(3):
        assert (await _row(journal, f"wf-{n}")).idempotency_key is None
    assert (await _row(journal, "fresh")).idempotency_key == "k-fresh"
    # A freed key is free: a create without any cut-off takes it.
    row, created = await journal.create_workflow(new_wf("wf-new", idempotency_key="k0"))
    assert (row.id, created) == ("wf-new", True)


async def test_an_owner_expires_keys_only_in_the_partitions_it_holds(journal: Journal) -> None:
    await journal.create_workflow(new_wf("mine", idempotency_key="k1", partition=3))
    last, _ = await journal.create_workflow(new_wf("other", idempotency_key="k2", partition=4))
    epochs = await journal.acquire_leases("node-a", [3], 30, stale_after=30)

    assert await journal.expire_idempotency_keys(last.created_at + _TICK, leases=epochs) == 1
    assert (await _row(journal, "mine")).idempotency_key is None
    assert (await _row(journal, "other")).idempotency_key == "k2"
