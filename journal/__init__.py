"""Durable state for Retinue: records, the journal contract, and its two homes.

`journal` knows nothing of actors or workflows' code; it stores rows.
"""

from .base import ClusterView, Journal, PartitionLease, WaitingStep
from .embedded import EmbeddedPostgres
from .errors import (
    EmbeddedPostgresError,
    FencedError,
    IntegrityError,
    InvalidTransitionError,
    JournalError,
    JournalUnavailableError,
    StaleRunError,
    WorkflowNotFoundError,
)
from .memory import MemoryJournal
from .postgres import PostgresJournal, open_journal
from .records import (
    FINISHED_STATUSES,
    PARTITION_COUNT,
    Batch,
    DeadLetter,
    Document,
    DomainEvent,
    NewWorkflow,
    RunFence,
    Signal,
    StatusChange,
    StepRecord,
    WorkflowEventRecord,
    WorkflowPage,
    WorkflowRow,
)

__all__ = [
    "FINISHED_STATUSES",
    "PARTITION_COUNT",
    "Batch",
    "ClusterView",
    "DeadLetter",
    "Document",
    "DomainEvent",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "FencedError",
    "IntegrityError",
    "InvalidTransitionError",
    "Journal",
    "JournalError",
    "JournalUnavailableError",
    "MemoryJournal",
    "NewWorkflow",
    "PartitionLease",
    "PostgresJournal",
    "RunFence",
    "Signal",
    "StaleRunError",
    "StatusChange",
    "StepRecord",
    "WaitingStep",
    "WorkflowEventRecord",
    "WorkflowNotFoundError",
    "WorkflowPage",
    "WorkflowRow",
    "open_journal",
]
