"""The Runtime: one node's public face, over the collaborators that do the work.

    Placement  (placement.py)  where messages go: owned partitions, actors, one Run
                               per workflow, timers, commands in flight, wake-ups out
    Recovery   (recovery.py)   the lease manager's host: recover acquired partitions,
                               stop lost ones, catch up on lost wake-ups
    Waiters    (waiters.py)    callers waiting for a workflow's events or its end
    Committer  (commits.py)    the RunHost a WorkflowContext talks to: commits, epochs
    Executor   (execution.py)  the ActorHost: runs a Run, records its end, dead letters
    Pruner     (retention.py)  removes what owned, long-finished workflows no longer need

Runtime builds and wires them, opens and closes them, registers workflows, and
turns the commands (start, signal, cancel, retry, redeliver) into journal
writes and Runs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from contextlib import AsyncExitStack
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self

import anyio
import anyio.abc
import msgspec
from prometheus_client import CollectorRegistry

from journal import (
    FINISHED_STATUSES,
    Batch,
    DeadLetter,
    Journal,
    JournalUnavailableError,
    NewWorkflow,
    WorkflowNotFoundError,
    WorkflowRow,
)

from . import commands
from .acceptance import ACCEPTANCE_PATIENCE, Acceptance
from .actor import Run
from .clock import SYSTEM_CLOCK, Clock, new_id
from .cluster import ClusterSettings, LeaseManager, News, default_node_id, parse_wake
from .codec import to_json_value
from .commits import Committer, new_row
from .errors import OverloadedError, UnknownWorkflowTypeError
from .execution import Executor, WorkflowFn
from .metrics import RuntimeMetrics
from .partitions import partition_of
from .placement import Placement
from .policy import RestartPolicy
from .recovery import Recovery
from .retention import Pruner, RetentionSettings
from .versions import app_version
from .waiters import Waiters

__all__ = ["Runtime", "RuntimeStatistics", "WorkflowFn"]

# A graceful shutdown hands the leases over within this long, else they run out.
_LEAVE_TIMEOUT: Final = 5.0


class RuntimeStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one Runtime's load (`Runtime.statistics()`)."""

    active_actors: int
    mailbox_depth: int
    in_flight: int
    timers: int
    waiters: int
    ready: bool


class _LocalRouter:
    """A node's `commands.Router`: the Run a command asks for is queued here if this
    node owns the partition, else its owner is woken (Placement.deliver)."""

    def __init__(self, placement: Placement, recovery: Recovery, committer: Committer) -> None:
        self.owns = placement.owns
        self.deliver_command = placement.deliver_command
        self.drop_preloaded = recovery.drop_preloaded
        self.mark_cancelling = committer.mark_cancelling


class Runtime:
    """Hosts workflows on actors over a journal. Open it with `async with`.

    On open it joins the journal's nodes as `node_id` (default: RETINUE_NODE_ID,
    else host-pid), takes its share of the partitions (all of them when it is
    the only live node), recovers their unfinished workflows by replay and
    re-arms their durable timers; `runtime.cluster` keeps the share current
    every `heartbeat_interval` (see runtime/cluster.py). Commands are accepted
    for any partition; a workflow runs on its partition's owner, woken through
    the journal. On close it stops intake, gives in-flight messages `grace`
    seconds, hands its partitions over, then cancels what is left; abandoned
    steps are re-run (same idempotency key) by the next owner. `retention`
    (RetentionSettings: 7 days after a workflow finished, idempotency keys for
    24 h) is what `runtime.pruner` removes from the partitions it owns.
    `eager_start`: a new workflow with no id or key from the caller, for an idle
    actor here, is accepted by its run's first commit (runtime/acceptance.py).
    """

    # Test-only: True puts back the race the run fence was built for (a workflow
    # is not reserved while it is accepted, so catch-up or recovery may run it
    # first and its accepting Run then trusts a stale row). The simulation shows
    # that the journal catches it.
    trust_stale_rows = False

    _tg: anyio.abc.TaskGroup | None = None  # while open
    _stack: AsyncExitStack | None = None

    def __init__(
        self, journal: Journal, *, node_id: str | None = None, mailbox_size: int = 64,
        max_in_flight: int = 10_000, idle_timeout: float = 60.0,
        restart: RestartPolicy | None = None, grace: float = 5.0,
        registry: CollectorRegistry | None = None, heartbeat_interval: float | None = None,
        lease_ttl: float | None = None, clock: Clock = SYSTEM_CLOCK,
        new_id: Callable[[], str] = new_id, retention: RetentionSettings | None = None,
        eager_start: bool = True,
    ) -> None:
        self.journal, self.clock, self._new_id, self._grace = journal, clock, new_id, grace
        self.eager_start = eager_start
        self.node_id = node_id or default_node_id()
        self.metrics = metrics = RuntimeMetrics(registry or CollectorRegistry())
        self._workflows: dict[str, WorkflowFn] = {}
        self._parked_names: set[str] = set()  # gauge labels ever set, so they can read 0
        restart = restart or RestartPolicy()
        self._placement = placement = Placement(
            journal, clock, metrics, mailbox_size=mailbox_size, max_in_flight=max_in_flight,
            idle_timeout=idle_timeout, restart=restart)
        self._recovery = Recovery(journal, placement, metrics)
        self.cluster = LeaseManager(journal, self.node_id, ClusterSettings.from_env(
            heartbeat_interval, lease_ttl), self._recovery, metrics.registry, clock)
        self._waiters = Waiters(journal, placement.fresh, placement.scheduled,
                                placement.tell_watchers)
        self._committer = Committer(journal, clock, metrics, placement, self._waiters, self.cluster)
        self.cluster.on_journal = self._committer.journal_answered
        placement.host = Executor(self._committer, placement, self._recovery, self._waiters,
                                  self._workflows, new_id, restart, metrics)
        self.pruner = Pruner(journal, retention or RetentionSettings(), clock, self.owned,
                             metrics.registry)
        self._router = _LocalRouter(placement, self._recovery, self._committer)

    # -- registration -----------------------------------------------------------

    def register(self, fn: WorkflowFn, *, name: str | None = None) -> WorkflowFn:
        """Make `fn(ctx, input)` startable as workflow `name` (default: its __name__)."""
        self._workflows[name or fn.__name__] = fn
        self._committer.app_version = app_version(self._workflows)
        return fn

    @property
    def workflows(self) -> Mapping[str, WorkflowFn]:
        """The registered workflows by name (read-only): what `replay_check` replays."""
        return MappingProxyType(self._workflows)

    @property
    def app_version(self) -> str:
        """The application version this runtime stamps on what it writes:
        RETINUE_APP_VERSION, else a hash of the registered workflows' code."""
        return self._committer.app_version

    async def count_parked(self) -> dict[str, int]:
        """Parked workflows by name, from the journal; also sets the
        retinue_workflows_parked gauge: every registered workflow and every name
        once seen parked has a sample, 0 when none is (an alert can say `== 0`)."""
        counts = await self.journal.count_parked()
        self._parked_names |= set(counts) | set(self._workflows)
        gauge = self.metrics.workflows_parked
        for name in self._parked_names:
            gauge.labels(name).set(counts.get(name, 0))
        return counts

    # -- life cycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._stack = AsyncExitStack()
        await self._stack.__aenter__()
        try:
            self._tg = await self._stack.enter_async_context(anyio.create_task_group())
            await self._placement.start(self._tg)
            await self._tg.start(self.journal.serve_node, self.node_id, self._on_wake)
            await self.cluster.join()
            await self._tg.start(self.cluster.run)
            await self._tg.start(self.pruner.run)
        except BaseException:
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            await self._stack.__aexit__(None, None, None)
            raise
        self._committer.set_accepting(True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._committer.set_accepting(False)
        assert self._tg is not None and self._stack is not None
        try:
            if exc is None:
                await self._hand_over()
        finally:
            # Always: whatever the hand-over raised, the task group must be left,
            # else its cancel scope stays open under the caller (the simulation
            # found it: a node killed while it handed its partitions over).
            self._tg.cancel_scope.cancel()
            suppress = await self._stack.__aexit__(exc_type, exc, tb)
        return suppress

    async def _hand_over(self) -> None:
        """Graceful stop: let running messages finish (`grace` s), then hand the
        partitions over."""
        with anyio.move_on_after(self._grace, shield=True):
            # Polled: shutdown is rare, and an "all idle" event would cost
            # every message a check.
            while self._placement.busy():  # noqa: ASYNC110
                await anyio.sleep(0.01)
        self.cluster.stop()
        with anyio.move_on_after(_LEAVE_TIMEOUT, shield=True):
            await self.cluster.leave()

    # -- partitions (the ClusterHost is Recovery; these stay public) ----------------

    def owned(self) -> Mapping[int, int]:
        """{partition: epoch} of the partitions this node owns now."""
        return self._recovery.owned()

    async def partitions_acquired(self, epochs: Mapping[int, int]) -> None:
        """Own `epochs` and recover them (see Recovery.partitions_acquired)."""
        await self._recovery.partitions_acquired(epochs)

    def stop_partitions(self, partitions: Collection[int]) -> None:
        """Forget `partitions` and stop their actors now; queued messages are dropped
        (their workflows are the new owner's to resume)."""
        self._recovery.stop_partitions(partitions)

    async def catch_up(self) -> None:
        """Queue the work of owned partitions that a lost wake-up may have hidden."""
        await self._recovery.catch_up()

    def _on_wake(self, payload: str) -> None:
        """A wake-up from another node (or a rebalance): run the workflow if it is ours."""
        wake = parse_wake(payload)
        if wake is None:
            self.cluster.kick()
        elif isinstance(wake, News):
            self._waiters.news(wake)
        elif self._placement.owns(wake.actor_key):
            if wake.watched:
                self._placement.watch(wake.workflow_id)
            # Another node changed it (a cancel, a signal): what recovery read is stale.
            self._recovery.drop_preloaded(wake.workflow_id)
            self._placement.deliver(wake.actor_key, Run(workflow_id=wake.workflow_id))

    # -- commands -----------------------------------------------------------------

    async def start_workflow(
        self,
        name: str,
        input: Any,
        *,
        actor_key: str,
        workflow_id: str | None = None,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        trace_id: str | None = None,
    ) -> tuple[WorkflowRow, bool]:
        """Accept a workflow durably and queue it on its actor; (row, created).

        Raises OverloadedError (nothing written) past the in-flight or mailbox
        bound. With an existing id or idempotency key, returns that workflow
        with created=False and starts nothing new (a pending one is queued again)."""
        if name not in self._workflows:
            raise UnknownWorkflowTypeError(name, list(self._workflows))
        self._check_capacity(actor_key)
        # No id or key from the caller: no other start can name this workflow.
        unnamed = workflow_id is None and idempotency_key is None
        new = NewWorkflow(
            id=workflow_id or self._new_id(),
            name=name,
            actor_key=actor_key,
            partition=partition_of(actor_key),
            input=to_json_value(input),
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            trace_id=trace_id or self._new_id(),
            app_version=self.app_version,
        )
        if unnamed and self._starts_eagerly(actor_key):
            row = await self._start_eagerly(new)
            if row is not None:
                return row, True
            # Its Run ended, or left this node, before its first commit landed:
            # accept it the plain way (the insert is a no-op if a cancelled commit
            # landed after all; then the run fence sends the new Run to the history).
        return await self._start(new, fresh_id=workflow_id is None)

    def _starts_eagerly(self, actor_key: str) -> bool:
        # The test-only race of `trust_stale_rows` is the plain path's.
        return (self.eager_start and not self.trust_stale_rows
                and self._placement.can_start_at_once(actor_key))

    async def _start_eagerly(self, new: NewWorkflow) -> WorkflowRow | None:
        """Queue the Run of `new` at once; its first commit accepts it (see
        runtime.acceptance). The row once that landed; None if the Run abandoned it."""
        reserved = self._placement.admit(new.id, reserve=True)
        row = new_row(new, self.clock.now())
        acceptance = Acceptance(new)
        # From here the Run holds the in-flight count: it gives it back when it
        # ends, however this caller's wait ends.
        self._placement.accepted(new.actor_key, row, reserved, trusted=True,
                                 acceptance=acceptance)
        with anyio.move_on_after(ACCEPTANCE_PATIENCE):
            if not await acceptance.answer():
                return None
            self.metrics.workflows_started.labels(new.name).inc()
            return row
        # The run has not committed yet (slow code before its first commit): accept
        # it here, as the plain path does; the run's first commit then claims it.
        await self._accept(new, fresh_id=True)
        if acceptance.abandoned:  # its Run left meanwhile, for this caller to queue
            self._placement.deliver(new.actor_key, Run(workflow_id=new.id))
        acceptance.land()
        self.metrics.workflows_started.labels(new.name).inc()
        return row

    async def _start(self, new: NewWorkflow, *, fresh_id: bool) -> tuple[WorkflowRow, bool]:
        """Accept `new` with a commit of its own, then queue its Run."""
        # Reserved before it commits: catch-up or recovery, seeing it pending in
        # between, must not run it first (its Run below then trusts a stale row).
        reserved = self._placement.admit(new.id, reserve=not self.trust_stale_rows)
        # The reservation covers this node only: the row is news only if this node
        # owned the partition, at one epoch, from before the commit to the delivery
        # (else another node may have run the workflow meanwhile; simulation seed 27).
        epoch = self._placement.epochs.get(new.partition)
        try:
            row, created = await self._accept(new, fresh_id=fresh_id)
        except BaseException:
            self._placement.withdraw(new.id, reserved)
            raise
        if not created:
            self._placement.withdraw(new.id, reserved)
            if row.status == "pending":
                # Its first acceptance may have committed with the answer lost (the
                # caller saw an outage and sent it again): then nobody queued it.
                self._placement.deliver(row.actor_key, Run(workflow_id=row.id))
            return row, False
        self.metrics.workflows_started.labels(new.name).inc()
        fresh = self.trust_stale_rows or (
            epoch is not None and self._placement.epochs.get(new.partition) == epoch
        )
        self._placement.accepted(new.actor_key, row, reserved, trusted=fresh)
        return row, True

    async def _accept(self, new: NewWorkflow, *, fresh_id: bool) -> tuple[WorkflowRow, bool]:
        if not fresh_id or new.idempotency_key is not None:
            expired = self.pruner.settings.key_expired_before(self.clock.now())
            return await self.journal.create_workflow(new, key_expired_before=expired)
        # A fresh random id cannot collide: a plain (group-committed) append will do.
        try:
            await self.journal.append(Batch(partition=new.partition, epoch=None, workflows=(new,)))
        except JournalUnavailableError:
            # The commit may have landed with only its answer lost: read, not assume.
            row = await self.journal.get_workflow(new.id)
            if row is None:
                raise
            return row, True
        return new_row(new, self.clock.now()), True

    def _check_open(self) -> None:
        if not self._committer.accepting:
            raise OverloadedError("the runtime is not accepting work (starting or stopping)")

    def _check_capacity(self, actor_key: str | None = None) -> None:
        """Refuse a command (OverloadedError, before anything is journaled) past the
        in-flight bound, the bound on wake-ups waiting to be sent, or a full mailbox."""
        self._check_open()
        self._placement.check_room(actor_key)

    async def signal(self, workflow_id: str, name: str, payload: Any = None) -> None:
        """Store a signal durably, then wake its workflow. Raises WorkflowNotFoundError,
        and OverloadedError (nothing stored) past a bound."""
        self._check_open()
        row = await self.journal.get_workflow(workflow_id)
        if row is None:
            raise WorkflowNotFoundError(workflow_id)
        self._check_capacity(row.actor_key)
        await self.journal.send_signal(workflow_id, name, to_json_value(payload))
        if row.status not in FINISHED_STATUSES:
            self._placement.deliver_command(row.actor_key, workflow_id)

    async def cancel(self, workflow_id: str) -> list[str]:
        """Cancel a workflow and its children at their next step boundary.
        Raises OverloadedError (nothing written) past the in-flight bound."""
        self._check_capacity()
        return await commands.cancel(self.journal, self._router, workflow_id)

    async def retry(self, workflow_id: str) -> None:
        """Resume a failed workflow from its failed step, or run a parked one again
        with the code deployed now; earlier steps are not re-run.
        Raises OverloadedError (nothing written) past the in-flight bound."""
        self._check_capacity()
        await commands.retry(self.journal, self._router, workflow_id)

    async def fork(
        self, workflow_id: str, from_seq: int, *, idempotency_key: str | None = None,
        request_hash: str | None = None,
    ) -> tuple[WorkflowRow, bool]:
        """Start a new workflow from a finished (or parked) one: the same name,
        input and actor key, with the original's completed steps before `from_seq`
        kept (they do not run again), linked both ways (`forked_from`,
        `Journal.forks`). Accepted like a new workflow and run by its partition's
        owner. Returns (row, created); with a used `idempotency_key`, that fork
        and created=False. Raises WorkflowNotFoundError, UnknownWorkflowTypeError,
        InvalidTransitionError (not finished or parked: cancel it first),
        InvalidForkError (from_seq outside 1..last seq + 1), and OverloadedError
        (nothing written) past a bound."""
        self._check_open()
        original = await self.journal.get_workflow(workflow_id)
        if original is None:
            raise WorkflowNotFoundError(workflow_id)
        if original.name not in self._workflows:
            raise UnknownWorkflowTypeError(original.name, list(self._workflows))
        self._check_capacity(original.actor_key)
        new_id = self._new_id()
        reserved = self._placement.admit(new_id, reserve=True)
        try:
            row, created = await self.journal.fork_workflow(
                workflow_id, from_seq, new_id, idempotency_key=idempotency_key,
                request_hash=request_hash, trace_id=self._new_id(),
            )
        except BaseException:
            self._placement.withdraw(new_id, reserved)
            raise
        if not created:
            self._placement.withdraw(new_id, reserved)
            if row.status == "pending":  # as in start_workflow: its queueing may be lost
                self._placement.deliver(row.actor_key, Run(workflow_id=row.id))
            return row, False
        self.metrics.workflows_started.labels(row.name).inc()
        # Never trusted: its first Run must read the copied steps from the journal.
        self._placement.accepted(row.actor_key, row, reserved, trusted=False)
        return row, True

    async def redeliver(self, letter_id: int) -> DeadLetter | None:
        """Send a dead letter's message to its actor again; None if unknown or taken.
        Raises OverloadedError (nothing written) past the in-flight bound."""
        self._check_capacity()
        return await commands.redeliver(self.journal, self._router, letter_id)

    async def wait_for_event(self, workflow_id: str, key: str, timeout: float) -> tuple[bool, Any]:
        """(found, value) of the workflow's event `key`, waiting up to `timeout` s.

        One accepted here and not ended is answered from memory; one running on
        another node is polled for in the journal. Only the first look at the
        journal raises JournalUnavailableError; later ones count as "not yet"."""
        return await self._waiters.wait_for_event(workflow_id, key, timeout)

    async def wait_for_finish(self, workflow_id: str, timeout: float) -> WorkflowRow | None:
        """The workflow's row once it has finished, or None after `timeout` s."""
        return await self._waiters.wait_for_finish(workflow_id, timeout)

    async def wait_for_outcome(
        self, workflow_id: str, key: str, timeout: float
    ) -> tuple[bool, Any, WorkflowRow | None]:
        """Wait up to `timeout` s for the workflow's event `key`, or for its end
        (then it will never publish it): (found, value, the row if it ended without
        publishing). Cancellable."""
        return await self._waiters.wait_for_outcome(workflow_id, key, timeout)

    @property
    def ready(self) -> bool:
        """True once recovered, while the journal is reachable and not stopping."""
        return self._committer.ready

    def statistics(self) -> RuntimeStatistics:
        return RuntimeStatistics(
            active_actors=len(self._placement.actors),
            mailbox_depth=self._placement.mailbox_depth(),
            in_flight=self._placement.in_flight,
            timers=len(self._placement.timers),
            waiters=len(self._waiters),
            ready=self._committer.ready,
        )

    def actors(self) -> list[tuple[str, int, str | None]]:
        """(key, mailbox depth, workflow being run) of every active actor."""
        return [(a.key, a.depth(), a.current) for a in self._placement.actors.values()]

    def add_finish_listener(self, listener: Callable[[WorkflowRow], None]) -> None:
        """Call `listener(row)` each time a workflow ends here, after its end is
        committed (tracing exports it). It must not block or raise."""
        self._waiters.add_finish_listener(listener)
