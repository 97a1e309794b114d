"""The PostgreSQL write path: several batches, one statement, one transaction.

The group-commit writer hands `append_batches` everything that queued up during
the previous commit. The group travels as one array per part (leases, runs, new
workflows, steps, ...) of the composite types of migration 9, in PostgreSQL's binary
format, to the `retinue_append` function, which checks the leases, the run fences
and the step and status guards, then writes every part: one round trip, one fsync.

Python and SQL meet by position: each `_Part` names its type's attributes in order
(the record's own fields, then its batch's), and a test compares them with the
database's. A new column is one name here and one attribute in a new migration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, Final

from ._pgconn import Conn
from .records import Batch, Document, NewWorkflow


class _Part:
    """One part of the group: the composite type its records travel as, and how a
    record becomes a tuple in that type's attribute order."""

    def __init__(self, type_name: str, fields: tuple[str, ...],
                 batch_fields: tuple[str, ...] = ()) -> None:
        self.type_name = type_name
        self.attributes = fields + batch_fields
        # attrgetter of two or more names returns a tuple, at C speed.
        self.record: Callable[[Any], tuple[Any, ...]] = attrgetter(*fields)


LEASE: Final = _Part("retinue_lease", ("partition", "epoch"))
RUN: Final = _Part("retinue_run", ("workflow_id", "run_id", "previous"))
NEW_WORKFLOW: Final = _Part("retinue_new_workflow", (
    "id", "name", "actor_key", "partition", "input", "idempotency_key", "request_hash",
    "parent_id", "trace_id", "app_version"))
STEP: Final = _Part("retinue_step", (
    "workflow_id", "seq", "name", "kind", "status", "attempt", "input", "output", "error",
    "started_at", "finished_at", "fire_at", "history", "app_version",
), batch_fields=("partition", "epoch", "run_id"))
STATUS: Final = _Part("retinue_status", ("workflow_id", "status", "result", "error", "parked"))
EVENT: Final = _Part("retinue_event", ("actor_key", "seq", "type", "payload", "workflow_id"),
                     batch_fields=("partition", "epoch"))
DOCUMENT: Final = _Part("retinue_document", ("kind", "id", "data", "unique_key", "owner"))
WORKFLOW_EVENT: Final = _Part("retinue_workflow_event", ("workflow_id", "key", "value"))
PARTS: Final = (LEASE, RUN, NEW_WORKFLOW, STEP, STATUS, EVENT, DOCUMENT, WORKFLOW_EVENT)

_APPEND: Final = "SELECT retinue_append({})".format(
    ", ".join(f"${i}::{part.type_name}[]" for i, part in enumerate(PARTS, start=1))
    + f", ${len(PARTS) + 1}::bigint[]")  # the consumed signals' ids

UPSERT_DOCUMENT: Final = """
INSERT INTO documents (kind, id, data, unique_key, owner, updated_at)
VALUES ($1, $2, $3, $4, $5, now())
ON CONFLICT (kind, id) DO UPDATE SET
    data = excluded.data, unique_key = excluded.unique_key, owner = excluded.owner,
    updated_at = excluded.updated_at
"""


async def append_batches(conn: Conn, batches: Sequence[Batch]) -> None:
    """Write `batches` in ONE statement (the retinue_append function, one implicit
    transaction and one round trip): lease and run checks first, then every part.
    Raises asyncpg errors; `_pgconn.translated` turns them into the journal's."""
    await conn.execute(_APPEND, *group(batches))


def group(batches: Sequence[Batch]) -> tuple[list[Any], ...]:
    """retinue_append's arguments for `batches`: one list of tuples per part (in
    `PARTS` order), then the consumed signals' ids."""
    steps: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    for b in batches:
        # What a step and an event carry of their batch: the lease it was written
        # under (a step also its run), as STEP's and EVENT's batch_fields say.
        lease = LEASE.record(b)
        if b.steps:
            of_batch = (*lease, b.run.run_id if b.run is not None else None)
            steps += [STEP.record(step) + of_batch for step in b.steps]
        if b.events:
            events += [EVENT.record(e) + lease for e in b.events]
    return (
        # One per partition and epoch: a group holds many batches of one partition.
        list({LEASE.record(b) for b in batches if b.epoch is not None}),
        [RUN.record(b.run) for b in batches if b.run is not None],
        [NEW_WORKFLOW.record(wf) for b in batches for wf in b.workflows],
        steps,
        [STATUS.record(change) for b in batches for change in b.statuses],
        events,
        [DOCUMENT.record(doc) for b in batches for doc in b.documents],
        [WORKFLOW_EVENT.record(e) for b in batches for e in b.workflow_events],
        [signal_id for b in batches for signal_id in b.consumed_signals],
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
