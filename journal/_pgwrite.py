"""The PostgreSQL write path: fence check and batch writes, inside a caller's transaction.

Written for several batches at once so that a group-commit writer can hand it
everything that queued up during the previous commit; `PostgresJournal.append`
passes a single batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from ._pgconn import Conn
from .errors import FencedError, WorkflowNotFoundError
from .records import Batch, Document, DomainEvent, NewWorkflow, StatusChange, StepRecord

# FOR SHARE: appends on one partition do not wait for each other, but a take-over
# (claim_partitions updates the row) waits for them to commit, and an append that
# comes after the take-over sees the new epoch.
_LOCK_LEASES: Final = """
SELECT partition, epoch FROM partitions
WHERE partition = ANY($1::integer[])
ORDER BY partition
FOR SHARE
"""

_INSERT_WORKFLOW: Final = """
INSERT INTO workflows (id, name, actor_key, partition, input, idempotency_key,
                       request_hash, parent_id, trace_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (id) DO NOTHING
"""

_UPSERT_STEP: Final = """
INSERT INTO steps (workflow_id, seq, partition, name, kind, status, attempt, input, output,
                   error, started_at, finished_at, fire_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (workflow_id, seq) DO UPDATE SET
    partition = excluded.partition, name = excluded.name, kind = excluded.kind,
    status = excluded.status, attempt = excluded.attempt, input = excluded.input,
    output = excluded.output, error = excluded.error, started_at = excluded.started_at,
    finished_at = excluded.finished_at, fire_at = excluded.fire_at
"""

_UPDATE_STATUS: Final = """
UPDATE workflows SET status = $2, result = $3, error = $4, updated_at = now()
WHERE id = $1
RETURNING id
"""

_INSERT_EVENT: Final = """
INSERT INTO events (actor_key, seq, type, payload, workflow_id, partition)
VALUES ($1, $2, $3, $4, $5, $6)
"""

UPSERT_DOCUMENT: Final = """
INSERT INTO documents (kind, id, data, unique_key, owner, updated_at)
VALUES ($1, $2, $3, $4, $5, now())
ON CONFLICT (kind, id) DO UPDATE SET
    data = excluded.data, unique_key = excluded.unique_key, owner = excluded.owner,
    updated_at = excluded.updated_at
"""

_UPSERT_WORKFLOW_EVENT: Final = """
INSERT INTO workflow_events (workflow_id, key, value) VALUES ($1, $2, $3)
ON CONFLICT (workflow_id, key) DO UPDATE SET value = excluded.value
"""

_CONSUME_SIGNALS: Final = "UPDATE signals SET consumed = true WHERE id = ANY($1::bigint[])"


async def append_batches_txn(conn: Conn, batches: Sequence[Batch]) -> None:
    """Check every batch's lease, then write them all, in the caller's transaction.
    Raises FencedError, WorkflowNotFoundError (a status for an unknown workflow) or
    asyncpg.UniqueViolationError; the caller rolls back and translates."""
    await check_leases_txn(conn, batches)
    await _insert_workflows_txn(conn, batches)
    await _upsert_steps_txn(conn, batches)
    await _update_statuses_txn(conn, [c for b in batches for c in b.statuses])
    await _insert_events_txn(conn, batches)
    await _upsert_documents_txn(conn, [d for b in batches for d in b.documents])
    await _upsert_workflow_events_txn(conn, batches)
    signal_ids = [signal_id for b in batches for signal_id in b.consumed_signals]
    if signal_ids:
        await conn.execute(_CONSUME_SIGNALS, signal_ids)


async def check_leases_txn(conn: Conn, batches: Sequence[Batch]) -> None:
    """Lock the batches' partition rows FOR SHARE; raise FencedError for the first
    batch whose epoch is not the current one."""
    partitions = sorted({b.partition for b in batches if b.epoch is not None})
    if not partitions:
        return
    rows = await conn.fetch(_LOCK_LEASES, partitions)
    epochs = {row["partition"]: row["epoch"] for row in rows}
    for batch in batches:
        if batch.epoch is not None and epochs.get(batch.partition) != batch.epoch:
            raise FencedError(batch.partition, batch.epoch)


async def _insert_workflows_txn(conn: Conn, batches: Sequence[Batch]) -> None:
    args = [workflow_args(wf) for b in batches for wf in b.workflows]
    if args:
        await conn.executemany(_INSERT_WORKFLOW, args)


async def _upsert_steps_txn(conn: Conn, batches: Sequence[Batch]) -> None:
    args = [_step_args(step, b.partition) for b in batches for step in b.steps]
    if args:
        await conn.executemany(_UPSERT_STEP, args)


async def _update_statuses_txn(conn: Conn, changes: Sequence[StatusChange]) -> None:
    if not changes:
        return
    args = [(c.workflow_id, c.status, c.result, c.error) for c in changes]
    updated = {row["id"] for row in await conn.fetchmany(_UPDATE_STATUS, args)}
    for change in changes:
        if change.workflow_id not in updated:
            raise WorkflowNotFoundError(change.workflow_id)


async def _insert_events_txn(conn: Conn, batches: Sequence[Batch]) -> None:
    args = [_event_args(event, b.partition) for b in batches for event in b.events]
    if args:
        await conn.executemany(_INSERT_EVENT, args)


async def _upsert_documents_txn(conn: Conn, documents: Sequence[Document]) -> None:
    if documents:
        await conn.executemany(UPSERT_DOCUMENT, [document_args(d) for d in documents])


async def _upsert_workflow_events_txn(conn: Conn, batches: Sequence[Batch]) -> None:
    args = [(e.workflow_id, e.key, e.value) for b in batches for e in b.workflow_events]
    if args:
        await conn.executemany(_UPSERT_WORKFLOW_EVENT, args)


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
