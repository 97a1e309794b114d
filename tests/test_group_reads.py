"""Group reads (journal/_groupread.py): concurrent point reads of one kind share a
statement, and each caller still gets exactly its own answer.

- both journals: many concurrent `find_document`, `last_event_seq` and
  `next_signal` calls over hits, misses and repeated keys answer as the contract
  says (on PostgreSQL in fewer statements than reads);
- freshness: a read issued after a commit sees it, even while a statement of its
  kind (whose snapshot predates the commit) is in flight;
- outages: a frozen PostgreSQL fails every read of a group with
  JournalUnavailableError, and reads work again once it answers;
- a key the server refuses fails its own read only; a caller cancelled while
  queued, or while sending, leaves the others their answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import asyncpg
import pytest
from anyio import wait_all_tasks_blocked

from bench.polling import eventually
from journal import (
    Document,
    EmbeddedPostgres,
    Journal,
    JournalUnavailableError,
    PostgresJournal,
    Signal,
)
from journal._groupread import GroupReader
from tests.faults_support import frozen_postgres

from .journal_support import batch, doc, event, new_wf

# -- both journals: each caller its own answer ------------------------------------------


async def _fill(journal: Journal) -> dict[str, list[Signal]]:
    """Documents d0..d9 (unique keys u0..u9), actors a0..a4 with i events each, and
    workflows w0..w5 with 0..2 signals "go" each (the first of w5 consumed), plus
    one "stop" on w0; returns the signals by workflow."""
    for i in range(6):
        await journal.create_workflow(new_wf(f"w{i}"))
    sent: dict[str, list[Signal]] = {}
    for i in range(6):
        sent[f"w{i}"] = [await journal.send_signal(f"w{i}", "go", {"n": n}) for n in range(i % 3)]
    await journal.send_signal("w0", "stop", {"n": 9})
    events = tuple(event(f"a{i}", seq) for i in range(5) for seq in range(1, i + 1))
    documents = tuple(doc(f"d{i}", unique_key=f"u{i}") for i in range(10))
    await journal.append(batch(events=events, documents=documents,
                               consumed_signals=(sent["w5"][0].id,)))
    return sent


async def _all_at_once(calls: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
    answers: list[Any] = [None] * len(calls)

    async def call(i: int) -> None:
        answers[i] = await calls[i]()

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(call, i)
    return answers


async def test_concurrent_point_reads_each_get_their_own_answer(journal: Journal) -> None:
    sent = await _fill(journal)
    # Hits and misses, each key asked for three times, interleaved.
    unique_keys = [f"u{i % 14}" for i in range(42)]  # u10..u13 are misses
    actors = [f"a{i % 7}" for i in range(42)]  # a5, a6 have no events
    workflows = [f"w{i % 8}" for i in range(48)]  # w6, w7 do not exist
    calls: list[Callable[[], Awaitable[Any]]] = []
    for key, actor, workflow in zip(unique_keys, actors, workflows, strict=False):
        calls += [lambda k=key: journal.find_document("customer", k),
                  lambda a=actor: journal.last_event_seq(a),
                  lambda w=workflow: journal.next_signal(w, "go")]
    calls += [lambda w=workflow: journal.next_signal(w, "stop") for workflow in workflows[:8]]
    calls += [lambda k=key: journal.find_document("elsewhere", k) for key in unique_keys[:10]]
    answers = await _all_at_once(calls)

    def document_id(found: Document | None) -> str | None:
        return None if found is None else found.id

    def signal_id(found: Signal | None) -> int | None:
        return None if found is None else found.id

    oldest_unconsumed = {"w1": sent["w1"][0].id, "w2": sent["w2"][0].id,
                         "w4": sent["w4"][0].id, "w5": sent["w5"][1].id}
    for i, (key, actor, workflow) in enumerate(zip(unique_keys, actors, workflows,
                                                   strict=False)):
        found, seq, signal = answers[3 * i:3 * i + 3]
        number = int(key[1:])
        assert document_id(found) == (f"d{number}" if number < 10 else None), key
        assert seq == (int(actor[1:]) if int(actor[1:]) < 5 else 0), actor
        assert signal_id(signal) == oldest_unconsumed.get(workflow), workflow
        if signal is not None:
            assert (signal.workflow_id, signal.name, signal.consumed) == (workflow, "go", False)
    stops = answers[3 * 42:3 * 42 + 8]
    assert [s is not None and s.payload == {"n": 9} for s in stops] == \
        [True] + [False] * 7
    assert answers[3 * 42 + 8:] == [None] * 10  # another kind's unique keys
    if isinstance(journal, PostgresJournal):
        for method, stats in journal.read_statistics.items():
            assert stats.statements < stats.reads, (method, stats.statements, stats.reads)


async def test_a_key_the_server_refuses_fails_its_own_read_only(
    postgres_journal: PostgresJournal,
) -> None:
    await _fill(postgres_journal)
    keys = [f"u{i}" for i in range(8)] + ["bad\x00key"] + [f"u{i}" for i in range(8, 12)]
    results: dict[str, Any] = {}

    async def find(key: str) -> None:
        try:
            results[key] = await postgres_journal.find_document("customer", key)
        except asyncpg.PostgresError as exc:  # PostgreSQL's own refusal, as alone
            results[key] = exc

    async with anyio.create_task_group() as tg:
        for key in keys:
            tg.start_soon(find, key)
    assert isinstance(results.pop("bad\x00key"), asyncpg.PostgresError)
    assert {key: None if d is None else d.id for key, d in results.items()} == {
        f"u{i}": f"d{i}" if i < 10 else None for i in range(12)
    }
    stats = postgres_journal.read_statistics["find_document"]
    assert stats.largest > 1  # the refused key shared a statement, then went alone


# -- freshness ------------------------------------------------------------------------------


async def test_a_read_after_a_commit_never_joins_a_statement_already_in_flight(
    postgres_journal: PostgresJournal,
) -> None:
    in_flight, finish = anyio.Event(), anyio.Event()
    groups: list[list[tuple[str, str]]] = []

    async def held(keys: Sequence[tuple[str, str]]) -> Mapping[tuple[str, str], Document]:
        """The real statement, whose answer is then held back: in flight, with a
        snapshot taken before the commit below."""
        found = await postgres_journal._find_documents(keys)
        groups.append(list(keys))
        in_flight.set()
        await finish.wait()
        return found

    reader = GroupReader(held, max_in_flight=1)
    answers: dict[str, Document | None] = {}

    async def read(label: str) -> None:
        answers[label] = await reader.read(("customer", "late@example.com"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(read, "before")
        await in_flight.wait()
        late = doc("late", unique_key="late@example.com")
        await postgres_journal.append(batch(documents=(late,)))
        tg.start_soon(read, "after")  # called after the commit returned
        await wait_all_tasks_blocked()  # queued behind the statement in flight
        finish.set()
    assert answers["before"] is None
    after = answers["after"]
    assert after is not None and after.id == "late"
    assert len(groups) == 2 and reader.statistics.statements == 2


# -- outages --------------------------------------------------------------------------------


async def test_a_frozen_server_fails_every_read_of_a_group_then_reads_work_again(
    tmp_path: Path,
) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg")
    dsn = await anyio.to_thread.run_sync(pg.start)
    try:
        journal = await PostgresJournal.connect(dsn, timeout=1.0)
        try:
            await _fill(journal)
            calls: list[Callable[[], Awaitable[Any]]] = []
            for i in range(20):
                calls += [lambda i=i: journal.find_document("customer", f"u{i}"),
                          lambda i=i: journal.last_event_seq(f"a{i}"),
                          lambda i=i: journal.next_signal(f"w{i}", "go")]
            with frozen_postgres(pg.data_dir):
                with anyio.fail_after(30):  # a guard against a hang, not a timing
                    errors = await _all_at_once([_caught(call) for call in calls])
            assert all(isinstance(e, JournalUnavailableError) for e in errors), errors
            for method, stats in journal.read_statistics.items():
                assert stats.statements < stats.reads, (method, stats.statements)
            await eventually(_reads_answer(journal), within=15, what="reads after the thaw")
            assert (await journal.last_event_seq("a3"), await journal.next_signal("w6", "go")) \
                == (3, None)
        finally:
            await journal.aclose()
    finally:
        await anyio.to_thread.run_sync(pg.stop)


def _caught(call: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    async def calling() -> Any:
        try:
            return await call()
        except JournalUnavailableError as exc:
            return exc

    return calling


def _reads_answer(journal: PostgresJournal) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        try:
            found = await journal.find_document("customer", "u1")
        except JournalUnavailableError:
            return False
        return found is not None and found.id == "d1"

    return probe


async def test_a_stalled_group_read_fails_every_read_in_it() -> None:
    groups: list[list[int]] = []

    async def hangs(keys: Sequence[int]) -> Mapping[int, int]:
        groups.append(list(keys))
        await anyio.sleep_forever()  # a frozen database: no answer, no error
        raise AssertionError  # pragma: no cover

    reader = GroupReader(hangs, max_in_flight=1, read_timeout=0.2)
    with anyio.fail_after(5):
        errors = await _all_at_once([_caught(lambda i=i: reader.read(i)) for i in range(20)])
    assert all(isinstance(e, JournalUnavailableError) for e in errors), errors
    assert sorted(k for group in groups for k in group) == list(range(20))
    assert [len(group) for group in groups] == [1, 19]  # alone, then all the rest together


async def test_an_outage_found_while_reading_keys_alone_answers_the_rest_at_once() -> None:
    groups: list[list[int]] = []

    async def read(keys: Sequence[int]) -> Mapping[int, int]:
        groups.append(list(keys))
        if len(keys) > 1:
            raise RuntimeError("one key's fault: each is read alone to find which")
        if len(groups) > 2:
            raise JournalUnavailableError("the database went away")
        await anyio.lowlevel.checkpoint()  # the first, alone: the others queue meanwhile
        return {key: key * 10 for key in keys}

    reader = GroupReader(read, max_in_flight=1)
    answers = await _all_at_once([_caught(lambda i=i: reader.read(i)) for i in range(5)])
    assert answers[0] == 0
    assert all(isinstance(a, JournalUnavailableError) for a in answers[1:]), answers
    # The lone first read, the group, its first key alone; the rest were not tried.
    assert groups == [[0], [1, 2, 3, 4], [1]]


# -- cancellation -----------------------------------------------------------------------------


class _Gated:
    """A read_group whose statements each wait for `release`; records their keys."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.release = anyio.Event()

    def release_one(self) -> None:
        """Let the statements waiting now go on; the next ones wait again."""
        released, self.release = self.release, anyio.Event()
        released.set()

    async def __call__(self, keys: Sequence[str]) -> Mapping[str, str]:
        self.groups.append(list(keys))
        await self.release.wait()
        return {key: key.upper() for key in keys if key != "miss"}


def _cancellable_reads(reader: GroupReader[str, str]) -> tuple[
        Callable[[str], Awaitable[None]], dict[str, str | None], dict[str, anyio.CancelScope]]:
    """A read of `key` that files its answer, and its cancel scope, under the key."""
    answers: dict[str, str | None] = {}
    scopes: dict[str, anyio.CancelScope] = {}

    async def read(key: str) -> None:
        with anyio.CancelScope() as scope:
            scopes[key] = scope
            answers[key] = await reader.read(key)

    return read, answers, scopes


async def test_a_read_cancelled_while_queued_leaves_the_others_their_answers() -> None:
    gated = _Gated()
    reader = GroupReader(gated, max_in_flight=1)
    read, answers, scopes = _cancellable_reads(reader)

    with anyio.fail_after(10):  # a guard against a stranded read, not a timing
        await _cancel_the_queue_head(gated, read, scopes)
    assert answers == {"first": "FIRST", "queued": "QUEUED", "miss": None}
    assert gated.groups == [["first"], ["queued", "miss"]]
    assert not reader._pending and reader._in_flight == 0


async def _cancel_the_queue_head(
    gated: _Gated, read: Callable[[str], Awaitable[None]], scopes: dict[str, anyio.CancelScope]
) -> None:
    async with anyio.create_task_group() as tg:
        for key in ("first", "queued-head", "queued", "miss"):
            tg.start_soon(read, key)
            await wait_all_tasks_blocked()  # queued in this order
        scopes["queued-head"].cancel()  # the read that would send the next statement
        await wait_all_tasks_blocked()
        gated.release.set()


async def test_a_cancelled_sender_finishes_its_statement_for_the_others() -> None:
    gated = _Gated()
    reader = GroupReader(gated, max_in_flight=1)
    read, answers, scopes = _cancellable_reads(reader)

    with anyio.fail_after(10):  # a guard against a stranded read, not a timing
        async with anyio.create_task_group() as tg:
            tg.start_soon(read, "lone")
            await wait_all_tasks_blocked()
            scopes["lone"].cancel()  # alone in its statement: it leaves at once
            await wait_all_tasks_blocked()
            assert "lone" not in answers and reader._in_flight == 0
            tg.start_soon(read, "a")
            await wait_all_tasks_blocked()
            tg.start_soon(read, "b")
            tg.start_soon(read, "c")
            await wait_all_tasks_blocked()
            # "a" ends its statement: "b" is woken and sends "b" and "c" together.
            gated.release_one()
            await wait_all_tasks_blocked()
            assert gated.groups[-1] == ["b", "c"]
            scopes["b"].cancel()  # the sender: shielded, its statement goes on for "c"
            await wait_all_tasks_blocked()
            gated.release.set()
    assert answers["a"] == "A" and answers["c"] == "C"
    assert gated.groups == [["lone"], ["a"], ["b", "c"]]


@pytest.mark.parametrize("max_in_flight", [1, 2])
async def test_a_lone_read_is_sent_at_once(max_in_flight: int) -> None:
    sent: list[list[str]] = []

    async def read(keys: Sequence[str]) -> Mapping[str, str]:
        sent.append(list(keys))
        return {key: key for key in keys}

    reader = GroupReader(read, max_in_flight=max_in_flight)
    for key in ("x", "y"):
        assert await reader.read(key) == key
    assert sent == [["x"], ["y"]]
    assert (reader.statistics.statements, reader.statistics.largest) == (2, 1)
