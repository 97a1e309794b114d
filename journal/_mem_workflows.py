"""MemoryJournal's workflows, steps, signals and workflow events, and the
operator's actions on them (the `Workflows` protocol)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import msgspec

from ._mem_state import MemoryState
from .base import WaitingStep, Workflows
from .errors import InvalidTransitionError
from .records import FINISHED_STATUSES, PARKED, Signal, StepRecord, WorkflowPage, WorkflowRow

__all__ = ["MemoryWorkflows"]


def _is_timer(step: StepRecord) -> bool:
    """A durable timer: a wait not yet ended, or a step backing off."""
    return (step.kind == "wait" and step.status == "started") or step.status == "backoff"


class MemoryWorkflows(MemoryState, Workflows):
    """Workflows, steps and signals in memory."""

    async def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        return self._workflows.get(workflow_id)

    async def list_workflows(
        self,
        *,
        status: str | None = None,
        actor_key: str | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        created_since: datetime | None = None,
        created_before: datetime | None = None,
    ) -> WorkflowPage:
        before = int(cursor) if cursor else None
        rows = sorted(self._workflows.values(), key=lambda r: r.position, reverse=True)
        matching = [
            r
            for r in rows
            if (status is None or r.status == status)
            and (actor_key is None or r.actor_key == actor_key)
            and (name is None or r.name == name)
            and (before is None or r.position < before)
            and (created_since is None or r.created_at >= created_since)
            and (created_before is None or r.created_at < created_before)
        ]
        page = matching[:limit]
        more = len(matching) > limit
        return WorkflowPage(
            workflows=page, next_cursor=str(page[-1].position) if more and page else None
        )

    async def count_workflows_by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self._workflows.values():
            counts[row.status] = counts.get(row.status, 0) + 1
        return counts

    async def count_parked(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self._workflows.values():
            if row.status == PARKED:
                counts[row.name] = counts.get(row.name, 0) + 1
        return counts

    async def children(self, workflow_id: str) -> list[WorkflowRow]:
        found = [r for r in self._workflows.values() if r.parent_id == workflow_id]
        return sorted(found, key=lambda r: r.position)

    async def unfinished_workflows(
        self, partitions: Collection[int] | None = None, *, waiting: bool = True
    ) -> list[WorkflowRow]:
        wanted = None if partitions is None else set(partitions)
        found = [r for r in self._workflows.values() if r.status not in FINISHED_STATUSES
                 and (waiting or r.status != "waiting")
                 and (wanted is None or r.partition in wanted)]
        return sorted(found, key=lambda r: r.position)

    async def load_steps(self, workflow_id: str) -> list[StepRecord]:
        steps = self._steps.get(workflow_id, {})
        return [steps[seq] for seq in sorted(steps)]

    async def load_histories(self, workflow_ids: Sequence[str]) -> dict[str, list[StepRecord]]:
        return {workflow_id: await self.load_steps(workflow_id) for workflow_id in workflow_ids}

    async def waiting_steps(self, partitions: Collection[int] | None = None) -> list[WaitingStep]:
        wanted = None if partitions is None else set(partitions)
        waiting = []
        for workflow_id, steps in self._steps.items():
            row = self._workflows[workflow_id]
            if wanted is not None and row.partition not in wanted:
                continue
            for step in steps.values():
                if step.fire_at is not None and _is_timer(step):
                    waiting.append(
                        WaitingStep(
                            workflow_id=workflow_id,
                            seq=step.seq,
                            actor_key=row.actor_key,
                            fire_at=step.fire_at,
                        )
                    )
        return sorted(waiting, key=lambda w: w.fire_at)

    async def runnable_workflows(
        self, partitions: Collection[int], signals_after: int
    ) -> tuple[list[WorkflowRow], int]:
        wanted = set(partitions)
        newest = max(self._signals, default=0)
        signalled = {s.workflow_id for s in self._signals.values()
                     if not s.consumed and signals_after < s.id}
        found = [
            r for r in self._workflows.values()
            if r.partition in wanted and r.status not in FINISHED_STATUSES
            and (r.status == "pending" or r.cancel_requested or r.id in signalled)
        ]
        return sorted(found, key=lambda r: r.position), newest

    async def request_cancel(self, workflow_id: str) -> list[str]:
        async with self._lock:
            row = self._require(workflow_id)
            if row.status in FINISHED_STATUSES:
                raise InvalidTransitionError(workflow_id, row.status, "cancel")
            marked = []
            pending = [row]
            while pending:
                current = pending.pop()
                if current.status in FINISHED_STATUSES:
                    continue
                self._workflows[current.id] = msgspec.structs.replace(
                    current, cancel_requested=True, updated_at=self._now()
                )
                marked.append(current.id)
                pending.extend(r for r in self._workflows.values() if r.parent_id == current.id)
            return marked

    async def retry_workflow(self, workflow_id: str) -> None:
        async with self._lock:
            row = self._require(workflow_id)
            if row.status not in ("failed", PARKED):
                raise InvalidTransitionError(workflow_id, row.status, "retry")
            steps = self._steps.get(workflow_id, {})
            for seq, step in steps.items():
                if step.status == "failed":
                    steps[seq] = msgspec.structs.replace(step, status="retrying")
            self._workflows[workflow_id] = msgspec.structs.replace(
                row, status="pending", error=None, parked=None, updated_at=self._now()
            )

    # -- signals and workflow events ----------------------------------------

    async def send_signal(self, workflow_id: str, name: str, payload: Any) -> Signal:
        async with self._lock:
            self._require(workflow_id)
            signal = Signal(
                id=next(self._signal_ids),
                workflow_id=workflow_id,
                name=name,
                payload=payload,
                created_at=self._now(),
            )
            self._signals[signal.id] = signal
            return signal

    async def next_signal(self, workflow_id: str, name: str) -> Signal | None:
        for signal in self._signals.values():  # dicts keep insertion (id) order
            if signal.workflow_id == workflow_id and signal.name == name and not signal.consumed:
                return signal
        return None

    async def get_workflow_event(self, workflow_id: str, key: str) -> tuple[bool, Any]:
        if (workflow_id, key) in self._workflow_events:
            return True, self._workflow_events[(workflow_id, key)]
        return False, None
