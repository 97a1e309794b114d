"""What the journal stores: every row is a frozen msgspec Struct.

Payloads (workflow input and result, step input and output, event payloads,
documents) are plain JSON values (dict, list, str, int, float, bool, None); the
runtime converts typed values to and from them. Timestamps are timezone-aware UTC.
New fields get defaults; a field's type never changes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec

__all__ = [
    "PARTITION_COUNT",
    "FINISHED_STATUSES",
    "FORKABLE_STATUSES",
    "PARKED",
    "Batch",
    "DeadLetter",
    "Document",
    "DomainEvent",
    "NewWorkflow",
    "RunFence",
    "Signal",
    "StatusChange",
    "StepRecord",
    "WorkflowEventRecord",
    "WorkflowRow",
    "WorkflowPage",
]

# Customers hash into a fixed set of partitions; never changes for a database.
PARTITION_COUNT: Final = 256

FINISHED_STATUSES: Final = frozenset({"completed", "failed", "cancelled"})
# What an operator may fork: nothing runs these (parked waits for new code or an operator).
FORKABLE_STATUSES: Final = FINISHED_STATUSES | {"parked"}

# Replayed code disagreed with the journal: nothing runs until a deploy (or an
# operator) moves it on. Not finished: it may go back to running or pending.
PARKED: Final = "parked"


class NewWorkflow(msgspec.Struct, frozen=True, kw_only=True):
    """An accepted command: a workflow to run on an actor."""

    id: str
    name: str
    actor_key: str
    partition: int
    input: Any = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    parent_id: str | None = None
    trace_id: str = ""
    # The application version that accepted it (runtime/versions.py); "" before v5.
    app_version: str = ""


class WorkflowRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    actor_key: str
    partition: int
    status: str
    input: Any = None
    result: Any = None
    error: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    parent_id: str | None = None
    trace_id: str = ""
    cancel_requested: bool = False
    created_at: datetime
    updated_at: datetime
    position: int = 0
    # The run that holds the workflow now (see RunFence); None before its first.
    run_id: str | None = None
    # When retention removed its steps, signals and published events (it had
    # finished long enough ago); None while they are kept. See `Retention`.
    pruned_at: datetime | None = None
    # A fork (see Workflows.fork_workflow): the workflow it was forked from, and
    # the seq it was forked at (the original's completed steps before it were copied).
    forked_from: str | None = None
    forked_at_seq: int | None = None
    # The application version it started under; "" for rows older than migration 5.
    app_version: str = ""
    # Why it is parked (status "parked"): {"seq", "expected", "found",
    # "found_version", "running_version"}; None when it is not.
    parked: Any = None


class WorkflowPage(msgspec.Struct, frozen=True, kw_only=True):
    workflows: list[WorkflowRow]
    next_cursor: str | None = None


class StepRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One journaled step. Upserted by (workflow_id, seq).

    kind: "step" (a function), "wait" (signal or timer), "child", "event", "sleep".
    status: "started" (write-ahead), "completed", "failed" (attempts exhausted),
    "retrying" (failed, then an operator asked for a retry), "backoff" (an
    attempt failed; the next one is due at fire_at: a durable timer).
    """

    workflow_id: str
    seq: int
    name: str
    kind: str = "step"
    status: str
    attempt: int = 1
    input: Any = None
    output: Any = None
    error: str | None = None
    started_at: datetime
    finished_at: datetime | None = None
    fire_at: datetime | None = None
    # Earlier failed attempts, oldest first: [{"attempt", "started_at",
    # "finished_at", "error"}], so a timeline can draw every try.
    history: Any = None
    # The run that wrote this record (its batch's RunFence); set by the journal.
    run_id: str | None = None
    # The application version whose code wrote it; "" for records older than migration 5.
    app_version: str = ""


class StatusChange(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    status: str
    result: Any = None
    error: str | None = None
    # The mismatch that parks it, with status "parked"; every other move clears it.
    parked: Any = None


class DomainEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An entry of an actor's event log; primary key (actor_key, seq)."""

    actor_key: str
    seq: int
    type: str
    payload: Any = None
    workflow_id: str | None = None
    created_at: datetime | None = None


class Document(msgspec.Struct, frozen=True, kw_only=True):
    """A projection row (the CQRS read side). Upserted by (kind, id).

    unique_key, when set, is unique within its kind: the integrity check a
    write relies on. owner groups documents for listing (e.g. a customer's messages).
    """

    kind: str
    id: str
    data: Any
    unique_key: str | None = None
    owner: str | None = None
    updated_at: datetime | None = None


class WorkflowEventRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A value a workflow publishes for callers, by key."""

    workflow_id: str
    key: str
    value: Any = None


class Signal(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    workflow_id: str
    name: str
    payload: Any = None
    consumed: bool = False
    created_at: datetime | None = None


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    actor_key: str
    message: Any
    error: str
    created_at: datetime
    redelivered_at: datetime | None = None


class RunFence(msgspec.Struct, frozen=True, kw_only=True):
    """The run a batch is written by, and the workflow it runs.

    A run is one execution of a workflow's code on one node, with a token
    (`run_id`) never used again. Its batches commit only while the workflow is
    held by that run: the first one claims it from `previous` (the holder the
    run saw when it loaded the workflow, None for a new one); if anyone else
    holds it by then, another run has moved it on and the batch is refused
    whole (StaleRunError). The run then reloads the workflow from the journal.
    """

    workflow_id: str
    run_id: str
    previous: str | None = None


class Batch(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one journal append writes, atomically: all of it or none.

    partition and epoch are the writer's lease on the actor's partition; the
    append commits only while that lease is current (the scale-out fence).
    epoch None writes without the fence: only for accepting new workflows,
    which any node may do for any partition. `run` fences a workflow run's
    writes (RunFence): its step records and status changes.

    Appending the very same batch again (an answer lost in an outage) is a
    no-op: the journal finds its records already there, written by the same run.
    """

    partition: int
    epoch: int | None
    run: RunFence | None = None
    workflows: tuple[NewWorkflow, ...] = ()
    steps: tuple[StepRecord, ...] = ()
    statuses: tuple[StatusChange, ...] = ()
    events: tuple[DomainEvent, ...] = ()
    documents: tuple[Document, ...] = ()
    workflow_events: tuple[WorkflowEventRecord, ...] = ()
    consumed_signals: tuple[int, ...] = ()
