"""MemoryJournal's workflows, steps, signals and workflow events, and the
operator's actions on them (the `Workflows` protocol)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import msgspec

from ._mem_state import MemoryState
from .base import WaitingStep, Workflows
from .errors import InvalidForkError, InvalidTransitionError
from .records import (
    FINISHED_STATUSES,
    FORKABLE_STATUSES,
    PARKED,
    Signal,
    StepRecord,
    WorkflowPage,
    WorkflowRow,
)

__all__ = ["MemoryWorkflows"]


def _is_timer(step: StepRecord) -> bool:
    """A durable timer: a wait not yet ended, or a step backing off."""
    return (step.kind == "wait" and step.status == "started") or step.status == "backoff"


def _shown(row: WorkflowRow) -> str:
    """The status an operator's refusal names: a pruned workflow can never resume."""
    return "pruned" if row.pruned_at is not None else row.status


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
                raise InvalidTransitionError(workflow_id, _shown(row), "cancel")
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
            if row.status not in ("failed", PARKED) or row.pruned_at is not None:
                raise InvalidTransitionError(workflow_id, _shown(row), "retry")
            steps = self._steps.get(workflow_id, {})
            for seq, step in steps.items():
                if step.status == "failed":
                    steps[seq] = msgspec.structs.replace(step, status="retrying")
            self._workflows[workflow_id] = msgspec.structs.replace(
                row, status="pending", error=None, parked=None, updated_at=self._now()
            )

    async def fork_workflow(
        self, workflow_id: str, from_seq: int, new_id: str, *,
        idempotency_key: str | None = None, request_hash: str | None = None, trace_id: str = "",
    ) -> tuple[WorkflowRow, bool]:
        async with self._lock:
            taken = None if idempotency_key is None else self._by_idempotency_key.get(
                idempotency_key)
            if taken is not None:
                return self._workflows[taken], False
            original = self._require(workflow_id)
            if original.status not in FORKABLE_STATUSES:
                raise InvalidTransitionError(workflow_id, original.status, "fork")
            if original.pruned_at is not None and from_seq != 1:
                raise InvalidForkError(workflow_id, from_seq, 0, pruned_at=original.pruned_at)
            steps = self._steps.get(workflow_id, {})
            last = max(steps, default=0)
            if not 1 <= from_seq <= last + 1:
                raise InvalidForkError(workflow_id, from_seq, last)
            now = self._now()
            fork = WorkflowRow(
                id=new_id, name=original.name, actor_key=original.actor_key,
                partition=original.partition, status="pending", input=original.input,
                idempotency_key=idempotency_key, request_hash=request_hash, trace_id=trace_id,
                created_at=now, updated_at=now, position=next(self._positions),
                forked_from=workflow_id, forked_at_seq=from_seq,
            )
            self._workflows[new_id] = fork
            if idempotency_key is not None:
                self._by_idempotency_key[idempotency_key] = new_id
            self._copy_steps(steps, new_id, from_seq)
            return fork, True

    def _copy_steps(self, steps: dict[int, StepRecord], new_id: str, before: int) -> None:
        """The completed steps of seq < `before`, as the fork's (and the values of
        the events they published)."""
        copied = self._steps.setdefault(new_id, {})
        for seq in sorted(steps):
            step = steps[seq]
            if seq >= before or step.status != "completed":
                continue
            copied[seq] = msgspec.structs.replace(step, workflow_id=new_id, run_id=None)
            if step.kind == "event":
                self._workflow_events.setdefault((new_id, step.name), step.output)

    async def forks(self, workflow_id: str) -> list[WorkflowRow]:
        found = [r for r in self._workflows.values() if r.forked_from == workflow_id]
        return sorted(found, key=lambda r: r.position)

    async def workflow_signals(self, workflow_id: str) -> list[Signal]:
        return [s for s in self._signals.values() if s.workflow_id == workflow_id]

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
