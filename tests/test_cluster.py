"""Scale-out in one process: several Runtimes (nodes) over one journal, both journals.

The multi-process variants (real server.py processes, SIGKILL, SIGSTOP) are in
tests/test_scale_out.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from bench.polling import eventually
from journal import PARTITION_COUNT, Batch, Journal, NewWorkflow
from runtime import DelegatingJournal, Runtime, WorkflowContext, partition_of
from runtime.cluster import (
    News,
    RunHere,
    desired_partitions,
    news_payload,
    parse_wake,
    wake_payload,
)

from .support import wait_status

FAST: dict[str, Any] = {"heartbeat_interval": 0.1, "lease_ttl": 1.0, "grace": 1.0}


class Ran:
    """Which node ran which step of which workflow."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, str, str]] = []  # (node, workflow id, step)
        self.gate = anyio.Event()
        self.gate.set()

    def nodes_of(self, workflow_id: str) -> list[str]:
        return [node for node, wf, _ in self.steps if wf == workflow_id]


def register(runtime: Runtime, ran: Ran) -> None:
    node = runtime.node_id

    async def act(ctx: WorkflowContext, name: str) -> str:
        async def body() -> str:
            ran.steps.append((node, ctx.workflow_id, name))
            await ran.gate.wait()
            return node

        return await ctx.step(name, body)

    async def flow(ctx: WorkflowContext, _: None) -> list[str]:
        first = await act(ctx, "first")
        wake = await ctx.wait_for_signal("go", timeout=60)
        second = await act(ctx, "second")
        return [first, str(wake.payload), second]

    async def nap(ctx: WorkflowContext, seconds: float) -> str:
        await ctx.sleep(seconds)
        return await act(ctx, "after-sleep")

    runtime.register(flow)
    runtime.register(nap)


@asynccontextmanager
async def node(journal: Journal, name: str, ran: Ran, **options: Any) -> AsyncIterator[Runtime]:
    runtime = Runtime(journal, node_id=name, registry=CollectorRegistry(), **{**FAST, **options})
    register(runtime, ran)
    async with runtime:
        yield runtime


async def steal(journal: Journal, owner: Runtime, partition: int) -> dict[int, int]:
    """Take `partition` from the live `owner` for "intruder" (a node that is not live):
    the owner's lease is released, then acquired at once; again if the owner's own
    heartbeat took it back in between."""
    with anyio.fail_after(10):
        while True:
            epoch = owner.owned().get(partition)
            if epoch is not None:
                await journal.release_leases(owner.node_id, {partition: epoch})
            stolen = await journal.acquire_leases("intruder", [partition], 30, stale_after=30)
            if stolen:
                return stolen
            await anyio.sleep(0.01)


async def settled(*runtimes: Runtime, within: float = 10) -> None:
    """Until the runtimes own every partition between them, each its rendezvous share."""
    names = [r.node_id for r in runtimes]
    with anyio.fail_after(within):
        while any(set(r.owned()) != desired_partitions(r.node_id, names) for r in runtimes):
            await anyio.sleep(0.02)


def key_owned_by(runtime: Runtime, prefix: str = "k") -> str:
    for i in range(10_000):
        if partition_of(f"{prefix}:{i}") in runtime.owned():
            return f"{prefix}:{i}"
    raise AssertionError(f"{runtime.node_id} owns no partition")


def metric(runtime: Runtime, name: str, **labels: str) -> float:
    value = runtime.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# -- one node --------------------------------------------------------------------------


async def test_a_lone_node_owns_every_partition_once_open(journal: Journal) -> None:
    async with node(journal, "solo", Ran()) as solo:
        assert set(solo.owned()) == set(range(PARTITION_COUNT))
        assert metric(solo, "retinue_partitions_owned") == PARTITION_COUNT
        assert metric(solo, "retinue_lease_changes_total", change="acquired") == PARTITION_COUNT
    # A graceful close hands everything back at once.
    view = await journal.heartbeat("observer", 5, stale_after=5)
    assert view.live_nodes == ("observer",)
    assert {lease.owner for lease in view.leases} == {""}


# -- two nodes ---------------------------------------------------------------------------


async def test_two_nodes_split_the_partitions_by_rendezvous(journal: Journal) -> None:
    ran = Ran()
    async with node(journal, "node-a", ran) as a, node(journal, "node-b", ran) as b:
        await settled(a, b)
        assert set(a.owned()).isdisjoint(b.owned())
        assert 64 < len(a.owned()) < 192
        # Every move bumped the epoch: b's partitions are all past a's first epoch.
        assert all(epoch >= 2 for epoch in b.owned().values())
        assert metric(a, "retinue_lease_changes_total", change="released") == len(b.owned())


async def test_a_workflow_accepted_on_one_node_runs_on_its_partitions_owner(
    journal: Journal,
) -> None:
    ran = Ran()
    async with node(journal, "node-a", ran) as a, node(journal, "node-b", ran) as b:
        await settled(a, b)
        key = key_owned_by(b)
        row, created = await a.start_workflow("flow", None, actor_key=key)
        assert created
        await wait_status(journal, row.id, "waiting")
        await a.signal(row.id, "go", "from-a")  # accepted on a, runs on b
        done = await a.wait_for_finish(row.id, 10)  # a polls the journal
        assert done is not None and done.status == "completed", done
        assert done.result == ["node-b", "from-a", "node-b"]
        assert set(ran.nodes_of(row.id)) == {"node-b"}
        assert a.statistics().in_flight == 0 and a.statistics().waiters == 0


async def test_a_node_that_leaves_hands_its_waiting_workflows_over(journal: Journal) -> None:
    ran = Ran()
    async with node(journal, "node-a", ran) as a:
        async with node(journal, "node-b", ran) as b:
            await settled(a, b)
            key = key_owned_by(b)
            waiting, _ = await b.start_workflow("flow", None, actor_key=key)
            sleeping, _ = await b.start_workflow("nap", 0.5, actor_key=key_owned_by(b, "s"))
            await wait_status(journal, waiting.id, "waiting")
            await wait_status(journal, sleeping.id, "waiting")
        # b left gracefully: a owns everything well within one lease TTL.
        with anyio.fail_after(0.9):
            await settled(a)
        await a.signal(waiting.id, "go", "after-handover")
        done = await a.wait_for_finish(waiting.id, 10)
        assert done is not None and done.result == ["node-b", "after-handover", "node-a"]
        slept = await a.wait_for_finish(sleeping.id, 10)  # a re-armed b's timer
        assert slept is not None and slept.result == "node-a"


async def test_a_dead_nodes_partitions_are_taken_over_and_its_work_resumed(
    journal: Journal,
) -> None:
    ran = Ran()
    async with node(journal, "node-a", ran) as a:
        with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="power cut"),
                                flatten_subgroups=True):
            async with node(journal, "node-b", ran) as b:
                await settled(a, b)
                ran.gate = anyio.Event()  # the first step hangs until b dies
                row, _ = await b.start_workflow("flow", None, actor_key=key_owned_by(b))
                await eventually(lambda: bool(ran.steps), within=10)
                raise RuntimeError("power cut")  # no graceful hand-over
        ran.gate.set()
        # Its heartbeat goes stale (2 beats) well before its leases would run out.
        with anyio.fail_after(0.9):
            await settled(a)
        await a.signal(row.id, "go", "resumed")
        done = await a.wait_for_finish(row.id, 10)
        assert done is not None and done.result == ["node-a", "resumed", "node-a"]
        # The step b was inside ran again on a, with the same idempotency key.
        assert [(n, s) for n, wf, s in ran.steps if wf == row.id][:2] == [
            ("node-b", "first"), ("node-a", "first")]


async def test_a_command_whose_wake_up_was_lost_is_found_by_the_owner(journal: Journal) -> None:
    ran = Ran()
    async with node(journal, "node-a", ran) as a, node(journal, "node-b", ran) as b:
        await settled(a, b)
        key = key_owned_by(b)
        # Accepted straight into the journal: nobody was woken.
        await journal.create_workflow(NewWorkflow(
            id="lost-wake", name="nap", actor_key=key, partition=partition_of(key), input=0.0,
        ))
        done = await a.wait_for_finish("lost-wake", 5)
        assert done is not None and done.result == "node-b"


# -- fencing -----------------------------------------------------------------------------


async def test_an_actor_whose_lease_was_taken_cannot_write_and_its_work_is_resumed(
    journal: Journal,
) -> None:
    ran = Ran()
    async with node(journal, "node-a", ran) as a:
        ran.gate = anyio.Event()
        key = key_owned_by(a)
        partition = partition_of(key)
        row, _ = await a.start_workflow("flow", None, actor_key=key)
        # Inside its first step, "started" written.
        await eventually(lambda: bool(ran.steps), within=10)
        # Another node takes the partition while the step runs (a paused owner).
        stolen = await steal(journal, a, partition)
        ran.gate.set()  # the step returns; its completion is fenced
        await eventually(lambda: metric(a, "retinue_fenced_appends_total") == 1, within=10)
        assert metric(a, "retinue_lease_changes_total", change="lost") >= 1
        # The intruder is not live, so node-a takes the partition back with the next
        # epoch, and resumes the workflow by replay.
        await eventually(lambda: a.owned().get(partition, 0) > stolen[partition], within=10)
        await wait_status(journal, row.id, "waiting")
        await a.signal(row.id, "go", "again")
        done = await a.wait_for_finish(row.id, 10)
        assert done is not None and done.status == "completed"
        assert await journal.list_dead_letters() == []
        assert metric(a, "retinue_actor_restarts_total") == 0
        assert [s for n, wf, s in ran.steps if wf == row.id] == ["first", "first", "second"]


class HeldCommit(DelegatingJournal):
    """Holds the commit of `workflow_id`'s step `seq` inside the journal call,
    shielded like a statement already sent, until `release` is set."""

    def __init__(self, inner: Journal, workflow_id: str, seq: int) -> None:
        super().__init__(inner)
        self._held = (workflow_id, seq)
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def append(self, batch: Batch) -> None:
        if any((step.workflow_id, step.seq) == self._held for step in batch.steps):
            with anyio.CancelScope(shield=True):
                self.entered.set()
                await self.release.wait()
        await self.inner.append(batch)


async def test_a_partition_taken_back_while_its_stopped_run_unwinds_runs_the_workflow_again(
    journal: Journal,
) -> None:
    """The partition is dropped and recovered while the stopped actor's run is
    still inside a commit: recovery finds the workflow with a Run here, and has
    it run again once that Run ends (else it stays running with nobody to run it:
    soak seed 13346)."""
    held = HeldCommit(journal, "wf-unwinding", 2)

    async def two_steps(ctx: WorkflowContext, _: None) -> str:
        await ctx.step("first", lambda: "one")
        return await ctx.step("second", lambda: "two")

    # No heartbeat in the test's time: only recovery can bring the workflow back.
    async with Runtime(held, heartbeat_interval=60.0, lease_ttl=120.0) as rt:
        rt.register(two_steps)
        await rt.start_workflow("two_steps", None, actor_key="a:1", workflow_id="wf-unwinding")
        await held.entered.wait()
        partition = partition_of("a:1")
        epoch = rt.owned()[partition]
        rt.stop_partitions([partition])
        await rt.partitions_acquired({partition: epoch})
        held.release.set()
        done = await rt.wait_for_finish("wf-unwinding", 5)
    assert done is not None and (done.status, done.result) == ("completed", "two")


# -- wake-ups -------------------------------------------------------------------------------


def test_wake_ups_say_what_to_run_or_what_happened() -> None:
    run = parse_wake(wake_payload("customer:1", "wf-1", watched=True))
    assert run == RunHere("customer:1", "wf-1", True)
    assert parse_wake(news_payload("wf-1", "invite")) == News("wf-1", "invite")
    assert parse_wake(news_payload("wf-1", None)) == News("wf-1", None)
    assert parse_wake("") is None  # a rebalance
    assert parse_wake("not json") is None
