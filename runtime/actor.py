"""An actor: a bounded mailbox, one message at a time, and its supervisor.

Every message names a workflow to run (or resume) on this actor. An actor has a
task only while it has work: the first message starts one, and it ends when the
mailbox is empty, so an idle actor is a small object in a dict (the runtime
sweeps those idle past `idle_timeout` out of memory: passivation). The
supervisor restarts the actor after a crash with exponential backoff; a message
that crashes it `max_crashes` times in a row goes to the dead letters and the
actor carries on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import msgspec

from journal import JournalUnavailableError, WorkflowRow

from .acceptance import Acceptance
from .policy import RestartPolicy

__all__ = ["Actor", "MailboxDepth", "Run"]

_log = logging.getLogger("retinue.actor")


class Run(msgspec.Struct, frozen=True, kw_only=True):
    """Run (or resume) a workflow on its actor. `row` spares a read for a new one."""

    workflow_id: str
    row: WorkflowRow | None = None
    external: bool = False  # counted against the runtime's in-flight bound
    # A new workflow accepted by its first commit (eager start), until that lands.
    acceptance: Acceptance | None = None

    def for_retry(self) -> Run:
        """This message, to handle again after a failed attempt. The attempt may
        have journaled steps, so the retry replays them (a row handed in stands for
        an empty history), unless its acceptance has not landed: then nothing of
        the workflow is journaled, and the row is all there is."""
        if self.row is None or (self.acceptance is not None and not self.acceptance.landed):
            return self
        return msgspec.structs.replace(self, row=None)


class MailboxDepth:
    """Messages queued in all of a node's mailboxes, kept as they come and go, so
    the `retinue_mailbox_depth` gauge costs O(1), not a walk over every actor."""

    __slots__ = ("messages",)

    def __init__(self) -> None:
        self.messages = 0


class ActorHost:
    """What an actor needs from its runtime (a Protocol, spelled as a base class)."""

    async def execute(self, actor: Actor, message: Run) -> None:
        raise NotImplementedError

    async def dead_letter(self, actor: Actor, message: Run, error: BaseException) -> None:
        raise NotImplementedError

    def actor_restarted(self, actor: Actor) -> None:
        raise NotImplementedError

    def message_done(self, actor: Actor, message: Run) -> None:
        """`message` was handled, or dropped because the actor stopped."""
        raise NotImplementedError

    def spawn(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start an actor's task in the runtime's task group."""
        raise NotImplementedError

    def monotonic(self) -> float:
        """The runtime clock's monotonic reading (idle time counts on it)."""
        raise NotImplementedError


class Actor:
    """One key's actor. Created by the runtime on the first message for the key."""

    __slots__ = (
        "key", "_host", "_mailbox", "_mailbox_size", "_restart", "_unavailable_backoff",
        "_room", "_scope", "_stopped", "next_event_seq", "current", "epoch", "running",
        "idle_since", "_depth",
    )

    def __init__(
        self,
        key: str,
        host: ActorHost,
        *,
        mailbox_size: int,
        restart: RestartPolicy,
        unavailable_backoff: Callable[[int], float],
        depth: MailboxDepth | None = None,
    ) -> None:
        self.key = key
        self._depth = depth if depth is not None else MailboxDepth()
        self._host = host
        # A list, not a deque: an empty one is 56 bytes, and mailboxes are short.
        self._mailbox: list[Run] = []
        self._mailbox_size = mailbox_size
        self._restart = restart
        self._unavailable_backoff = unavailable_backoff
        self._room: anyio.Event | None = None  # made only when a sender waits for room
        self._scope: anyio.CancelScope | None = None
        self._stopped = False
        self.next_event_seq: int | None = None  # loaded on first use; reset on restart
        self.current: str | None = None
        self.epoch: int | None = None  # the partition lease it runs under (set by the host)
        self.running = False
        self.idle_since = host.monotonic()

    # -- the mailbox ---------------------------------------------------------

    def has_room(self) -> bool:
        return len(self._mailbox) < self._mailbox_size

    def depth(self) -> int:
        return len(self._mailbox)

    def has_work(self) -> bool:
        """A message being handled, or queued."""
        return self.running or bool(self._mailbox)

    def idle_for(self, now: float) -> float:
        """Seconds without work (0 while it has some)."""
        return 0.0 if self.has_work() else now - self.idle_since

    def deliver_nowait(self, message: Run) -> None:
        """Queue `message`, starting the actor's task if it has none. Raises
        anyio.WouldBlock when the mailbox is full, ClosedResourceError once stopped."""
        if self._stopped:
            raise anyio.ClosedResourceError
        if not self.has_room():
            raise anyio.WouldBlock
        self._mailbox.append(message)
        self._depth.messages += 1
        if not self.running:
            self.running = True
            self._host.spawn(self._run)

    async def deliver(self, message: Run) -> None:
        """Queue `message`, waiting for room. Cancellable."""
        while not self.has_room() and not self._stopped:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
        self.deliver_nowait(message)

    def _room_made(self) -> None:
        if self._room is not None:
            self._room.set()
            self._room = None

    # -- the loop --------------------------------------------------------------

    def stop(self) -> None:
        """Stop now (its partition moved to another node): the message being
        handled is abandoned at its next await, queued ones are dropped. The
        partition's new owner resumes their workflows by replay."""
        self._stopped = True
        self._room_made()
        if self._scope is not None:
            self._scope.cancel()
        else:
            self._drop_queued()

    async def _run(self) -> None:
        """Handle messages one at a time until the mailbox is empty or it stops."""
        self._scope = anyio.CancelScope()
        try:
            with self._scope:
                while self._mailbox:
                    message = self._mailbox.pop(0)
                    self._depth.messages -= 1
                    self._room_made()
                    await self._supervise(message)
        finally:
            self._scope = None
            self.running = False
            self.idle_since = self._host.monotonic()
            if self._stopped:
                self._drop_queued()

    def _drop_queued(self) -> None:
        queued, self._mailbox = self._mailbox, []
        self._depth.messages -= len(queued)
        for message in queued:
            self._host.message_done(self, message)

    async def _supervise(self, message: Run) -> None:
        crashes = 0
        outages = 0
        self.current = message.workflow_id
        try:
            while True:
                try:
                    await self._host.execute(self, message)
                    return
                except JournalUnavailableError:
                    # The database is away: not this message's fault. Wait and retry.
                    outages += 1
                    await anyio.sleep(self._unavailable_backoff(outages))
                except Exception as exc:  # noqa: BLE001 - the supervisor is the one place that may
                    crashes += 1
                    _log.warning("actor %s crashed on %s (%d): %r", self.key, message.workflow_id,
                                 crashes, exc)
                    self._reset()
                    self._host.actor_restarted(self)
                    if crashes >= self._restart.max_crashes:
                        await self._host.dead_letter(self, message, exc)
                        return
                    await anyio.sleep(self._restart.backoff(crashes))
                message = message.for_retry()
        finally:
            self.current = None
            self._host.message_done(self, message)

    def _reset(self) -> None:
        """A restart: forget every piece of in-memory state."""
        self.next_event_seq = None
