"""Where messages go on this node: owned partitions, their actors, one Run per workflow."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Coroutine, Mapping
from typing import Any

import anyio
import anyio.abc

from journal import Journal, JournalUnavailableError, WorkflowRow

from .acceptance import Acceptance
from .actor import Actor, ActorHost, MailboxDepth, Run
from .clock import Clock
from .cluster import news_payload, wake_payload
from .errors import OverloadedError
from .metrics import RuntimeMetrics
from .partitions import partition_of
from .policy import RestartPolicy, unavailable_backoff
from .timers import TimerService

__all__ = ["Placement"]

_log = logging.getLogger("retinue.runtime")


class Placement:
    """Where messages go on this node.

    A Run is queued on its actor when this node owns the actor's partition, else
    the owner is woken; a workflow has one Run at a time here. Placement keeps
    the partitions owned and their epochs, the actors (activated by their first
    message, swept out when idle), the durable timers armed here, the commands
    accepted here and still in flight, and the wake-ups for other nodes (sent in
    bunches). `start` opens it in the Runtime's task group.

    Shared with the other collaborators and never rebound: `epochs`, `actors`,
    `scheduled`, `fresh`, `timers`.
    """

    def __init__(
        self,
        journal: Journal,
        clock: Clock,
        metrics: RuntimeMetrics,
        *,
        mailbox_size: int,
        max_in_flight: int,
        idle_timeout: float,
        restart: RestartPolicy,
    ) -> None:
        self._journal = journal
        self._clock = clock
        self._metrics = metrics
        self._mailbox_size = mailbox_size
        self._max_in_flight = max_in_flight
        self._idle_timeout = idle_timeout
        self._restart = restart
        # What the actors report to. Set once by the Runtime, before `start`: the
        # host hands finished messages back here, so it cannot be built before.
        self.host: ActorHost | None = None
        self.actors: dict[str, Actor] = {}
        self.epochs: dict[int, int] = {}  # owned partitions only
        # One Run per workflow at a time here: the workflows with a Run queued or
        # being handled (or being accepted, so none is queued before its first),
        # each with "run it again afterwards" (a signal, a cancel came meanwhile).
        self.scheduled: dict[str, bool] = {}
        # Workflows accepted here whose first run has not ended, with the events
        # they published so far: for them memory is the truth, and waiting for
        # their events or end needs no read of the journal.
        self.fresh: dict[str, dict[str, Any]] = {}
        # Commands accepted here whose message has not left this node (handled,
        # or sent to the partition's owner): what the in-flight bound counts.
        self.in_flight = 0
        # Workflows run here for a command another node took: it waits for news.
        self._watched: set[str] = set()
        # Wake-ups for other nodes, sent in bunches by one task (`_send_wakes`);
        # bounded by the in-flight bound at the edge.
        self._wakes: list[str] = []
        self._wakes_posted = anyio.Event()
        self.timers = TimerService(self._timer_fired, clock)
        self._tg: anyio.abc.TaskGroup | None = None
        self._depth = MailboxDepth()  # every actor of this node counts into it
        metrics.watch(lambda: len(self.actors), self.mailbox_depth)

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Run in `tg` from now on: the timers, the idle sweep, the wake-up sender."""
        self._tg = tg
        await tg.start(self.timers.run)
        await tg.start(self._passivate_idle)
        await tg.start(self._send_wakes)

    # -- partitions -----------------------------------------------------------------

    def own(self, epochs: Mapping[int, int]) -> None:
        """Own `epochs` {partition: epoch} from now on."""
        self.epochs.update(epochs)

    def owns(self, actor_key: str) -> bool:
        return partition_of(actor_key) in self.epochs

    def stop(self, partitions: Collection[int]) -> None:
        """Forget `partitions` and stop their actors now; queued messages are dropped
        (their workflows are the new owner's to resume)."""
        gone = set(partitions)
        for partition in gone:
            self.epochs.pop(partition, None)
        for key, actor in list(self.actors.items()):
            if partition_of(key) in gone:
                del self.actors[key]
                actor.stop()

    # -- accepted commands -----------------------------------------------------------

    def check_room(self, actor_key: str | None) -> None:
        """Raise OverloadedError past the in-flight bound, the bound on wake-ups
        waiting to be sent, or if the mailbox of `actor_key` is full."""
        if self.in_flight >= self._max_in_flight:
            raise OverloadedError(f"{self.in_flight} workflows are in flight (the bound)")
        if len(self._wakes) >= self._max_in_flight:
            raise OverloadedError(f"{len(self._wakes)} wake-ups for other nodes are waiting")
        if actor_key is None:
            return
        actor = self.actors.get(actor_key)
        if actor is not None and not actor.has_room():
            raise OverloadedError(f"the mailbox of {actor_key!r} is full")

    def admit(self, workflow_id: str, *, reserve: bool) -> bool:
        """Count a workflow being accepted in flight and, with `reserve`, reserve it
        (unless it is scheduled already): then no other Run is queued before the
        acceptance's own. True if it was reserved; `withdraw` undoes both."""
        self.in_flight += 1
        reserved = reserve and workflow_id not in self.scheduled
        if reserved:
            self.scheduled[workflow_id] = False
        return reserved

    def withdraw(self, workflow_id: str, reserved: bool) -> None:
        """The workflow `admit`ted was not accepted here (an error, or it existed)."""
        self.in_flight -= 1
        if reserved:
            self.scheduled.pop(workflow_id, None)

    def accepted(
        self, actor_key: str, row: WorkflowRow, reserved: bool, *, trusted: bool,
        acceptance: Acceptance | None = None,
    ) -> None:
        """Queue the first Run of a workflow just accepted here (`admit`ted); it
        carries the row (no reads to start it) only if that is `trusted` news.
        With `acceptance`, the workflow is not in the journal yet: its Run's first
        commit accepts it (eager start; see runtime.acceptance)."""
        self.fresh[row.id] = {}
        run = Run(workflow_id=row.id, row=row if trusted else None, external=True,
                  acceptance=acceptance)
        self.deliver(actor_key, run, watched=True, reserved=reserved)

    def can_start_at_once(self, actor_key: str) -> bool:
        """A new workflow of `actor_key` may start running at once (eager start):
        this node owns the partition, and the actor has nothing to do (a busy one
        would keep the caller waiting for its acceptance behind other work)."""
        if partition_of(actor_key) not in self.epochs:
            return False
        actor = self.actors.get(actor_key)
        return actor is None or not actor.has_work()

    def deliver_command(self, actor_key: str, workflow_id: str) -> None:
        """Queue the Run a command asks for, counted against the in-flight bound
        until it has been handled (or sent to the partition's owner)."""
        self.in_flight += 1
        self.deliver(actor_key, Run(workflow_id=workflow_id, external=True), watched=True)

    # -- delivery -------------------------------------------------------------------

    def deliver(
        self, actor_key: str, message: Run, *, watched: bool = False, reserved: bool = False
    ) -> None:
        """Queue `message` on its actor if this node owns its partition; else wake
        the owner (in the background) and forget it here. `watched`: a caller
        here waits for the workflow's events or end, so a wake-up sent to another
        owner asks it for news (a Run kept here needs none: memory wakes local
        waiters; `watch` registers callers on other nodes). One Run per workflow
        at a time: if one is queued or running (or the workflow is being accepted,
        unless this is that acceptance's own Run: `reserved`), it is run again
        once that one is done instead."""
        workflow_id = message.workflow_id
        if partition_of(actor_key) not in self.epochs:
            if reserved:
                self.scheduled.pop(workflow_id, None)
            self._send_to_owner(actor_key, message, watched)
            return
        if workflow_id in self.scheduled and not reserved:
            self.scheduled[workflow_id] = True
            self._no_longer_here(message)
            return
        actor = self.actors.get(actor_key)
        if actor is None:
            actor = self._activate(actor_key)
        self.scheduled[workflow_id] = False
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
        payload = wake_payload(actor_key, message.workflow_id, watched=watched)
        self._post_wake(payload)

    def message_done(self, actor: Actor, message: Run) -> None:
        """`message` was handled, or dropped because its actor stopped."""
        again = self.scheduled.pop(message.workflow_id, False)
        self._no_longer_here(message)
        if again:
            self.deliver(actor.key, Run(workflow_id=message.workflow_id))
        else:
            self._watched.discard(message.workflow_id)

    def _no_longer_here(self, message: Run) -> None:
        """An accepted command's message left this node (handled, or sent to its
        owner): it no longer counts against the in-flight bound here."""
        if message.external:
            self.in_flight -= 1
            self.fresh.pop(message.workflow_id, None)
            if message.acceptance is not None:
                message.acceptance.abandon()  # its caller accepts it plainly; no-op if landed

    def _timer_fired(self, workflow_id: str, actor_key: str) -> None:
        if partition_of(actor_key) in self.epochs:  # else its owner has it armed
            self.deliver(actor_key, Run(workflow_id=workflow_id))

    # -- actors -----------------------------------------------------------------------

    def _activate(self, actor_key: str) -> Actor:
        assert self._tg is not None and self.host is not None
        actor = Actor(
            actor_key,
            self.host,
            mailbox_size=self._mailbox_size,
            restart=self._restart,
            unavailable_backoff=unavailable_backoff,
            depth=self._depth,
        )
        actor.epoch = self.epochs[partition_of(actor_key)]
        self.actors[actor_key] = actor
        return actor

    def spawn(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start an actor's task in the Runtime's task group."""
        assert self._tg is not None
        self._tg.start_soon(run)

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
            now = self._clock.monotonic()
            idle = [key for key, actor in self.actors.items()
                    if actor.idle_for(now) >= self._idle_timeout]
            for key in idle:
                del self.actors[key]
            self._metrics.passivations.inc(len(idle))

    def busy(self) -> bool:
        """True while an actor has work."""
        return any(a.running for a in self.actors.values())

    def mailbox_depth(self) -> int:
        return self._depth.messages

    # -- wake-ups for other nodes -------------------------------------------------------

    def watch(self, workflow_id: str) -> None:
        """A caller on another node waits for the workflow's events or end."""
        self._watched.add(workflow_id)

    def tell_watchers(self, workflow_id: str, key: str | None) -> None:
        """News of the workflow's event `key` (None: its end) to the nodes waiting."""
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
                await self._journal.wake(payloads)
            except JournalUnavailableError as exc:
                # Missed, they cost a poll: the owner's catch-up (a command) or the
                # waiter's next look at the journal (news) finds what they announced.
                _log.warning("could not send %d wake-ups: %s", len(payloads), exc)
