"""Durable timers, in memory: the journal holds them, this wakes their workflows."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from datetime import datetime

import anyio
from anyio.abc import TaskStatus

from .clock import Clock

__all__ = ["TimerService"]


class TimerService:
    """Calls `fire(workflow_id, actor_key)` once each timer comes due.

    Setting the same (workflow, time) twice is harmless; a replay sets its
    timer again every time it reaches the wait.
    """

    def __init__(self, fire: Callable[[str, str], None], clock: Clock) -> None:
        self._fire = fire
        self._clock = clock
        self._heap: list[tuple[float, int, str, str]] = []
        self._set: dict[str, float] = {}
        self._order = itertools.count()
        self._changed = anyio.Event()
        clock.on_jump(self._look_again)

    def _look_again(self) -> None:
        self._changed.set()

    def __len__(self) -> int:
        return len(self._set)

    def set(self, workflow_id: str, actor_key: str, fire_at: datetime) -> None:
        due = fire_at.timestamp()
        if self._set.get(workflow_id) == due:
            return
        self._set[workflow_id] = due
        heapq.heappush(self._heap, (due, next(self._order), workflow_id, actor_key))
        self._changed.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Fire timers as they come due, until cancelled."""
        task_status.started()
        while True:
            self._fire_due()
            self._changed = anyio.Event()
            delay = self._heap[0][0] - self._clock.now().timestamp() if self._heap else None
            with anyio.move_on_after(delay):
                await self._changed.wait()

    def _fire_due(self) -> None:
        now = self._clock.now().timestamp()
        while self._heap and self._heap[0][0] <= now:
            due, _, workflow_id, actor_key = heapq.heappop(self._heap)
            if self._set.get(workflow_id) == due:
                del self._set[workflow_id]
                self._fire(workflow_id, actor_key)
