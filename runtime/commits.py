"""What a running workflow asks of its node (the RunHost): commits, epochs, events."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any, TypeVar

import anyio

from journal import (
    Batch,
    FencedError,
    Journal,
    JournalUnavailableError,
    NewWorkflow,
    StaleRunError,
    WorkflowRow,
)

from .actor import Actor, Run
from .clock import Clock
from .cluster import LeaseManager, PartitionLost
from .context import RunHost
from .errors import RunSuperseded
from .metrics import RuntimeMetrics
from .partitions import partition_of
from .placement import Placement
from .policy import unavailable_backoff
from .waiters import Waiters

__all__ = ["Committer"]

_T = TypeVar("_T")

# The actor whose message is being handled, in its task: its writes carry the
# epoch it was started under, never a newer one its partition got since.
_current_actor: ContextVar[Actor] = ContextVar("retinue_current_actor")


def new_row(new: NewWorkflow, now: datetime) -> WorkflowRow:
    """The row of a workflow this runtime has just written, without reading it back."""
    return WorkflowRow(
        id=new.id, name=new.name, actor_key=new.actor_key, partition=new.partition,
        status="pending", input=new.input, idempotency_key=new.idempotency_key,
        request_hash=new.request_hash, parent_id=new.parent_id, trace_id=new.trace_id,
        app_version=new.app_version,
        created_at=now, updated_at=now,
    )


class Committer(RunHost):
    """The RunHost every WorkflowContext of this node talks to: appends its
    batches (waiting out an outage, translating the journal's refusals), the epoch
    its writes carry, its actor's event numbering, and what its commits start
    (children, timers, events for waiters).

    `ready`: the Runtime takes commands (`accepting`, set by it) and no commit has
    found the database away since the journal last answered."""

    def __init__(
        self,
        journal: Journal,
        clock: Clock,
        metrics: RuntimeMetrics,
        placement: Placement,
        waiters: Waiters,
        cluster: LeaseManager,
    ) -> None:
        self.journal = journal
        self.clock = clock
        self._metrics = metrics
        self._placement = placement
        self._epochs = placement.epochs
        self._actors = placement.actors
        self._timers = placement.timers
        self._waiters = waiters
        self._cluster = cluster
        self._cancelling: set[str] = set()
        self.accepting = False
        self.ready = False
        self.app_version = ""  # set by the Runtime as workflows are registered

    def journal_answered(self, answered: bool) -> None:
        """The journal answered a heartbeat (True) or did not: ready follows it
        while the runtime takes commands, so an idle node is ready again once an
        outage ends (it refused commands meanwhile, so no commit would say so)."""
        self.ready = answered and self.accepting

    def set_accepting(self, accepting: bool) -> None:
        """Open (True) or close the Runtime to commands; ready along with it."""
        self.accepting = accepting
        self.ready = accepting

    @contextmanager
    def acting_as(self, actor: Actor) -> Iterator[bool]:
        """Run as `actor` (its writes carry its epoch); yields False, and the
        message is not handled, if its partition is no longer owned at that epoch.
        A PartitionLost on the way ends the message: the owner replays it."""
        if actor.epoch is None or self._epochs.get(partition_of(actor.key)) != actor.epoch:
            yield False
            return
        token = _current_actor.set(actor)
        try:
            yield True
        except PartitionLost:
            pass
        finally:
            _current_actor.reset(token)

    # -- appends --------------------------------------------------------------------

    async def commit(self, batch: Batch) -> None:
        """Append `batch`, waiting out a database outage (with backoff) meanwhile.
        Sent again after an outage, the very same batch is a no-op if its first
        try landed with the answer lost: the journal makes it so."""
        await self.outlast(lambda: self._append(batch))
        if not self.ready and self.accepting:
            # The journal answers again. Not only after this commit's own outage:
            # the commits that saw it may all have been fenced since (an outage
            # longer than the lease TTL moves every partition), and then only
            # the recovered runs' commits are left to say so.
            self.ready = True

    async def _append(self, batch: Batch) -> None:
        """One try; a refusal becomes the control flow that stops the run."""
        began = time.perf_counter()
        try:
            await self.journal.append(batch)
        except FencedError as exc:
            self._fenced(batch)
            raise PartitionLost(batch.partition) from exc
        except StaleRunError as exc:
            if batch.run is None:
                raise
            raise RunSuperseded(batch.run.workflow_id) from exc
        self._metrics.journal_append.observe(time.perf_counter() - began)

    def _fenced(self, batch: Batch) -> None:
        """The journal refused `batch`: another node owns its partition now."""
        self._cluster.metrics.fenced_appends.inc()
        if self._epochs.get(batch.partition) == batch.epoch:
            self._cluster.lost([batch.partition], f"an append at epoch {batch.epoch} was fenced")

    async def outlast(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """`call()`, again and again (with backoff) while the database is away;
        meanwhile the runtime is not ready."""
        outages = 0
        while True:
            try:
                return await call()
            except JournalUnavailableError:
                outages += 1
                self.ready = False
                self._metrics.journal_unavailable.inc()
                await anyio.sleep(unavailable_backoff(outages))

    def epoch_of(self, partition: int) -> int:
        """The epoch to write `partition` under: the one the running actor started
        with. Raises PartitionLost if this node does not own it at that epoch."""
        epoch = self._epochs.get(partition)
        actor = _current_actor.get(None)
        if epoch is None or (actor is not None and actor.epoch != epoch
                             and partition_of(actor.key) == partition):
            raise PartitionLost(partition)
        return epoch

    def partition_of(self, actor_key: str) -> int:
        return partition_of(actor_key)

    # -- cancel requests --------------------------------------------------------------

    def cancel_requested(self, workflow_id: str) -> bool:
        return workflow_id in self._cancelling

    def mark_cancelling(self, workflow_id: str) -> None:
        """A cancel was requested: the workflow stops at its next step boundary."""
        self._cancelling.add(workflow_id)

    def clear_cancelling(self, workflow_id: str) -> None:
        """A Run of the workflow ended here (its journal row keeps the request
        for the next one)."""
        self._cancelling.discard(workflow_id)

    # -- the actor's event log --------------------------------------------------------

    def _actor_of(self, actor_key: str) -> Actor:
        actor = _current_actor.get(None)
        if actor is None or actor.key != actor_key:
            actor = self._actors.get(actor_key)
        if actor is None:  # stopped: its partition moved
            raise PartitionLost(partition_of(actor_key))
        return actor

    async def next_event_seq(self, actor_key: str) -> int:
        actor = self._actor_of(actor_key)
        if actor.next_event_seq is None:  # loaded on the actor's first write
            actor.next_event_seq = await self.journal.last_event_seq(actor_key) + 1
        return actor.next_event_seq

    def events_committed(self, actor_key: str, count: int) -> None:
        actor = self._actor_of(actor_key)
        assert actor.next_event_seq is not None
        actor.next_event_seq += count

    # -- what a commit started --------------------------------------------------------

    def child_started(self, child: NewWorkflow) -> None:
        self._metrics.workflows_started.labels(child.name).inc()
        # Queued with the row just committed, no history: no reads to start it (two
        # per invite). A parent replayed from a stale view could start it again (the
        # insert is a no-op then) after it ran; the run fence covers that: its first
        # commit claims the run from None, which the journal refuses once any run
        # has held it (or it finished), and the refused run reloads its history.
        self._placement.deliver(child.actor_key,
                                Run(workflow_id=child.id, row=new_row(child, self.clock.now())))

    def timer_set(self, workflow_id: str, actor_key: str, fire_at: datetime) -> None:
        self._timers.set(workflow_id, actor_key, fire_at)

    def event_published(self, workflow_id: str, key: str, value: Any) -> None:
        self._waiters.published(workflow_id, key, value)

    def step_finished(self, workflow: str, step: str, outcome: str, seconds: float) -> None:
        self._metrics.step_finished(workflow, step, outcome, seconds)
