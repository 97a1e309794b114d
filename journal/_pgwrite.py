"""The PostgreSQL write path: several batches, one statement, one transaction.

The group-commit writer hands `append_batches` everything that queued up during
the previous commit. The group travels as ONE jsonb document (`_Group`, encoded
by msgspec through the pool's jsonb codec) to the `retinue_append` function
(migration 4, replaced by 5 and 8), which checks the leases, the run fences and the step and status
guards, then writes every part: one round trip, one fsync. Python and SQL meet
by field name, so a new column is one field here and one in the SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import msgspec

from ._pgconn import Conn
from .records import Batch, Document, NewWorkflow

UPSERT_DOCUMENT: Final = """
INSERT INTO documents (kind, id, data, unique_key, owner, updated_at)
VALUES ($1, $2, $3, $4, $5, now())
ON CONFLICT (kind, id) DO UPDATE SET
    data = excluded.data, unique_key = excluded.unique_key, owner = excluded.owner,
    updated_at = excluded.updated_at
"""

_APPEND: Final = "SELECT retinue_append($1::jsonb)"


class _Lease(msgspec.Struct, frozen=True):
    partition: int
    epoch: int


class _Step(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A step record as retinue_append stores it: with its partition, the epoch
    and the run it was written under. A None is left out of the JSON (the SQL
    reads a missing key as NULL): a smaller group to send and to parse."""

    workflow_id: str
    seq: int
    partition: int
    name: str
    kind: str
    status: str
    attempt: int
    started_at: datetime
    app_version: str
    input: Any = None
    output: Any = None
    error: str | None = None
    finished_at: datetime | None = None
    fire_at: datetime | None = None
    history: Any = None
    epoch: int | None = None
    run_id: str | None = None


class _Event(msgspec.Struct, frozen=True, kw_only=True):
    actor_key: str
    seq: int
    type: str
    payload: Any
    workflow_id: str | None
    partition: int
    epoch: int | None


class _Group(msgspec.Struct, frozen=True, kw_only=True):
    """Every part of a group of batches, as retinue_append reads it."""

    leases: list[_Lease]
    runs: list[Any]
    workflows: list[NewWorkflow]
    steps: list[_Step]
    statuses: list[Any]
    events: list[_Event]
    documents: list[Document]
    workflow_events: list[Any]
    consumed_signals: list[int]


async def append_batches(conn: Conn, batches: Sequence[Batch]) -> None:
    """Write `batches` in ONE statement (the retinue_append function, one implicit
    transaction and one round trip): lease and run checks first, then every part.
    Raises asyncpg errors; `_pgconn.translated` turns them into the journal's."""
    await conn.execute(_APPEND, _group(batches))


def _group(batches: Sequence[Batch]) -> _Group:
    return _Group(
        # One per partition and epoch: a group holds many batches of one partition.
        leases=list({_Lease(b.partition, b.epoch) for b in batches if b.epoch is not None}),
        runs=[b.run for b in batches if b.run is not None],
        workflows=[wf for b in batches for wf in b.workflows],
        steps=[_step(step, b) for b in batches for step in b.steps],
        statuses=[change for b in batches for change in b.statuses],
        events=[
            _Event(actor_key=e.actor_key, seq=e.seq, type=e.type, payload=e.payload,
                   workflow_id=e.workflow_id, partition=b.partition, epoch=b.epoch)
            for b in batches for e in b.events
        ],
        documents=[doc for b in batches for doc in b.documents],
        workflow_events=[e for b in batches for e in b.workflow_events],
        consumed_signals=[signal_id for b in batches for signal_id in b.consumed_signals],
    )


def _step(step: Any, batch: Batch) -> _Step:
    return _Step(
        workflow_id=step.workflow_id, seq=step.seq, partition=batch.partition,
        name=step.name, kind=step.kind, status=step.status, attempt=step.attempt,
        input=step.input, output=step.output, error=step.error,
        started_at=step.started_at, finished_at=step.finished_at, fire_at=step.fire_at,
        history=step.history, epoch=batch.epoch,
        run_id=batch.run.run_id if batch.run is not None else None,
        app_version=step.app_version,
    )


def workflow_args(wf: NewWorkflow) -> tuple[Any, ...]:
    """The parameters of an INSERT INTO workflows, in column order."""
    return (
        wf.id,
        wf.name,
        wf.actor_key,
        wf.partition,
        wf.input,
        wf.idempotency_key,
        wf.request_hash,
        wf.parent_id,
        wf.trace_id,
        wf.app_version,
    )


def document_args(doc: Document, kind: str | None = None) -> tuple[Any, ...]:
    """The parameters of UPSERT_DOCUMENT; `kind` overrides the document's own."""
    return (kind or doc.kind, doc.id, doc.data, doc.unique_key, doc.owner)
