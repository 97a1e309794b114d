"""What PostgresJournal's parts share: the pool they read it through, and the
columns and row conversions more than one of them uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

import asyncpg

from ._pgconn import Pool
from .records import WorkflowRow

__all__ = ["PING", "UNFINISHED", "WORKFLOW_COLUMNS", "PostgresBase", "optional", "workflow_row"]

_R = TypeVar("_R")

WORKFLOW_COLUMNS: Final = """
    id, position, name, actor_key, partition, status, input, result, error,
    idempotency_key, request_hash, parent_id, trace_id, cancel_requested,
    created_at, updated_at, run_id, pruned_at, forked_from, forked_at_seq, app_version,
    parked
"""
UNFINISHED: Final = "status NOT IN ('completed', 'failed', 'cancelled')"
PING: Final = "SELECT 1"


class PostgresBase:
    """The state every part of PostgresJournal works on: the pool."""

    _pool: Pool


def workflow_row(row: asyncpg.Record) -> WorkflowRow:
    return WorkflowRow(**row)


def optional(convert: Callable[[asyncpg.Record], _R], row: asyncpg.Record | None) -> _R | None:
    return None if row is None else convert(row)
