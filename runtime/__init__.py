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
from .partitions import partition_of
from .policy import DEFAULT_RETRY, NO_RETRY, RestartPolicy, RetryPolicy
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
    "APP_VERSION_ENV",
    "SYSTEM_CLOCK",
    "Clock",
    "LoopClock",
    "SystemClock",
    "VirtualClock",
    "DEFAULT_RETRY",
    "NO_RETRY",
    "ClusterSettings",
    "CrashingJournal",
    "DelegatingJournal",
    "NonDeterminismError",
    "NonRetryableError",
    "Operator",
    "OverloadedError",
    "PayloadDecodeError",
    "Reader",
    "RestartPolicy",
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
    "app_version",
    "current_step",
    "event_type_of",
    "otlp_exporter_from_env",
    "parse_trace_ref",
    "parse_traceparent",
    "partition_of",
    "rebuild_from_log",
    "trace_ref",
    "trace_spans",
    "workflow_spans",
]
