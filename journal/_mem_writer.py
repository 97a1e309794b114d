"""MemoryJournal's write path (the `Writer` protocol): the same checks as the
`retinue_append` function (the lease, the run fence, the step and status guards,
uniqueness), then the whole batch, or nothing of it."""

from __future__ import annotations

from datetime import datetime
from typing import Final

import msgspec

from ._mem_state import MemoryState
from .base import Writer
from .errors import FencedError, IntegrityError, StaleRunError
from .records import (
    FINISHED_STATUSES,
    PARKED,
    Batch,
    Document,
    DomainEvent,
    NewWorkflow,
    RunFence,
    StepRecord,
    WorkflowRow,
)

__all__ = ["MemoryWriter"]

# What an append may set a workflow's status to (pending only by an operator's retry).
_APPENDABLE_STATUSES: Final = frozenset(
    {"running", "waiting", "parked", "completed", "failed", "cancelled"}
)


def _check_run(run: RunFence, row: WorkflowRow | None, *, inserted: bool) -> None:
    """The run fence: `run` holds the workflow, or may claim it from `previous`
    (a workflow the batch itself `inserted` is held by none: pending until then)."""
    if row is None and inserted and run.previous is None:
        return
    if row is not None and (row.run_id == run.run_id or (
            row.run_id == run.previous and row.status not in FINISHED_STATUSES)):
        return
    holder = "none" if row is None or row.run_id is None else row.run_id
    status = "missing" if row is None else row.status
    raise StaleRunError(
        run.workflow_id,
        f"workflow {run.workflow_id} is held by another run ({holder}; status {status})",
    )


def _moves_forward(stored: StepRecord, new: StepRecord, run_id: str | None) -> bool:
    """The step guard: may `new` (written by `run_id`) replace `stored`?"""
    if stored.run_id == run_id and (stored.status, stored.attempt) == (new.status, new.attempt):
        return True  # the same write again
    if stored.status in ("started", "retrying", "backoff") and new.attempt > stored.attempt:
        return True
    return (
        stored.status == "started" and new.attempt == stored.attempt
        and new.status in ("completed", "failed", "backoff")
        and (stored.run_id == run_id or stored.kind == "wait")
    )


class MemoryWriter(MemoryState, Writer):
    """The write path in memory."""

    async def append(self, batch: Batch) -> None:
        async with self._lock:
            self._check_lease(batch.partition, batch.epoch)
            if self._guards:
                if batch.run is not None:
                    workflow_id = batch.run.workflow_id
                    _check_run(batch.run, self._workflows.get(workflow_id),
                               inserted=any(wf.id == workflow_id for wf in batch.workflows))
                self._check_steps(batch)
                self._check_statuses(batch)
            self._check_integrity(batch)
            self._apply(batch)

    def _check_lease(self, partition: int, epoch: int | None) -> None:
        if epoch is not None and self._leases[partition].epoch != epoch:
            raise FencedError(partition, epoch)

    def _check_steps(self, batch: Batch) -> None:
        run_id = batch.run.run_id if batch.run is not None else None
        for step in batch.steps:
            stored = self._steps.get(step.workflow_id, {}).get(step.seq)
            if stored is not None and not _moves_forward(stored, step, run_id):
                raise StaleRunError(
                    step.workflow_id,
                    f"step {step.seq} of workflow {step.workflow_id} is {stored.status} "
                    f"(attempt {stored.attempt}): refusing {step.status} (attempt {step.attempt})",
                )

    def _check_statuses(self, batch: Batch) -> None:
        created = {wf.id for wf in batch.workflows}
        for change in batch.statuses:
            if change.workflow_id in created and change.workflow_id not in self._workflows:
                continue  # pending until this batch: any move is legal
            row = self._require(change.workflow_id)
            if change.status not in _APPENDABLE_STATUSES or (
                row.status in FINISHED_STATUSES and row.status != change.status
            ):
                raise StaleRunError(
                    row.id, f"workflow {row.id} is {row.status}: it cannot move to {change.status}"
                )

    def _is_stored(self, event: DomainEvent) -> bool:
        """The very event is in the log already (a batch appended again)."""
        stored = self._events.get(event.actor_key, {}).get(event.seq)
        return stored is not None and (stored.workflow_id, stored.type, stored.payload) == (
            event.workflow_id, event.type, event.payload
        )

    def _check_integrity(self, batch: Batch) -> None:
        appended: set[tuple[str, int]] = set()
        for event in batch.events:
            key = (event.actor_key, event.seq)
            if self._is_stored(event):
                continue
            if key in appended or event.seq in self._events.get(event.actor_key, {}):
                raise IntegrityError(
                    "events_pkey", f"event {event.seq} of {event.actor_key!r} already exists"
                )
            appended.add(key)
        claimed: dict[tuple[str, str], str] = {}
        for doc in batch.documents:
            if doc.unique_key is None:
                continue
            holder = claimed.get((doc.kind, doc.unique_key)) or self._unique_holder(doc)
            if holder is not None and holder != doc.id:
                raise IntegrityError(
                    "documents_unique_key",
                    f"{doc.kind} {doc.unique_key!r} already belongs to {holder!r}",
                )
            claimed[(doc.kind, doc.unique_key)] = doc.id
        for wf in batch.workflows:
            self._check_new_workflow(wf)
        created = {wf.id for wf in batch.workflows}
        for change in batch.statuses:
            if change.workflow_id not in created:
                self._require(change.workflow_id)

    def _unique_holder(self, doc: Document) -> str | None:
        for (kind, doc_id), existing in self._documents.items():
            if kind == doc.kind and existing.unique_key == doc.unique_key:
                return doc_id
        return None

    def _check_new_workflow(self, wf: NewWorkflow) -> None:
        key = wf.idempotency_key
        if key is not None and self._by_idempotency_key.get(key, wf.id) != wf.id:
            raise IntegrityError("workflows_idempotency_key", f"idempotency key {key!r} is taken")

    def _apply(self, batch: Batch) -> None:
        now = self._now()
        for wf in batch.workflows:
            self._insert_workflow(wf, now)
        run_id = batch.run.run_id if batch.run is not None else None
        if batch.run is not None:
            row = self._workflows[batch.run.workflow_id]
            self._workflows[row.id] = msgspec.structs.replace(row, run_id=run_id)
        for step in batch.steps:
            self._steps.setdefault(step.workflow_id, {})[step.seq] = msgspec.structs.replace(
                step, run_id=run_id
            )
        for change in batch.statuses:
            row = self._require(change.workflow_id)
            if row.status in FINISHED_STATUSES and self._guards:
                continue  # the same end again: a no-op
            self._workflows[row.id] = msgspec.structs.replace(
                row, status=change.status, result=change.result, error=change.error,
                parked=change.parked if change.status == PARKED else None, updated_at=now,
            )
        for event in batch.events:
            if self._is_stored(event):
                continue
            stamped = msgspec.structs.replace(event, created_at=now)
            self._events.setdefault(event.actor_key, {})[event.seq] = stamped
        for doc in batch.documents:
            self._documents[(doc.kind, doc.id)] = msgspec.structs.replace(doc, updated_at=now)
        for wf_event in batch.workflow_events:  # the first value stays
            self._workflow_events.setdefault((wf_event.workflow_id, wf_event.key), wf_event.value)
        for signal_id in batch.consumed_signals:
            if signal_id in self._signals:
                self._signals[signal_id] = msgspec.structs.replace(
                    self._signals[signal_id], consumed=True
                )

    def _insert_workflow(self, wf: NewWorkflow, now: datetime) -> WorkflowRow:
        if wf.id in self._workflows:
            return self._workflows[wf.id]
        row = WorkflowRow(
            id=wf.id,
            name=wf.name,
            actor_key=wf.actor_key,
            partition=wf.partition,
            status="pending",
            input=wf.input,
            idempotency_key=wf.idempotency_key,
            request_hash=wf.request_hash,
            parent_id=wf.parent_id,
            trace_id=wf.trace_id,
            app_version=wf.app_version,
            created_at=now,
            updated_at=now,
            position=next(self._positions),
        )
        self._workflows[wf.id] = row
        if wf.idempotency_key is not None:
            self._by_idempotency_key[wf.idempotency_key] = wf.id
        return row

    async def create_workflow(
        self, workflow: NewWorkflow, *, key_expired_before: datetime | None = None
    ) -> tuple[WorkflowRow, bool]:
        async with self._lock:
            existing = self._workflows.get(workflow.id)
            if existing is None and workflow.idempotency_key is not None:
                existing_id = self._by_idempotency_key.get(workflow.idempotency_key)
                existing = self._workflows.get(existing_id) if existing_id else None
                if (existing is not None and key_expired_before is not None
                        and existing.created_at < key_expired_before):
                    self._free_key(existing)  # expired: the key is this one's now
                    existing = None
            if existing is not None:
                return existing, False
            return self._insert_workflow(workflow, self._now()), True
