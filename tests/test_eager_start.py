"""Eager start (runtime/acceptance.py): a new workflow's acceptance rides with its
run's first commit, and accepted still means durable. Against both journals."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from journal import (
    Batch,
    Document,
    Journal,
    JournalUnavailableError,
    NewWorkflow,
    PostgresJournal,
    RunFence,
    StaleRunError,
    StatusChange,
    StepRecord,
)
from runtime import DelegatingJournal, RestartPolicy, Runtime, WorkflowContext
from runtime.acceptance import ACCEPTANCE_PATIENCE
from runtime.partitions import partition_of

from .support import Effects, ids, sequence, wait_status


class Recording(DelegatingJournal):
    """Delegates to `inner` and keeps every batch that committed. The next
    `appends_down` appends and `reads_down` document reads raise
    JournalUnavailableError before they reach the database."""

    def __init__(self, inner: Journal) -> None:
        super().__init__(inner)
        self.batches: list[Batch] = []
        self.appends_down = 0
        self.reads_down = 0

    async def append(self, batch: Batch) -> None:
        if self.appends_down > 0:
            self.appends_down -= 1
            raise JournalUnavailableError("Recording: the database is away")
        await self.inner.append(batch)
        self.batches.append(batch)

    async def get_document(self, kind: str, doc_id: str) -> Document | None:
        if self.reads_down > 0:
            self.reads_down -= 1
            raise JournalUnavailableError("Recording: the database is away")
        return await self.inner.get_document(kind, doc_id)

    def inserting_and_running(self, workflow_id: str) -> list[Batch]:
        """The batches that inserted `workflow_id` and claimed its run together."""
        return [b for b in self.batches
                if b.run is not None and b.run.workflow_id == workflow_id
                and any(wf.id == workflow_id for wf in b.workflows)]

    def touching(self, workflow_id: str) -> list[Batch]:
        return [b for b in self.batches
                if any(wf.id == workflow_id for wf in b.workflows)
                or (b.run is not None and b.run.workflow_id == workflow_id)]


class Held:
    """A workflow (`blocking`) whose first step, without effects so nothing is
    committed before it, holds until `release` is set; `entered` once it holds."""

    def __init__(self) -> None:
        self.entered, self.release = anyio.Event(), anyio.Event()

    async def blocking(self, ctx: WorkflowContext, _: None) -> str:
        return await ctx.step("hold", self._hold, effect=False)

    async def _hold(self) -> str:
        self.entered.set()
        await self.release.wait()
        return "held"


async def test_a_fresh_start_is_accepted_by_its_runs_first_commit(journal: Journal) -> None:
    recording = Recording(journal)
    effects = Effects()
    release = anyio.Event()

    async def acts_then_holds(ctx: WorkflowContext, _: None) -> int:
        done = await ctx.step("act", effects.act, "act", 1)
        await ctx.step("hold", release.wait, effect=False)
        return done

    async with Runtime(recording) as rt:
        rt.register(acts_then_holds)
        with anyio.fail_after(5):
            row, created = await rt.start_workflow("acts_then_holds", None, actor_key="a:1")
        # Answered once durable, not when the run ends: the first commit
        # (acceptance, claim, running, the write-ahead record) has landed.
        stored = await journal.get_workflow(row.id)
        assert created and stored is not None
        assert (stored.status, stored.run_id is not None) == ("running", True)
        first = recording.inserting_and_running(row.id)
        assert len(first) == 1 and first[0] is recording.touching(row.id)[0]
        assert [s.status for s in first[0].steps] == ["started"]
        release.set()
        done = await rt.wait_for_finish(row.id, 10)
    assert done is not None and (done.status, done.result) == ("completed", 10)
    assert effects.count() == {"act": 1}


async def test_four_effect_steps_take_five_commits(journal: Journal) -> None:
    recording = Recording(journal)
    effects = Effects()
    async with Runtime(recording) as rt:
        rt.register(sequence(effects), name="seq")
        row, _ = await rt.start_workflow("seq", 1, actor_key="a:1")
        done = await rt.wait_for_finish(row.id, 10)
    assert done is not None and (done.status, done.result) == ("completed", 100)
    # 4 write-ahead records (each carrying the previous completion; the first
    # the acceptance) and the end.
    assert len(recording.touching(row.id)) == 5
    assert effects.count() == {"s0": 1, "s1": 1, "s2": 1, "s3": 1}


@pytest.mark.parametrize(
    ("options", "eager_start"),
    [
        pytest.param({"workflow_id": "wf-named"}, True, id="caller-named-id"),
        pytest.param({"idempotency_key": "key-1"}, True, id="idempotency-key"),
        pytest.param({}, False, id="eager-start-off"),
    ],
)
async def test_a_start_that_may_name_an_existing_workflow_is_accepted_alone(
    journal: Journal, options: dict[str, Any], eager_start: bool
) -> None:
    """An id or key from the caller may name a workflow that exists: its
    acceptance must be answered from the journal before anything runs."""
    recording = Recording(journal)
    async with Runtime(recording, eager_start=eager_start) as rt:
        rt.register(sequence(Effects()), name="seq")
        row, created = await rt.start_workflow("seq", 1, actor_key="a:1", **options)
        done = await rt.wait_for_finish(row.id, 10)
        again, created_again = await rt.start_workflow("seq", 1, actor_key="a:1", **options)
    assert created and done is not None and done.status == "completed"
    assert recording.inserting_and_running(row.id) == []
    if options:
        assert (again.id, created_again) == (row.id, False)


async def test_a_start_for_a_busy_actor_is_accepted_without_waiting_for_it(
    journal: Journal,
) -> None:
    recording = Recording(journal)
    held = Held()

    async with Runtime(recording) as rt, anyio.create_task_group() as tg:
        rt.register(held.blocking)
        first: list[str] = []

        async def start_first() -> None:
            row, _ = await rt.start_workflow("blocking", None, actor_key="a:1")
            first.append(row.id)

        tg.start_soon(start_first)
        await held.entered.wait()
        # The first is running and has not committed: its caller still waits.
        assert first == []
        with anyio.fail_after(5):
            second, created = await rt.start_workflow("blocking", None, actor_key="a:1")
        assert created and (await journal.get_workflow(second.id)) is not None
        assert recording.inserting_and_running(second.id) == []
        held.release.set()
        with anyio.fail_after(5):
            while not first:
                await anyio.sleep(0.01)
        for workflow_id in (first[0], second.id):
            done = await rt.wait_for_finish(workflow_id, 10)
            assert done is not None and (done.status, done.result) == ("completed", "held")
    assert len(recording.inserting_and_running(first[0])) == 1


async def test_an_outage_at_the_first_commit_answers_unavailable_and_the_run_goes_on(
    journal: Journal,
) -> None:
    """Past its patience the caller tries to accept the workflow itself, and gets
    JournalUnavailableError as without eager start (a 503: it may still start);
    the run retries the same batch and the workflow runs once, whole."""
    recording = Recording(journal)
    recording.appends_down = 10**9  # until the test ends the outage
    effects = Effects()
    async with Runtime(recording, new_id=ids("wf-outage")) as rt:
        rt.register(sequence(effects), name="seq")
        with pytest.raises(JournalUnavailableError), anyio.fail_after(5):
            await rt.start_workflow("seq", 1, actor_key="a:1")
        assert await journal.get_workflow("wf-outage") is None
        recording.appends_down = 0
        done = await rt.wait_for_finish("wf-outage", 10)
    assert done is not None and (done.status, done.result) == ("completed", 100)
    assert effects.count() == {"s0": 1, "s1": 1, "s2": 1, "s3": 1}
    assert len(recording.inserting_and_running("wf-outage")) == 1


async def test_an_outage_at_a_read_before_the_first_commit_does_not_fail_the_start(
    journal: Journal,
) -> None:
    """The run waits the outage out; the caller, past its patience, accepts the
    workflow with a commit of its own, which the database takes."""
    recording = Recording(journal)
    recording.reads_down = 1

    async def reading(ctx: WorkflowContext, _: None) -> str:
        await ctx.step("look", ctx.reader.get, "customer", "c-1", effect=False)
        return await ctx.step("act", lambda: "acted")

    async with Runtime(recording) as rt:
        rt.register(reading)
        with anyio.fail_after(5):
            row, created = await rt.start_workflow("reading", None, actor_key="a:1")
        assert created and await journal.get_workflow(row.id) is not None
        done = await rt.wait_for_finish(row.id, 10)
    assert done is not None and (done.status, done.result) == ("completed", "acted")
    assert recording.reads_down == 0


async def test_a_run_dropped_before_its_first_commit_is_accepted_the_plain_way(
    journal: Journal,
) -> None:
    """Its partition is lost while the run has not committed: the caller accepts
    the workflow with a commit of its own, and the partition's owner runs it."""
    held = Held()

    async with Runtime(journal, heartbeat_interval=0.05, lease_ttl=1.0) as rt, \
            anyio.create_task_group() as tg:
        rt.register(held.blocking)
        started: list[tuple[Any, bool]] = []

        async def start() -> None:
            started.append(await rt.start_workflow("blocking", None, actor_key="a:1"))

        tg.start_soon(start)
        await held.entered.wait()
        rt.stop_partitions([partition_of("a:1")])
        with anyio.fail_after(5):
            while not started:
                await anyio.sleep(0.01)
        row, created = started[0]
        stored = await journal.get_workflow(row.id)
        assert created and stored is not None and stored.run_id is None
        held.release.set()
        # The next heartbeat takes the partition back and recovery runs it.
        done = await rt.wait_for_finish(row.id, 10)
    assert done is not None and (done.status, done.result) == ("completed", "held")


async def test_a_crash_before_the_first_commit_is_retried_with_the_row(
    journal: Journal,
) -> None:
    crashes = 0

    async def crashes_once(ctx: WorkflowContext, _: None) -> str:
        nonlocal crashes
        if crashes == 0:
            crashes += 1
            raise RuntimeError("a bug, once")
        return await ctx.step("act", lambda: "acted")

    restart = RestartPolicy(max_crashes=3, initial_backoff=0.001)
    async with Runtime(journal, restart=restart) as rt:
        rt.register(crashes_once)
        row, created = await rt.start_workflow("crashes_once", None, actor_key="a:1")
        done = await rt.wait_for_finish(row.id, 10)
    assert created and crashes == 1
    assert done is not None and (done.status, done.result) == ("completed", "acted")


async def test_a_run_dead_lettered_before_its_first_commit_lands_it_to_fail_it(
    journal: Journal,
) -> None:
    async def always_crashes(ctx: WorkflowContext, _: None) -> None:
        raise RuntimeError("a bug, always")

    restart = RestartPolicy(max_crashes=2, initial_backoff=0.001)
    async with Runtime(journal, restart=restart) as rt:
        rt.register(always_crashes)
        with anyio.fail_after(5):
            row, created = await rt.start_workflow("always_crashes", None, actor_key="a:1")
        assert created
        await wait_status(journal, row.id, "failed")
    stored = await journal.get_workflow(row.id)
    assert stored is not None and "dead-lettered" in (stored.error or "")
    letters = await journal.list_dead_letters()
    assert [letter.message for letter in letters] == [{"workflow_id": row.id}]


async def test_a_run_slow_to_commit_does_not_keep_its_caller_waiting(journal: Journal) -> None:
    """Past ACCEPTANCE_PATIENCE the caller accepts the workflow with a commit of
    its own; the run's first commit then claims the row it inserted."""
    release = anyio.Event()

    async def slow_start(ctx: WorkflowContext, _: None) -> str:
        await ctx.step("think", release.wait, effect=False)
        return await ctx.step("act", lambda: "acted")

    recording = Recording(journal)
    async with Runtime(recording) as rt:
        rt.register(slow_start)
        with anyio.fail_after(ACCEPTANCE_PATIENCE + 5):
            row, created = await rt.start_workflow("slow_start", None, actor_key="a:1")
        stored = await journal.get_workflow(row.id)
        assert created and stored is not None and (stored.status, stored.run_id) == (
            "pending", None)
        release.set()
        done = await rt.wait_for_finish(row.id, 10)
    assert done is not None and (done.status, done.result) == ("completed", "acted")
    accepted, claimed = recording.touching(row.id)[:2]
    assert (accepted.run, [wf.id for wf in accepted.workflows]) == (None, [row.id])
    assert claimed.run is not None and claimed.workflows == ()


# -- the journal's side: a batch that inserts the workflow it claims --------------------


def _first_commit(workflow_id: str, previous: str | None = None) -> Batch:
    """An eager start's first commit: the insert, the claim, `running`, a record."""
    return Batch(
        partition=0, epoch=0,
        run=RunFence(workflow_id=workflow_id, run_id="run-a", previous=previous),
        workflows=(NewWorkflow(id=workflow_id, name="invite", actor_key="c-1", partition=0),),
        statuses=(StatusChange(workflow_id=workflow_id, status="running"),),
        steps=(StepRecord(workflow_id=workflow_id, seq=1, name="s1", kind="step",
                          status="started", attempt=1, started_at=datetime.now(UTC)),),
    )


async def test_a_batch_may_insert_the_workflow_it_claims(journal: Journal) -> None:
    await journal.append(_first_commit("wf"))
    await journal.append(_first_commit("wf"))  # sent again, its answer lost: a no-op
    row = await journal.get_workflow("wf")
    assert row is not None and (row.status, row.run_id) == ("running", "run-a")
    assert [s.status for s in await journal.load_steps("wf")] == ["started"]


async def test_a_batch_inserting_a_workflow_cannot_claim_it_from_another_run(
    journal: Journal,
) -> None:
    with pytest.raises(StaleRunError):
        await journal.append(_first_commit("wf", previous="run-z"))
    assert await journal.get_workflow("wf") is None  # refused whole


async def test_a_group_with_a_first_commit_and_a_plain_acceptance_of_it_inserts_it_once(
    postgres_journal: PostgresJournal,
) -> None:
    """The caller past its patience and the run's first commit, in one group,
    in either order."""

    def plain(workflow_id: str) -> Batch:
        return Batch(partition=0, epoch=None, workflows=_first_commit(workflow_id).workflows)

    await postgres_journal._append_group([plain("wf"), _first_commit("wf")])
    await postgres_journal._append_group([_first_commit("wf-2"), plain("wf-2")])
    for workflow_id in ("wf", "wf-2"):
        row = await postgres_journal.get_workflow(workflow_id)
        assert row is not None and (row.status, row.run_id) == ("running", "run-a")
