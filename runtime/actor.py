"""An actor: a bounded mailbox, one message at a time, and its supervisor.

Every message names a workflow to run (or resume) on this actor. The
supervisor restarts the actor after a crash with exponential backoff; a
message that crashes it `max_crashes` times in a row goes to the dead letters
and the actor carries on. An actor idle for `idle_timeout` passivates: it
leaves memory, and the next message activates it again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import anyio
import msgspec
from anyio.abc import TaskStatus

from journal import JournalUnavailableError, WorkflowRow

from .policy import RestartPolicy

__all__ = ["Actor", "Run"]

_log = logging.getLogger("retinue.actor")


class Run(msgspec.Struct, frozen=True, kw_only=True):
    """Run (or resume) a workflow on its actor. `row` spares a read for a new one."""

    workflow_id: str
    row: WorkflowRow | None = None
    external: bool = False  # counted against the runtime's in-flight bound


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

    def passivate(self, actor: Actor) -> bool:
        """Remove an idle actor from memory; False if a message arrived meanwhile."""
        raise NotImplementedError


class Actor:
    """One key's actor. Created by the runtime on the first message for the key."""

    def __init__(
        self,
        key: str,
        host: ActorHost,
        *,
        mailbox_size: int,
        idle_timeout: float,
        restart: RestartPolicy,
        unavailable_backoff: Callable[[int], float],
    ) -> None:
        self.key = key
        self._host = host
        self._send, self._inbox = anyio.create_memory_object_stream[Run](mailbox_size)
        self._idle_timeout = idle_timeout
        self._restart = restart
        self._unavailable_backoff = unavailable_backoff
        self.next_event_seq: int | None = None  # loaded on first use; reset on restart
        self.current: str | None = None
        self.epoch: int | None = None  # the partition lease it runs under (set by the host)
        self._scope = anyio.CancelScope()

    # -- the mailbox ---------------------------------------------------------

    def has_room(self) -> bool:
        stats = self._send.statistics()
        return stats.current_buffer_used < stats.max_buffer_size

    def depth(self) -> int:
        return self._send.statistics().current_buffer_used

    def deliver_nowait(self, message: Run) -> None:
        """Queue `message`; raises anyio.WouldBlock when the mailbox is full."""
        self._send.send_nowait(message)

    async def deliver(self, message: Run) -> None:
        """Queue `message`, waiting for room. Cancellable."""
        await self._send.send(message)

    # -- the loop --------------------------------------------------------------

    def stop(self) -> None:
        """Stop now (its partition moved to another node): the message being
        handled is abandoned at its next await, queued ones are dropped. The
        partition's new owner resumes their workflows by replay."""
        self._scope.cancel()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Handle messages one at a time until passivated, stopped or cancelled."""
        task_status.started()
        with self._scope:
            async with self._send, self._inbox:
                try:
                    while True:
                        message = await self._next_message()
                        if message is None:
                            if self._host.passivate(self):
                                return
                            continue
                        await self._supervise(message)
                finally:
                    self._drop_queued()

    def _drop_queued(self) -> None:
        while True:
            try:
                message = self._inbox.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                return
            self._host.message_done(self, message)

    async def _next_message(self) -> Run | None:
        """The next message, or None after `idle_timeout` without one."""
        try:
            return self._inbox.receive_nowait()  # spares a cancel scope when busy
        except anyio.WouldBlock:
            pass
        idle_for = self._idle_timeout if self._idle_timeout > 0 else math.inf
        with anyio.move_on_after(idle_for):
            return await self._inbox.receive()
        return None

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
                # The failed attempt may have journaled steps, so the retry replays
                # them: a row handed in with a new workflow stands for an empty history.
                message = msgspec.structs.replace(message, row=None)
        finally:
            self.current = None
            self._host.message_done(self, message)

    def _reset(self) -> None:
        """A restart: forget every piece of in-memory state."""
        self.next_event_seq = None
