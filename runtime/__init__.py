"""The Retinue runtime: actors with mailboxes, durable workflows, supervision.

Import from here; the modules behind it are private.
"""

from .clock import SYSTEM_CLOCK, Clock, LoopClock, SystemClock, VirtualClock
from .cluster import ClusterSettings
from .commands import Operator
from .context import StepInfo, Wakeup, WorkflowContext, current_step
from .errors import (
    NonDeterminismError,
    NonRetryableError,
    OverloadedError,
    PayloadDecodeError,
    RetinueError,
    SimulatedCrash,
    StepFailedError,
    UnknownWorkflowTypeError,
    WorkflowCancelledError,
    WorkflowFailedError,
)
from .faults import CrashingJournal, DelegatingJournal
from .forks import fork_workflow
from .partitions import partition_of
from .policy import DEFAULT_RETRY, NO_RETRY, RestartPolicy, RetryPolicy
from .replay import (
    HISTORY_FORMAT,
    ReplayReport,
    ReplayResult,
    check_history_replays,
    export_history,
    load_history,
    replay_check,
)
from .retention import (
    DEFAULT_IDEMPOTENCY_TTL,
    DEFAULT_RETENTION,
    PruneCounts,
    Pruner,
    RetentionSettings,
    prune_journal,
)
from .store import (
    Reader,
    WriteSet,
    event_type_of,
    rebuild_from_log,
)
from .system import Runtime, RuntimeStatistics, WorkflowFn
from .tracing import (
    Span,
    TraceExporter,
    otlp_exporter_from_env,
    parse_trace_ref,
    parse_traceparent,
    trace_ref,
    trace_spans,
    workflow_spans,
)
from .versions import APP_VERSION_ENV, app_version

__all__ = [
    "DEFAULT_IDEMPOTENCY_TTL",
    "DEFAULT_RETENTION",
    "APP_VERSION_ENV",
    "SYSTEM_CLOCK",
    "Clock",
    "LoopClock",
    "SystemClock",
    "VirtualClock",
    "DEFAULT_RETRY",
    "HISTORY_FORMAT",
    "NO_RETRY",
    "ClusterSettings",
    "CrashingJournal",
    "DelegatingJournal",
    "NonDeterminismError",
    "NonRetryableError",
    "Operator",
    "OverloadedError",
    "PayloadDecodeError",
    "PruneCounts",
    "Pruner",
    "Reader",
    "ReplayReport",
    "ReplayResult",
    "RestartPolicy",
    "RetentionSettings",
    "RetinueError",
    "RetryPolicy",
    "Runtime",
    "RuntimeStatistics",
    "SimulatedCrash",
    "Span",
    "StepFailedError",
    "StepInfo",
    "TraceExporter",
    "UnknownWorkflowTypeError",
    "Wakeup",
    "WorkflowCancelledError",
    "WorkflowContext",
    "WorkflowFailedError",
    "WorkflowFn",
    "WriteSet",
    "check_history_replays",
    "app_version",
    "current_step",
    "event_type_of",
    "export_history",
    "fork_workflow",
    "load_history",
    "otlp_exporter_from_env",
    "parse_trace_ref",
    "parse_traceparent",
    "prune_journal",
    "partition_of",
    "rebuild_from_log",
    "replay_check",
    "trace_ref",
    "trace_spans",
    "workflow_spans",
]
