"""Builders shared by the journal contract suites (tests/test_journal_*.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from journal import (
    Batch,
    Document,
    DomainEvent,
    Journal,
    NewWorkflow,
    StepRecord,
)
from journal.migrations import MIGRATIONS

__all__ = [
    "T0", "TRICKY", "batch", "doc", "event", "is_utc", "migrate_to", "new_wf", "statuses", "step",
]

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

# A payload that exercises the JSON codec: unicode, nesting, floats, nulls.
TRICKY: Any = {"name": "Zoë ✓", "n": [1, 2.5, -3], "ok": True, "none": None, "deep": {"a": [{}]}}


def new_wf(wf_id: str, **fields: Any) -> NewWorkflow:
    fields.setdefault("name", "invite")
    fields.setdefault("actor_key", "customer-1")
    fields.setdefault("partition", 0)
    return NewWorkflow(id=wf_id, **fields)


def step(wf_id: str, seq: int, status: str = "started", **fields: Any) -> StepRecord:
    fields.setdefault("name", f"step-{seq}")
    fields.setdefault("started_at", T0)
    return StepRecord(workflow_id=wf_id, seq=seq, status=status, **fields)


def event(actor_key: str, seq: int, **fields: Any) -> DomainEvent:
    fields.setdefault("type", "Happened")
    return DomainEvent(actor_key=actor_key, seq=seq, **fields)


def doc(doc_id: str, **fields: Any) -> Document:
    fields.setdefault("kind", "customer")
    fields.setdefault("data", {"id": doc_id})
    return Document(id=doc_id, **fields)


def batch(**parts: Any) -> Batch:
    """A batch on partition 0 at epoch 0, where every fresh journal starts."""
    parts.setdefault("partition", 0)
    parts.setdefault("epoch", 0)
    return Batch(**parts)


async def statuses(journal: Journal, *ids: str) -> list[str | None]:
    rows = [await journal.get_workflow(wf_id) for wf_id in ids]
    return [None if row is None else row.status for row in rows]


def is_utc(moment: datetime | None) -> bool:
    return moment is not None and moment.utcoffset() == timedelta(0)


async def migrate_to(conn: asyncpg.Connection, last: int) -> None:
    """Bring an empty database to migration `last`, as a release that shipped it
    would have left it: the tests of a later migration start from there."""
    await conn.execute("CREATE TABLE retinue_migrations (version integer PRIMARY KEY, "
                       "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
    for migration in MIGRATIONS:
        if migration.version <= last:
            await conn.execute(migration.sql)
            await conn.execute("INSERT INTO retinue_migrations (version, name) VALUES ($1, $2)",
                               migration.version, migration.name)
