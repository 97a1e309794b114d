"""The Runtime: actors by key, workflows on them, recovery, timers and signals."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterator, Mapping
from contextlib import AsyncExitStack, contextmanager
from contextvars import ContextVar
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import anyio
import anyio.abc
import msgspec
from prometheus_client import CollectorRegistry

from journal import (
    FINISHED_STATUSES,
    Batch,
    DeadLetter,
    FencedError,
    Journal,
    JournalUnavailableError,
    NewWorkflow,
    StaleRunError,
    StatusChange,
    StepRecord,
    WorkflowNotFoundError,
    WorkflowRow,
)

from .actor import Actor, ActorHost, Run
from .clock import SYSTEM_CLOCK, Clock, new_id
from .cluster import (
    ClusterHost,
    ClusterSettings,
    LeaseManager,
    News,
    PartitionLost,
    default_node_id,
    news_payload,
    parse_wake,
    wake_payload,
)
from .codec import from_json_value, input_type_of, to_json_value
from .context import RunHost, Suspended, WorkflowContext
from .errors import (
    NonDeterminismError,
    OverloadedError,
    RunSuperseded,
    StepFailedError,
    UnknownWorkflowTypeError,
    WorkflowCancelledError,
)
from .metrics import RuntimeMetrics
from .partitions import partition_of
from .policy import RestartPolicy
from .timers import TimerService

__all__ = ["Runtime", "RuntimeStatistics", "WorkflowFn"]

_log = logging.getLogger("retinue.runtime")

WorkflowFn = Callable[[WorkflowContext, Any], Awaitable[Any]]

# Waiting on a workflow that another node runs: its owner sends news of its
# events and end, and the journal is polled meanwhile, every 20 ms at first,
# then less often, up to every 250 ms. One that runs here wakes its waiters from
# memory; they look again every half second, in case its partition moved.
_POLL_FIRST: Final = 0.02
_POLL_MAX: Final = 0.25
# Recovery reads the histories of this many workflows per query.
_PRELOAD_CHUNK: Final = 1000
_RECHECK: Final = 0.5
# A graceful shutdown hands the leases over within this long, else they run out.
_LEAVE_TIMEOUT: Final = 5.0
# A run the journal refused (another run moved the workflow on) reloads and goes
# on from the journal; this many times in one message at most, then it crashes
# (the supervisor's backoff, then the dead letters: something is badly wrong).
_RELOADS: Final = 3

# The actor whose message is being handled, in its task: its writes carry the
# epoch it was started under, never a newer one its partition got since.
_current_actor: ContextVar[Actor] = ContextVar("retinue_current_actor")


class RuntimeStatistics(msgspec.Struct, frozen=True, kw_only=True):
    active_actors: int
    mailbox_depth: int
    in_flight: int
    timers: int
    waiters: int
    ready: bool


def _new_row(new: NewWorkflow, now: datetime) -> WorkflowRow:
    """The row of a workflow this runtime has just written, without reading it back."""
    return WorkflowRow(
        id=new.id, name=new.name, actor_key=new.actor_key, partition=new.partition,
        status="pending", input=new.input, idempotency_key=new.idempotency_key,
        request_hash=new.request_hash, parent_id=new.parent_id, trace_id=new.trace_id,
        created_at=now, updated_at=now,
    )


class _Waiter:
    """Callers waiting for one thing (an event, an end); `value` is what came, once
    `came`. An `event` set without `came` is news from another node: look again."""

    __slots__ = ("event", "value", "waiting", "came")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.value: Any = None
        self.waiting = 0
        self.came = False


_K = TypeVar("_K")
_T = TypeVar("_T")


@contextmanager
def _waiting(table: dict[_K, _Waiter], key: _K) -> Iterator[_Waiter]:
    """Join (or create) the waiter for `key`; the last caller to leave removes it."""
    waiter = table.get(key)
    if waiter is None:
        waiter = table[key] = _Waiter()
    waiter.waiting += 1
    try:
        yield waiter
    finally:
        waiter.waiting -= 1
        if waiter.waiting == 0 and table.get(key) is waiter:
            del table[key]


@contextmanager
def _unless_first(first: bool) -> Iterator[None]:
    """A look at the journal while waiting: an outage fails the first one only."""
    try:
        yield
    except JournalUnavailableError:
        if first:
            raise


def _wake(table: dict[_K, _Waiter], key: _K, value: Any) -> None:
    waiter = table.pop(key, None)
    if waiter is not None:
        waiter.value = value
        waiter.came = True
        waiter.event.set()


class Runtime(ActorHost, RunHost, ClusterHost):
    """Hosts workflows on actors over a journal. Open it with `async with`.

    On open it joins the journal's nodes as `node_id` (default: RETINUE_NODE_ID,
    else host-pid), takes its share of the partitions (all of them when it is
    the only live node), recovers their unfinished workflows by replay and
    re-arms their durable timers; `runtime.cluster` keeps the share current
    every `heartbeat_interval` (see runtime/cluster.py). Commands are accepted
    for any partition; a workflow runs on its partition's owner, woken through
    the journal. On close it stops intake, gives in-flight messages `grace`
    seconds, hands its partitions over, then cancels what is left; abandoned
    steps are re-run (same idempotency key) by the next owner.
    """

    # Test-only: True puts back the race the run fence was built for (a workflow
    # is not reserved while it is accepted, so catch-up or recovery may run it
    # first and its accepting Run then trusts a stale row). The simulation shows
    # that the journal catches it.
    trust_stale_rows = False

    def __init__(
        self,
        journal: Journal,
        *,
        node_id: str | None = None,
        mailbox_size: int = 64,
        max_in_flight: int = 10_000,
        idle_timeout: float = 60.0,
        restart: RestartPolicy | None = None,
        grace: float = 5.0,
        registry: CollectorRegistry | None = None,
        heartbeat_interval: float | None = None,
        lease_ttl: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
        new_id: Callable[[], str] = new_id,
    ) -> None:
        self.journal = journal
        self.clock = clock
        self._new_id = new_id
        self.node_id = node_id or default_node_id()
        self.metrics = RuntimeMetrics(registry or CollectorRegistry())
        self.metrics.watch(lambda: len(self._actors), self._mailbox_depth)
        self._mailbox_size = mailbox_size
        self._max_in_flight = max_in_flight
        self._idle_timeout = idle_timeout
        self._restart = restart or RestartPolicy()
        self._grace = grace
        self._workflows: dict[str, WorkflowFn] = {}
        self._actors: dict[str, Actor] = {}
        self._epochs: dict[int, int] = {}  # owned partitions only
        # One Run per workflow at a time here: the workflows with a Run queued or
        # being handled (or being accepted, so none is queued before its first),
        # each with "run it again afterwards" (a signal, a cancel came meanwhile).
        self._scheduled: dict[str, bool] = {}
        # Workflows run here for a command another node took: it waits for news.
        self._watched: set[str] = set()
        self._signals_seen = 0
        # Wake-ups for other nodes, sent in bunches by one task (`_send_wakes`);
        # bounded by the in-flight bound at the edge.
        self._wakes: list[str] = []
        self._wakes_posted = anyio.Event()
        self.cluster = LeaseManager(
            journal, self.node_id, ClusterSettings.from_env(heartbeat_interval, lease_ttl),
            self, self.metrics.registry, clock,
        )
        self._in_flight = 0
        self._cancelling: set[str] = set()
        self._event_waiters: dict[tuple[str, str], _Waiter] = {}
        self._finish_waiters: dict[str, _Waiter] = {}
        # Workflows accepted here whose first run has not ended, with the events
        # they published so far: for them memory is the truth, and waiting for
        # their events or end needs no read of the journal.
        self._fresh: dict[str, dict[str, Any]] = {}
        # Rows and histories recovery read in bulk, for each workflow's next run;
        # what ran while recovery was reading is not preloaded (it would be stale).
        self._preloaded: dict[str, tuple[WorkflowRow, list[StepRecord]]] = {}
        self._recovery_reads = 0
        self._ran_during_recovery: set[str] = set()
        self._finish_listeners: list[Callable[[WorkflowRow], None]] = []
        self._timers = TimerService(self._timer_fired, clock)
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._accepting = False
        self._ready = False

    # -- registration -----------------------------------------------------------

    def register(self, fn: WorkflowFn, *, name: str | None = None) -> WorkflowFn:
        """Make `fn(ctx, input)` startable as workflow `name` (default: its __name__)."""
        self._workflows[name or fn.__name__] = fn
        return fn

    # -- life cycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._stack = AsyncExitStack()
        await self._stack.__aenter__()
        try:
            self._tg = await self._stack.enter_async_context(anyio.create_task_group())
            await self._tg.start(self._timers.run)
            await self._tg.start(self._passivate_idle)
            await self._tg.start(self._send_wakes)
            await self._tg.start(self.journal.serve_node, self.node_id, self._on_wake)
            await self.cluster.join()
            await self._tg.start(self.cluster.run)
        except BaseException:
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            await self._stack.__aexit__(None, None, None)
            raise
        self._accepting = True
        self._ready = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._accepting = False
        self._ready = False
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
            while self._busy():  # noqa: ASYNC110
                await anyio.sleep(0.01)
        self.cluster.stop()
        with anyio.move_on_after(_LEAVE_TIMEOUT, shield=True):
            await self.cluster.leave()

    def _busy(self) -> bool:
        return any(a.running for a in self._actors.values())

    # -- partitions (ClusterHost) -------------------------------------------------

    def owned(self) -> Mapping[int, int]:
        """{partition: epoch} of the partitions this node owns now."""
        return self._epochs

    async def partitions_acquired(self, epochs: Mapping[int, int]) -> None:
        """Own `epochs` and recover them: re-arm their timers, replay every
        unfinished workflow that is not waiting, and the waiting ones that have
        an unconsumed signal (stored just before a crash, it may not have woken
        its workflow) or a cancel request. A waiting workflow stays out of
        memory until its timer fires or a signal comes."""
        self._epochs.update(epochs)  # first: a wake-up that comes meanwhile is handled
        partitions = list(epochs)
        self._recovery_reads += 1
        try:
            await self._recover(partitions)
        except BaseException:
            # Not (wholly) recovered: owned they would stay idle, a running workflow
            # with them (catch-up looks for pending and signalled ones only). Dropped,
            # they are acquired and recovered again at the next heartbeat: the leases
            # are still ours. (Found by the simulation, seed 102.)
            self.stop_partitions(partitions)
            raise
        finally:
            self._recovery_reads -= 1
            if not self._recovery_reads:
                self._ran_during_recovery.clear()

    async def _recover(self, partitions: list[int]) -> None:
        waiting = await self.journal.waiting_steps(partitions)
        unfinished = await self.journal.unfinished_workflows(partitions, waiting=False)
        woken, _ = await self.journal.runnable_workflows(partitions, 0)
        unfinished += [row for row in woken if row.status == "waiting"]
        for timer in waiting:
            self._timers.set(timer.workflow_id, timer.actor_key, timer.fire_at)
        unfinished = [row for row in unfinished if row.id not in self._scheduled]
        for start in range(0, len(unfinished), _PRELOAD_CHUNK):
            await self._replay(unfinished[start:start + _PRELOAD_CHUNK])

    async def _replay(self, rows: list[WorkflowRow]) -> None:
        """Queue `rows` for replay with their histories read in one query, not two
        reads each when they run."""
        histories = await self.journal.load_histories([row.id for row in rows])
        for row in rows:
            # One that ran while we read has moved on: what we read is stale.
            if row.id not in self._ran_during_recovery:
                self._preloaded[row.id] = (row, histories[row.id])
            self.metrics.replays.inc()
            self._deliver(row.actor_key, Run(workflow_id=row.id))

    def stop_partitions(self, partitions: Collection[int]) -> None:
        """Forget `partitions` and stop their actors now; queued messages are dropped
        (their workflows are the new owner's to resume)."""
        gone = set(partitions)
        for partition in gone:
            self._epochs.pop(partition, None)
        for workflow_id in [w for w, (row, _) in self._preloaded.items()
                            if row.partition in gone]:
            del self._preloaded[workflow_id]
        for key, actor in list(self._actors.items()):
            if partition_of(key) in gone:
                del self._actors[key]
                actor.stop()

    async def catch_up(self) -> None:
        """Queue the work of owned partitions that a lost wake-up may have hidden."""
        if not self._epochs:
            return
        rows, self._signals_seen = await self.journal.runnable_workflows(
            list(self._epochs), self._signals_seen
        )
        for row in rows:
            if row.id not in self._scheduled:
                self._deliver(row.actor_key, Run(workflow_id=row.id))

    def _on_wake(self, payload: str) -> None:
        """A wake-up from another node (or a rebalance): run the workflow if it is ours."""
        wake = parse_wake(payload)
        if wake is None:
            self.cluster.kick()
        elif isinstance(wake, News):
            self._news(wake)
        elif partition_of(wake.actor_key) in self._epochs:
            if wake.watched:
                self._watched.add(wake.workflow_id)
            # Another node changed it (a cancel, a signal): what recovery read is stale.
            self._preloaded.pop(wake.workflow_id, None)
            self._deliver(wake.actor_key, Run(workflow_id=wake.workflow_id))

    def _news(self, news: News) -> None:
        """Waiters here on a workflow another node runs: look at the journal now."""
        if news.key is None:
            waiter = self._finish_waiters.get(news.workflow_id)
        else:
            waiter = self._event_waiters.get((news.workflow_id, news.key))
        if waiter is not None:
            waiter.event.set()

    def _tell_watchers(self, workflow_id: str, key: str | None) -> None:
        if workflow_id in self._watched:
            self._post_wake(news_payload(workflow_id, key))

    def _post_wake(self, payload: str) -> None:
        """Send `payload` to the other nodes soon, with whatever else is waiting:
        one sender, one round trip per bunch, never a task per wake-up."""
        self._wakes.append(payload)
        self._wakes_posted.set()

    async def _send_wakes(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Send posted wake-ups until cancelled."""
        task_status.started()
        while True:
            await self._wakes_posted.wait()
            self._wakes_posted = anyio.Event()
            payloads, self._wakes = self._wakes, []
            try:
                await self.journal.wake(payloads)
            except JournalUnavailableError as exc:
                # Missed, they cost a poll: the owner's catch-up (a command) or the
                # waiter's next look at the journal (news) finds what they announced.
                _log.warning("could not send %d wake-ups: %s", len(payloads), exc)

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
        new = NewWorkflow(
            id=workflow_id or self._new_id(),
            name=name,
            actor_key=actor_key,
            partition=partition_of(actor_key),
            input=to_json_value(input),
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            trace_id=trace_id or self._new_id(),
        )
        self._in_flight += 1
        # Reserved before it commits: catch-up or recovery, seeing it pending in
        # between, must not run it first (its Run below then trusts a stale row).
        reserved = not self.trust_stale_rows and new.id not in self._scheduled
        if reserved:
            self._scheduled[new.id] = False
        # The reservation covers this node only: the row is news only if this node
        # owned the partition, at one epoch, from before the commit to the delivery
        # (else another node may have run the workflow meanwhile).
        epoch = self._epochs.get(new.partition)
        try:
            row, created = await self._accept(new, fresh_id=workflow_id is None)
        except BaseException:
            self._in_flight -= 1
            if reserved:
                self._scheduled.pop(new.id, None)
            raise
        if not created:
            self._in_flight -= 1
            if reserved:
                self._scheduled.pop(new.id, None)
            if row.status == "pending":
                # Its first acceptance may have committed with the answer lost (the
                # caller saw an outage and sent it again): then nobody queued it.
                self._deliver(row.actor_key, Run(workflow_id=row.id))
            return row, False
        self.metrics.workflows_started.labels(name).inc()
        self._fresh[row.id] = {}
        fresh = self.trust_stale_rows or (
            epoch is not None and self._epochs.get(new.partition) == epoch
        )
        self._deliver(actor_key, Run(workflow_id=row.id, row=row if fresh else None,
                                     external=True), watched=True, reserved=reserved)
        return row, True

    async def _accept(self, new: NewWorkflow, *, fresh_id: bool) -> tuple[WorkflowRow, bool]:
        if not fresh_id or new.idempotency_key is not None:
            return await self.journal.create_workflow(new)
        # A fresh random id cannot collide: a plain (group-committed) append will do.
        try:
            await self.journal.append(Batch(partition=new.partition, epoch=None, workflows=(new,)))
        except JournalUnavailableError:
            # The commit may have landed with only its answer lost: read, not assume.
            row = await self.journal.get_workflow(new.id)
            if row is None:
                raise
            return row, True
        return _new_row(new, self.clock.now()), True

    def _check_open(self) -> None:
        if not self._accepting:
            raise OverloadedError("the runtime is not accepting work (starting or stopping)")

    def _check_capacity(self, actor_key: str | None = None) -> None:
        """Refuse a command (OverloadedError, before anything is journaled) past the
        in-flight bound, the bound on wake-ups waiting to be sent, or a full mailbox."""
        self._check_open()
        if self._in_flight >= self._max_in_flight:
            raise OverloadedError(f"{self._in_flight} workflows are in flight (the bound)")
        if len(self._wakes) >= self._max_in_flight:
            raise OverloadedError(f"{len(self._wakes)} wake-ups for other nodes are waiting")
        if actor_key is None:
            return
        actor = self._actors.get(actor_key)
        if actor is not None and not actor.has_room():
            raise OverloadedError(f"the mailbox of {actor_key!r} is full")

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
            self._deliver_command(row.actor_key, workflow_id)

    def _deliver_command(self, actor_key: str, workflow_id: str) -> None:
        """Queue the Run a command asks for, counted against the in-flight bound
        until it has been handled (or sent to the partition's owner)."""
        self._in_flight += 1
        self._deliver(actor_key, Run(workflow_id=workflow_id, external=True), watched=True)

    async def cancel(self, workflow_id: str) -> list[str]:
        """Cancel a workflow and its children at their next step boundary.
        Raises OverloadedError (nothing written) past the in-flight bound."""
        self._check_capacity()
        ids = await self.journal.request_cancel(workflow_id)
        for cancelled_id in ids:
            self._preloaded.pop(cancelled_id, None)
        for cancelled_id in ids:
            self._cancelling.add(cancelled_id)
            row = await self.journal.get_workflow(cancelled_id)
            if row is not None:
                self._deliver_command(row.actor_key, cancelled_id)
        return ids

    async def retry(self, workflow_id: str) -> None:
        """Resume a failed workflow from its failed step; earlier steps are not re-run.
        Raises OverloadedError (nothing written) past the in-flight bound."""
        self._check_capacity()
        await self.journal.retry_workflow(workflow_id)
        self._preloaded.pop(workflow_id, None)
        row = await self.journal.get_workflow(workflow_id)
        assert row is not None
        self._deliver_command(row.actor_key, workflow_id)

    async def redeliver(self, letter_id: int) -> DeadLetter | None:
        """Send a dead letter's message to its actor again; None if unknown or taken.
        Raises OverloadedError (nothing written) past the in-flight bound."""
        self._check_capacity()
        letter = await self.journal.take_dead_letter(letter_id)
        if letter is None:
            return None
        workflow_id = letter.message["workflow_id"]
        row = await self.journal.get_workflow(workflow_id)
        if row is not None and row.status == "failed":
            await self.journal.retry_workflow(workflow_id)
        self._deliver_command(letter.actor_key, workflow_id)
        return letter

    async def wait_for_event(self, workflow_id: str, key: str, timeout: float) -> tuple[bool, Any]:
        """(found, value) of the workflow's event `key`, waiting up to `timeout` s.

        One accepted here and not ended is answered from memory; one running on
        another node is polled for in the journal. Only the first look at the
        journal raises JournalUnavailableError; later ones count as "not yet"."""
        with _waiting(self._event_waiters, (workflow_id, key)) as waiter, \
                anyio.move_on_after(timeout):
            poll, first = _POLL_FIRST, True
            while True:
                fresh = self._fresh.get(workflow_id)
                if fresh is not None and key in fresh:
                    return True, fresh[key]
                if fresh is None:
                    with _unless_first(first):
                        found, value = await self.journal.get_workflow_event(workflow_id, key)
                        if found:
                            return True, value
                if await self._nap(workflow_id, waiter, poll):
                    return True, waiter.value
                poll, first = min(poll * 1.5, _POLL_MAX), False
        return False, None

    async def wait_for_finish(self, workflow_id: str, timeout: float) -> WorkflowRow | None:
        """The workflow's row once it has finished, or None after `timeout` s."""
        with _waiting(self._finish_waiters, workflow_id) as waiter, \
                anyio.move_on_after(timeout):
            poll, first = _POLL_FIRST, True
            while True:
                if workflow_id not in self._fresh:
                    with _unless_first(first):
                        row = await self.journal.get_workflow(workflow_id)
                        if row is not None and row.status in FINISHED_STATUSES:
                            return row
                if await self._nap(workflow_id, waiter, poll):
                    finished: WorkflowRow = waiter.value
                    return finished
                poll, first = min(poll * 1.5, _POLL_MAX), False
        return None

    async def wait_for_outcome(
        self, workflow_id: str, key: str, timeout: float
    ) -> tuple[bool, Any, WorkflowRow | None]:
        """Wait up to `timeout` s for the workflow's event `key`, or for its end
        (then it will never publish it): (found, value, the row if it ended without
        publishing). Cancellable."""
        ended: WorkflowRow | None = None

        async def wait_event(scope: anyio.CancelScope) -> None:
            await self.wait_for_event(workflow_id, key, math.inf)
            scope.cancel()

        async def wait_end(scope: anyio.CancelScope) -> None:
            nonlocal ended
            ended = await self.wait_for_finish(workflow_id, math.inf)
            scope.cancel()

        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_event, tg.cancel_scope)
                tg.start_soon(wait_end, tg.cancel_scope)
        # Once more: the event may have landed as the workflow ended or time ran out.
        found, value = await self.journal.get_workflow_event(workflow_id, key)
        return found, value, None if found else ended

    async def _nap(self, workflow_id: str, waiter: _Waiter, poll: float) -> bool:
        """Wait for `waiter` a while: `poll` s, or longer if the workflow runs here
        (memory wakes its waiters then). True if it came."""
        here = workflow_id in self._fresh or workflow_id in self._scheduled
        with anyio.move_on_after(_RECHECK if here else poll):
            await waiter.event.wait()
        if waiter.came:
            return True
        if waiter.event.is_set():  # news: the next look at the journal finds it
            waiter.event = anyio.Event()
        return False

    @property
    def ready(self) -> bool:
        """True once recovered, while the journal is reachable and not stopping."""
        return self._ready

    def statistics(self) -> RuntimeStatistics:
        return RuntimeStatistics(
            active_actors=len(self._actors),
            mailbox_depth=self._mailbox_depth(),
            in_flight=self._in_flight,
            timers=len(self._timers),
            waiters=len(self._event_waiters) + len(self._finish_waiters),
            ready=self._ready,
        )

    def actors(self) -> list[tuple[str, int, str | None]]:
        """(key, mailbox depth, workflow being run) of every active actor."""
        return [(a.key, a.depth(), a.current) for a in self._actors.values()]

    def _mailbox_depth(self) -> int:
        return sum(actor.depth() for actor in self._actors.values())

    # -- delivery -------------------------------------------------------------------

    def _deliver(
        self, actor_key: str, message: Run, *, watched: bool = False, reserved: bool = False
    ) -> None:
        """Queue `message` on its actor if this node owns its partition; else wake
        the owner (in the background) and forget it here. `watched`: a caller
        here will wait for the workflow's events or end. One Run per workflow at a
        time: if one is queued or running (or the workflow is being accepted,
        unless this is that acceptance's own Run: `reserved`), it is run again
        once that one is done instead."""
        workflow_id = message.workflow_id
        if partition_of(actor_key) not in self._epochs:
            if reserved:
                self._scheduled.pop(workflow_id, None)
            self._send_to_owner(actor_key, message, watched)
            return
        if workflow_id in self._scheduled and not reserved:
            self._scheduled[workflow_id] = True
            if watched:
                self._watched.add(workflow_id)
            self._no_longer_here(message)
            return
        actor = self._actors.get(actor_key)
        if actor is None:
            actor = self._activate(actor_key)
        self._scheduled[workflow_id] = False
        try:
            actor.deliver_nowait(message)
        except anyio.WouldBlock:
            # Internal messages are never dropped: the work is durable and bounded
            # at the edge, so wait for room in the background.
            assert self._tg is not None
            self._tg.start_soon(self._deliver_later, actor, message)

    async def _deliver_later(self, actor: Actor, message: Run) -> None:
        try:
            await actor.deliver(message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.message_done(actor, message)  # it stopped: its partition moved

    def _send_to_owner(self, actor_key: str, message: Run, watched: bool) -> None:
        self._no_longer_here(message)  # it will not run here: not in flight here either
        assert self._tg is not None
        payload = wake_payload(actor_key, message.workflow_id, watched=watched)
        self._post_wake(payload)

    def _activate(self, actor_key: str) -> Actor:
        assert self._tg is not None
        actor = Actor(
            actor_key,
            self,
            mailbox_size=self._mailbox_size,
            restart=self._restart,
            unavailable_backoff=self._unavailable_backoff,
        )
        actor.epoch = self._epochs[partition_of(actor_key)]
        self._actors[actor_key] = actor
        return actor

    def spawn(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        assert self._tg is not None
        self._tg.start_soon(run)

    def monotonic(self) -> float:
        return self.clock.monotonic()

    async def _passivate_idle(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Sweep actors idle past `idle_timeout` out of memory, until cancelled.
        One sweep for all actors: an idle actor holds no task and no timer."""
        task_status.started()
        if self._idle_timeout <= 0:
            return
        while True:
            await anyio.sleep(max(self._idle_timeout / 4, 0.01))
            now = self.clock.monotonic()
            idle = [key for key, actor in self._actors.items()
                    if actor.idle_for(now) >= self._idle_timeout]
            for key in idle:
                del self._actors[key]
            self.metrics.passivations.inc(len(idle))

    def _timer_fired(self, workflow_id: str, actor_key: str) -> None:
        if partition_of(actor_key) in self._epochs:  # else its owner has it armed
            self._deliver(actor_key, Run(workflow_id=workflow_id))

    # -- ActorHost ----------------------------------------------------------------------

    async def execute(self, actor: Actor, message: Run) -> None:
        with self._acting_as(actor) as current:
            if current:
                await self._execute(message)

    @contextmanager
    def _acting_as(self, actor: Actor) -> Iterator[bool]:
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

    async def _execute(self, message: Run) -> None:
        # What recovery read is good for the workflow's first run only: that run
        # writes, and nothing else writes for a workflow between (one owner, one
        # actor, one message at a time); an operator's retry drops it.
        if self._recovery_reads:
            self._ran_during_recovery.add(message.workflow_id)
        preloaded = self._preloaded.pop(message.workflow_id, None)
        row: WorkflowRow | None
        if preloaded is not None:
            row, steps = preloaded
        else:
            row, steps = await self._load(message)
        for _ in range(_RELOADS):
            if row is None or row.status in FINISHED_STATUSES:
                return
            if row.cancel_requested:
                self._cancelling.add(row.id)
            try:
                await self._run_workflow(row, {step.seq: step for step in steps})
                return
            except RunSuperseded:
                # The journal refused this run: it was behind. Nothing it did was
                # written past that point; go on from what the journal holds.
                self.metrics.duplicate_runs.inc()
                _log.warning("workflow %s: a stale run was refused by the journal; "
                             "reloading it", message.workflow_id)
                row, steps = await self._load(Run(workflow_id=message.workflow_id))
        raise RuntimeError(
            f"workflow {message.workflow_id!r} was refused by the journal {_RELOADS} times "
            "in a row: another run keeps moving it on; look for two nodes running it"
        )

    async def _load(self, message: Run) -> tuple[WorkflowRow | None, list[StepRecord]]:
        if message.row is not None and message.row.status not in FINISHED_STATUSES:
            return message.row, []  # just written here, never run: no history
        row = await self.journal.get_workflow(message.workflow_id)
        if row is None or row.status in FINISHED_STATUSES:
            return row, []
        return row, await self.journal.load_steps(row.id)

    async def _run_workflow(self, row: WorkflowRow, history: dict[int, Any]) -> None:
        fn = self._workflows.get(row.name)
        if fn is None:
            raise UnknownWorkflowTypeError(row.name, list(self._workflows))
        ctx = WorkflowContext(self, row, history, self._new_id())
        workflow_input = from_json_value(row.input, input_type_of(fn))
        try:
            result = await fn(ctx, workflow_input)
        except Suspended:
            return
        except WorkflowCancelledError as exc:
            await self._finish(ctx, row, "cancelled", error=str(exc))
        except (StepFailedError, NonDeterminismError) as exc:
            await self._finish(ctx, row, "failed", error=str(exc))
        else:
            await self._finish(ctx, row, "completed", result=to_json_value(result))

    async def _finish(
        self, ctx: WorkflowContext, row: WorkflowRow, outcome: str, *,
        result: Any = None, error: str | None = None,
    ) -> None:
        await ctx.finish(outcome, result=result, error=error)
        self._cancelling.discard(row.id)
        self.metrics.workflows_finished.labels(row.name, outcome).inc()
        elapsed = (self.clock.now() - row.created_at).total_seconds()
        self.metrics.workflow_duration.labels(row.name).observe(max(elapsed, 0.0))
        self._finished(msgspec.structs.replace(
            row, status=outcome, result=result, error=error, updated_at=self.clock.now()
        ))

    def add_finish_listener(self, listener: Callable[[WorkflowRow], None]) -> None:
        """Call `listener(row)` each time a workflow ends here, after its end is
        committed (tracing exports it). It must not block or raise."""
        self._finish_listeners.append(listener)

    def _finished(self, row: WorkflowRow) -> None:
        _wake(self._finish_waiters, row.id, row)
        self._tell_watchers(row.id, None)
        for listener in self._finish_listeners:
            listener(row)

    async def dead_letter(self, actor: Actor, message: Run, error: BaseException) -> None:
        # The workflow is failed first, so that a redelivery of the letter always
        # finds it failed and can retry it.
        text = f"{type(error).__name__}: {error}"
        with self._acting_as(actor) as current:
            if not current:
                return  # its partition moved: the new owner replays the message
            await self._fail_dead_lettered(message, text)
            await self._outlasting(lambda: self.journal.add_dead_letter(
                actor.key, {"workflow_id": message.workflow_id}, text
            ))
            self.metrics.dead_letters.inc()

    async def _outlasting(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """`call()`, again and again (with backoff) while the database is away."""
        outages = 0
        while True:
            try:
                return await call()
            except JournalUnavailableError:
                outages += 1
                self.metrics.journal_unavailable.inc()
                await anyio.sleep(self._unavailable_backoff(outages))

    async def _fail_dead_lettered(self, message: Run, text: str) -> None:
        row = await self._outlasting(lambda: self.journal.get_workflow(message.workflow_id))
        if row is not None and row.status not in FINISHED_STATUSES:
            change = StatusChange(
                workflow_id=row.id, status="failed",
                error=f"dead-lettered after {self._restart.max_crashes} crashes: {text}",
            )
            try:
                await self.commit(
                    Batch(partition=row.partition, epoch=self.epoch_of(row.partition),
                          statuses=(change,))
                )
            except StaleRunError:
                return  # it finished meanwhile: nothing to fail
            self._finished(msgspec.structs.replace(row, status="failed", error=change.error))

    def actor_restarted(self, actor: Actor) -> None:
        self.metrics.actor_restarts.inc()

    def message_done(self, actor: Actor, message: Run) -> None:
        again = self._scheduled.pop(message.workflow_id, False)
        self._no_longer_here(message)
        if again:
            self._deliver(actor.key, Run(workflow_id=message.workflow_id))
        else:
            self._watched.discard(message.workflow_id)

    def _no_longer_here(self, message: Run) -> None:
        """An accepted command's message left this node (handled, or sent to its
        owner): it no longer counts against the in-flight bound here."""
        if message.external:
            self._in_flight -= 1
            self._fresh.pop(message.workflow_id, None)

    @staticmethod
    def _unavailable_backoff(outages: int) -> float:
        return float(min(2.0, 0.05 * 2 ** min(outages, 6)))

    # -- RunHost ------------------------------------------------------------------------

    async def commit(self, batch: Batch) -> None:
        """Append `batch`, waiting out a database outage (with backoff) meanwhile."""
        outages = 0
        while True:
            began = time.perf_counter()
            try:
                # Sent again after an outage, the very same batch is a no-op if its
                # first try landed with the answer lost: the journal makes it so.
                await self.journal.append(batch)
            except JournalUnavailableError:
                outages += 1
                self._ready = False
                self.metrics.journal_unavailable.inc()
                await anyio.sleep(self._unavailable_backoff(outages))
                continue
            except FencedError as exc:
                self._fenced(batch)
                raise PartitionLost(batch.partition) from exc
            except StaleRunError as exc:
                if batch.run is None:
                    raise
                raise RunSuperseded(batch.run.workflow_id) from exc
            self.metrics.journal_append.observe(time.perf_counter() - began)
            if not self._ready and self._accepting:
                # The journal answers again. Not only after this commit's own outage:
                # the commits that saw it may all have been fenced since (an outage
                # longer than the lease TTL moves every partition), and then only
                # the recovered runs' commits are left to say so.
                self._ready = True
            return

    def _fenced(self, batch: Batch) -> None:
        """The journal refused `batch`: another node owns its partition now."""
        self.cluster.metrics.fenced_appends.inc()
        if self._epochs.get(batch.partition) == batch.epoch:
            self.cluster.lost([batch.partition], f"an append at epoch {batch.epoch} was fenced")

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

    def cancel_requested(self, workflow_id: str) -> bool:
        return workflow_id in self._cancelling

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

    def child_started(self, child: NewWorkflow) -> None:
        self.metrics.workflows_started.labels(child.name).inc()
        # Queued without its row: the child reads its own history when it runs. A
        # parent replayed from a stale view could start it again (the insert is a
        # no-op then), and the child must not believe it has never run.
        self._deliver(child.actor_key, Run(workflow_id=child.id))

    def timer_set(self, workflow_id: str, actor_key: str, fire_at: datetime) -> None:
        self._timers.set(workflow_id, actor_key, fire_at)

    def event_published(self, workflow_id: str, key: str, value: Any) -> None:
        fresh = self._fresh.get(workflow_id)
        if fresh is not None:
            fresh[key] = value
        _wake(self._event_waiters, (workflow_id, key), value)
        self._tell_watchers(workflow_id, key)

    def step_finished(self, workflow: str, step: str, outcome: str, seconds: float) -> None:
        self.metrics.step_finished(workflow, step, outcome, seconds)
