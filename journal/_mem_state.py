"""What MemoryJournal's parts share: its state (the rows, on one lock) and the
journal's clock."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import anyio
import msgspec

from .errors import WorkflowNotFoundError
from .records import (
    PARTITION_COUNT,
    DeadLetter,
    Document,
    DomainEvent,
    Signal,
    StepRecord,
    WorkflowRow,
)

__all__ = ["Lease", "MemoryState", "Node"]


class Lease(NamedTuple):
    owner: str
    epoch: int
    expires_at: float | None  # on the journal's clock; None: never leased


class Node(NamedTuple):
    heartbeat_at: float
    expires_at: float


class MemoryState:
    """The tables, as dicts. A lock makes each call that changes several of them
    atomic with respect to the others, like a transaction would."""

    def __init__(self, *, clock: Callable[[], float] = time.time, guards: bool = True) -> None:
        self._lock = anyio.Lock()
        self._clock = clock
        # Test-only switch: False drops the run fence and the step and status
        # guards (to show that the simulation catches what they stop).
        self._guards = guards
        self._leases = {p: Lease("", 0, None) for p in range(PARTITION_COUNT)}
        self._nodes: dict[str, Node] = {}
        self._attached: dict[str, list[Callable[[str], None]]] = {}
        self._workflows: dict[str, WorkflowRow] = {}
        self._by_idempotency_key: dict[str, str] = {}
        self._positions = itertools.count(1)
        self._steps: dict[str, dict[int, StepRecord]] = {}
        self._events: dict[str, dict[int, DomainEvent]] = {}
        self._documents: dict[tuple[str, str], Document] = {}
        self._workflow_events: dict[tuple[str, str], Any] = {}
        self._signals: dict[int, Signal] = {}
        self._signal_ids = itertools.count(1)
        self._dead_letters: dict[int, DeadLetter] = {}
        self._dead_letter_ids = itertools.count(1)

    def _now(self) -> datetime:
        """Wall time on the journal's clock (PostgreSQL's now())."""
        return datetime.fromtimestamp(self._clock(), UTC)

    def _free_key(self, row: WorkflowRow) -> None:
        """The row lets go of its idempotency key (expired): another may take it."""
        if row.idempotency_key is not None:
            self._by_idempotency_key.pop(row.idempotency_key, None)
            self._workflows[row.id] = msgspec.structs.replace(row, idempotency_key=None)

    def _require(self, workflow_id: str) -> WorkflowRow:
        row = self._workflows.get(workflow_id)
        if row is None:
            raise WorkflowNotFoundError(workflow_id)
        return row
