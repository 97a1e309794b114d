"""The caller that accepts a new workflow reads its actor's last event seq while the
run does its lookup (runtime/commits.py `read_event_seq_ahead`): one read fewer on
the way to the run's first write, for workflows of a name known to write events.
The actor is its events' only writer, so the seqs come out as if the run had read."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from journal import Journal, JournalUnavailableError, MemoryJournal
from runtime import Runtime, WorkflowContext
from runtime.faults import DelegatingJournal
from runtime.store import WriteSet

pytestmark = pytest.mark.anyio


class Noted(msgspec.Struct, frozen=True):
    n: int


class SeqReads(DelegatingJournal):
    """Counts `last_event_seq` reads; the next `fail` of them find the database away."""

    def __init__(self, inner: Journal) -> None:
        super().__init__(inner)
        self.reads = 0
        self.fail = 0

    async def last_event_seq(self, actor_key: str) -> int:
        self.reads += 1
        if self.fail:
            self.fail -= 1
            raise JournalUnavailableError("simulated outage")
        return await self.inner.last_event_seq(actor_key)


def _note(writes: WriteSet, n: int) -> None:
    writes.emit(Noted(n=n))


class Gate:
    """What a `noting` lookup waits for: open unless a test closes it."""

    def __init__(self) -> None:
        self.open = anyio.Event()
        self.open.set()

    def close(self) -> None:
        self.open = anyio.Event()


def _register(runtime: Runtime, gate: Gate) -> None:
    async def wait_for_lookup() -> None:
        await gate.open.wait()

    async def noting(ctx: WorkflowContext, n: int) -> int:
        await ctx.step("lookup", wait_for_lookup, effect=False)
        await ctx.write("note", _note, n)
        return n

    async def silent(ctx: WorkflowContext, n: int) -> int:
        return await ctx.step("pure", lambda: n, effect=False)

    runtime.register(noting, name="noting")
    runtime.register(silent, name="silent")


async def _run(runtime: Runtime, name: str, n: int, actor_key: str) -> None:
    row, created = await runtime.start_workflow(name, n, actor_key=actor_key)
    assert created
    with anyio.fail_after(10):
        done = await runtime.wait_for_finish(row.id, 10)
    assert done is not None and done.status == "completed", done


async def _seqs(journal: Journal, actor_key: str) -> list[int]:
    return [event.seq for event in await journal.read_events(actor_key)]


async def test_the_accepting_caller_reads_the_seq_while_the_run_is_in_its_lookup() -> None:
    journal = SeqReads(MemoryJournal())
    gate = Gate()
    async with Runtime(journal, idle_timeout=5) as runtime:
        _register(runtime, gate)
        await _run(runtime, "noting", 1, "customer:a")  # teaches: `noting` writes events
        assert journal.reads == 1
        gate.close()
        row, _ = await runtime.start_workflow("noting", 2, actor_key="customer:b")
        # Back from accepting, the read is done; the run is still in its lookup.
        assert journal.reads == 2
        assert await _seqs(journal, "customer:b") == []
        gate.open.set()
        with anyio.fail_after(10):
            await runtime.wait_for_finish(row.id, 10)
    assert journal.reads == 2  # the run used the read ahead, made none of its own
    assert await _seqs(journal, "customer:b") == [1]


async def test_workflows_that_write_no_events_never_read_the_seq() -> None:
    journal = SeqReads(MemoryJournal())
    async with Runtime(journal, idle_timeout=5) as runtime:
        _register(runtime, Gate())
        for i in range(3):
            await _run(runtime, "silent", i, f"customer:{i}")
    assert journal.reads == 0


async def test_an_ahead_read_that_finds_the_database_away_leaves_the_run_to_read() -> None:
    journal = SeqReads(MemoryJournal())
    async with Runtime(journal, idle_timeout=5) as runtime:
        _register(runtime, Gate())
        await _run(runtime, "noting", 1, "customer:a")
        journal.fail = 1
        await _run(runtime, "noting", 2, "customer:b")  # accepted all the same
    assert journal.reads == 3  # the failed read ahead, then the run's own
    assert await _seqs(journal, "customer:b") == [1]


async def test_an_actor_with_events_from_before_a_restart_goes_on_from_its_last_seq() -> None:
    inner = MemoryJournal()
    async with Runtime(inner, idle_timeout=5) as runtime:
        _register(runtime, Gate())
        await _run(runtime, "noting", 1, "customer:c")
    journal = SeqReads(inner)
    async with Runtime(journal, idle_timeout=5) as runtime:
        _register(runtime, Gate())
        await _run(runtime, "noting", 2, "customer:x")  # learns, on another actor
        await _run(runtime, "noting", 3, "customer:c")  # read ahead: its seq 1 is there
    assert journal.reads == 2
    assert await _seqs(journal, "customer:c") == [1, 2]
