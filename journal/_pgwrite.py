"""The PostgreSQL write path: several batches, one statement, one transaction.

The group-commit writer hands `append_batches` everything that queued up during
the previous commit; the `retinue_append` function (migration 2) checks the
leases and writes every part, so a group costs one round trip and one fsync.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from ._pgconn import Conn
from .records import Batch, Document, DomainEvent, NewWorkflow, StepRecord

UPSERT_DOCUMENT: Final = """
INSERT INTO documents (kind, id, data, unique_key, owner, updated_at)
VALUES ($1, $2, $3, $4, $5, now())
ON CONFLICT (kind, id) DO UPDATE SET
    data = excluded.data, unique_key = excluded.unique_key, owner = excluded.owner,
    updated_at = excluded.updated_at
"""

_APPEND: Final = "SELECT retinue_append(" + ", ".join(f"${i}" for i in range(1, 45)) + ")"


async def append_batches(conn: Conn, batches: Sequence[Batch]) -> None:
    """Write `batches` in ONE statement (the retinue_append function, one implicit
    transaction and one round trip): lease check first, then every part.
    Raises asyncpg errors; `_pgconn.translated` turns them into the journal's."""
    await conn.execute(_APPEND, *_append_args(batches))


def _append_args(batches: Sequence[Batch]) -> list[Any]:
    fenced = [b for b in batches if b.epoch is not None]
    workflows = [_json_at(workflow_args(wf), 4) for b in batches for wf in b.workflows]
    steps = [_json_at(_step_args(step, b.partition), 7, 8, 13)
             for b in batches for step in b.steps]
    changes = [(c.workflow_id, c.status, _json(c.result), c.error)
               for b in batches for c in b.statuses]
    events = [_json_at(_event_args(e, b.partition), 3) for b in batches for e in b.events]
    documents = [_json_at(document_args(d), 2) for b in batches for d in b.documents]
    wf_events = [(e.workflow_id, e.key, _json(e.value))
                 for b in batches for e in b.workflow_events]
    consumed = [signal_id for b in batches for signal_id in b.consumed_signals]
    return [
        [b.partition for b in fenced], [b.epoch for b in fenced],
        *_columns(workflows, 9), *_columns(steps, 14), *_columns(changes, 4),
        *_columns(events, 6), *_columns(documents, 5), *_columns(wf_events, 3), consumed,
    ]


_ENCODER: Final = msgspec.json.Encoder()


def _json(value: Any) -> str | None:
    """A JSON value as text for retinue_append; None stays SQL NULL, as the codec does."""
    return None if value is None else _ENCODER.encode(value).decode()


def _json_at(row: tuple[Any, ...], *positions: int) -> tuple[Any, ...]:
    fields = list(row)
    for i in positions:
        fields[i] = _json(fields[i])
    return tuple(fields)


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows to one array per column, as unnest() takes them back."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


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
    )


def _step_args(step: StepRecord, partition: int) -> tuple[Any, ...]:
    return (
        step.workflow_id,
        step.seq,
        partition,
        step.name,
        step.kind,
        step.status,
        step.attempt,
        step.input,
        step.output,
        step.error,
        step.started_at,
        step.finished_at,
        step.fire_at,
        step.history,
    )


def _event_args(event: DomainEvent, partition: int) -> tuple[Any, ...]:
    return (
        event.actor_key,
        event.seq,
        event.type,
        event.payload,
        event.workflow_id,
        partition,
    )


def document_args(doc: Document, kind: str | None = None) -> tuple[Any, ...]:
    """The parameters of UPSERT_DOCUMENT; `kind` overrides the document's own."""
    return (kind or doc.kind, doc.id, doc.data, doc.unique_key, doc.owner)
