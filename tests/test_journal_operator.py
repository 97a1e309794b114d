"""What the operator CLI reads and does through the journal: `cluster_view` (the
nodes and leases, without heartbeating), and `rebuild_documents` (a projection
swapped in from the event log, atomically, never losing a row a write committed
while the rebuild ran: `retinue rebuild-projections` is safe while servers run)."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import asyncpg
import pytest

from bench.polling import eventually
from journal import Batch, Document, DomainEvent, IntegrityError, Journal, PostgresJournal
from journal._pgconn import _init_connection
from journal._pgwrite import append_batches
from runtime import partition_of


def _set(actor_key: str, seq: int, value: int) -> Batch:
    """What a write step appends: an event, and the row it projects to."""
    return Batch(
        partition=partition_of(actor_key), epoch=None,
        events=(DomainEvent(actor_key=actor_key, seq=seq, type="Set", payload={"v": value}),),
        documents=(Document(kind="counter", id=actor_key, data={"v": value}),),
    )


def _fold(events: Sequence[DomainEvent]) -> list[Document]:
    """Each actor's last value, as a `counter` row."""
    last = {e.actor_key: e.payload["v"] for e in events if e.type == "Set"}
    return [Document(kind="counter", id=key, data={"v": v}) for key, v in sorted(last.items())]


async def _counters(journal: Journal) -> dict[str, int]:
    return {d.id: d.data["v"] for d in await journal.list_documents("counter")}


async def test_cluster_view_is_what_a_heartbeat_sees_without_heartbeating(
    journal: Journal,
) -> None:
    assert (await journal.cluster_view(stale_after=2.0)).live_nodes == ()
    seen = await journal.heartbeat("n1", 5.0, stale_after=2.0)
    await journal.acquire_leases("n1", [0, 1], 5.0, stale_after=2.0)
    view = await journal.cluster_view(stale_after=2.0)
    assert view.live_nodes == seen.live_nodes == ("n1",)
    assert [(lease.owner, lease.epoch) for lease in view.leases[:3]] == [
        ("n1", 1), ("n1", 1), ("", 0)]
    await journal.leave("n1")
    assert (await journal.cluster_view(stale_after=2.0)).live_nodes == ()


async def test_a_rebuild_swaps_the_kinds_it_names_from_the_log(journal: Journal) -> None:
    await journal.append(_set("a", 1, 1))
    await journal.append(_set("a", 2, 2))
    await journal.append(_set("b", 1, 7))
    stray = Document(kind="counter", id="gone", data={"v": 0})
    other = Document(kind="other", id="kept", data={"v": 0})
    await journal.append(Batch(partition=0, epoch=None, documents=(stray, other)))

    assert await journal.rebuild_documents(["counter"], _fold) == {"counter": 2}
    assert await _counters(journal) == {"a": 2, "b": 7}
    assert [d.id for d in await journal.list_documents("other")] == ["kept"]

    with pytest.raises(ValueError, match="may only replace those kinds"):
        await journal.rebuild_documents(["other"], _fold)
    clash = [Document(kind="counter", id=i, data={}, unique_key="same") for i in "xy"]
    with pytest.raises(IntegrityError):
        await journal.rebuild_documents(["counter"], lambda _: clash)
    assert await _counters(journal) == {"a": 2, "b": 7}  # a failed rebuild changes nothing


async def test_a_write_under_way_is_folded_in_not_lost(pg_dsn: str) -> None:
    """A write that updates a row is under way (uncommitted) when the rebuild
    starts: the rebuild waits for it and reads its event. (Reading the log first
    and swapping after would delete its committed row and put back the old one.)"""
    journal = await PostgresJournal.connect(pg_dsn)
    writer = await asyncpg.connect(pg_dsn)
    try:
        await _init_connection(writer)
        await journal.append(_set("a", 1, 1))
        transaction = writer.transaction()
        await transaction.start()
        await append_batches(writer, [_set("a", 2, 2)])  # the real write path
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.rebuild_documents, ["counter"], _fold)
            await eventually(lambda: _waits_on_a_lock(journal), within=10,
                             what="the rebuild to wait for the write")
            await transaction.commit()
        assert await _counters(journal) == {"a": 2}
    finally:
        await writer.close()
        await journal.aclose()


async def _waits_on_a_lock(journal: PostgresJournal) -> bool:
    waiting = await journal._pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
    return bool(waiting)
