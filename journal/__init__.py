"""Durable state for Retinue: records, the journal contract, and its two homes.

`journal` knows nothing of actors or workflows' code; it stores rows.
"""

from .base import (
    Cluster,
    ClusterView,
    DeadLetters,
    Journal,
    PartitionLease,
    Projections,
    WaitingStep,
    Workflows,
    Writer,
)
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
    PARKED,
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
    "PARKED",
    "PARTITION_COUNT",
    "Batch",
    "Cluster",
    "ClusterView",
    "DeadLetter",
    "DeadLetters",
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
    "Projections",
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
    "Workflows",
    "Writer",
    "open_journal",
]
