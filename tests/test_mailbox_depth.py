"""The node-wide mailbox depth is kept as messages come and go (the gauge reads it
in O(1)): it counts what is queued, not what is being handled, and nothing once
the actors have drained or were stopped with messages still queued."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

from runtime.actor import Actor, ActorHost, MailboxDepth, Run
from runtime.policy import RestartPolicy


class _Host(ActorHost):
    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self.tg = tg
        self.gate = anyio.Event()
        self.handled: list[str] = []
        self.done: list[str] = []

    async def execute(self, actor: Actor, message: Run) -> None:
        await self.gate.wait()
        self.handled.append(message.workflow_id)

    def message_done(self, actor: Actor, message: Run) -> None:
        self.done.append(message.workflow_id)

    def spawn(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.tg.start_soon(run)

    def monotonic(self) -> float:
        return 0.0


def _actor(key: str, host: _Host, depth: MailboxDepth) -> Actor:
    return Actor(key, host, mailbox_size=10, restart=RestartPolicy(),
                 unavailable_backoff=lambda _: 0.0, depth=depth)


async def test_the_depth_counts_queued_messages_across_actors_until_handled() -> None:
    depth = MailboxDepth()
    async with anyio.create_task_group() as tg:
        host = _Host(tg)
        a, b = _actor("a", host, depth), _actor("b", host, depth)
        for i in range(3):
            a.deliver_nowait(Run(workflow_id=f"a{i}"))
        b.deliver_nowait(Run(workflow_id="b0"))
        assert depth.messages == 4
        await anyio.wait_all_tasks_blocked()
        # Each actor took its first message: being handled is not waiting.
        assert depth.messages == 2 == a.depth() + b.depth()
        host.gate.set()
    assert depth.messages == 0
    assert sorted(host.handled) == ["a0", "a1", "a2", "b0"]


async def test_an_actor_stopped_with_messages_queued_takes_them_off_the_depth() -> None:
    depth = MailboxDepth()
    async with anyio.create_task_group() as tg:
        host = _Host(tg)
        running, idle = _actor("running", host, depth), _actor("idle", host, depth)
        for i in range(3):
            running.deliver_nowait(Run(workflow_id=f"r{i}"))
        await anyio.wait_all_tasks_blocked()
        assert depth.messages == 2
        running.stop()  # cancelled mid-message: the queued ones are dropped
        idle.stop()  # no task: nothing was queued, nothing changes
    assert depth.messages == 0
    assert host.handled == [] and sorted(host.done) == ["r0", "r1", "r2"]
