"""Traces from the journal: every workflow and every step is a span.

The journal is the only source. A workflow's trace id is its `trace_id` (its
children share their parent's), and span ids are derived from journal keys (a
workflow's id, a step's `workflow_id:seq`, an attempt's place in the step's
history), so a replay after a crash, or a second export, names the same spans.

`trace_spans` reads a workflow and its descendants for the dashboard's timeline.
`TraceExporter` sends each workflow's spans over OpenTelemetry when it ends
(the `opentelemetry` extra; imported only when used).

An incoming W3C `traceparent` (`parse_traceparent`) gives a root workflow its
trace id and a remote parent span. Until the journal has a column for that span,
it travels in the `trace_id` column as `<trace id>-<parent span id>`
(`trace_ref` / `parse_trace_ref`), which children copy along with the trace id.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import msgspec

from journal import FINISHED_STATUSES, PARKED, Journal, StepRecord, WorkflowRow

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "Span",
    "TraceExporter",
    "otlp_exporter_from_env",
    "parse_trace_ref",
    "parse_traceparent",
    "to_otel_spans",
    "trace_ref",
    "trace_spans",
    "workflow_spans",
]

_log = logging.getLogger("retinue.tracing")

# version-trace id-parent id-flags, lowercase hex; later versions may append "-...".
_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_HEX_TRACE: Final = re.compile(r"^[0-9a-f]{32}$")
_HEX_SPAN: Final = re.compile(r"^[0-9a-f]{16}$")
_OTLP_ENDPOINTS: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class Span(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One span of a trace, as the journal rows describe it.

    kind: "workflow", a step kind ("step", "write", "wait", "child", "event",
    "sleep"), or "attempt" (one try of a step that was tried more than once).
    finished_at is None while it runs (or waits)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None = None
    remote_parent: bool = False  # the parent is the caller's (a traceparent header)
    workflow_id: str
    workflow_name: str
    actor_key: str
    kind: str
    name: str
    status: str
    seq: int | None = None
    attempt: int | None = None
    started_at: datetime
    finished_at: datetime | None = None
    fire_at: datetime | None = None
    error: str | None = None
    child_workflow_id: str | None = None
    timed_out: bool | None = None
    # The application version the workflow started under, or that wrote the step.
    app_version: str | None = None
    # A parked workflow's mismatch (its span's "parked" event):
    # {seq, expected, found, found_version, running_version}.
    parked: dict[str, Any] | None = None


# -- trace context ----------------------------------------------------------------


def parse_traceparent(header: str | None) -> tuple[str, str] | None:
    """(trace id, parent span id) of a W3C `traceparent` header, or None when it
    is absent or invalid (the spec says to ignore it then, not to refuse)."""
    found = _TRACEPARENT.fullmatch((header or "").strip())
    if found is None:
        return None
    version, trace_id, span_id, _flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id


def trace_ref(trace_id: str, parent_span_id: str | None = None) -> str:
    """What a workflow keeps in its `trace_id` column: the trace id, and the
    caller's span when a traceparent came with the command."""
    return f"{trace_id}-{parent_span_id}" if parent_span_id else trace_id


def parse_trace_ref(ref: str) -> tuple[str, str | None]:
    """(trace id, remote parent span id or None) of a `trace_id` column value.
    A value that is not 32 hex digits (older rows, tests) is hashed into one."""
    trace_id, _, span_id = ref.partition("-")
    if not _HEX_TRACE.match(trace_id):
        return hashlib.sha256(ref.encode()).hexdigest()[:32], None
    return trace_id, span_id if _HEX_SPAN.match(span_id) else None


def _span_id(*parts: object) -> str:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).hexdigest()
    return digest if digest != "0" * 16 else "0" * 15 + "1"


def _workflow_span_id(workflow_id: str) -> str:
    return _span_id("workflow", workflow_id)


def _step_span_id(workflow_id: str, seq: int) -> str:
    return _span_id("step", workflow_id, seq)


def _parent_of(row: WorkflowRow, remote: str | None) -> tuple[str | None, bool]:
    """A child's parent span is the step that started it (its id is
    `<parent id>:<seq>`); a root's is the caller's, if a traceparent came."""
    if row.parent_id is None:
        return remote, remote is not None
    prefix, _, seq = row.id.rpartition(":")
    if prefix == row.parent_id and seq.isdigit():
        return _step_span_id(row.parent_id, int(seq)), False
    return _workflow_span_id(row.parent_id), False


# -- spans from journal rows --------------------------------------------------------


def workflow_spans(row: WorkflowRow, steps: Sequence[StepRecord]) -> list[Span]:
    """The spans of one workflow: itself, each step, and each attempt of a step
    that was tried more than once (from its history), in seq order."""
    trace_id, remote = parse_trace_ref(row.trace_id)
    parent, is_remote = _parent_of(row, remote)
    common: dict[str, Any] = {"trace_id": trace_id, "workflow_id": row.id,
                              "workflow_name": row.name, "actor_key": row.actor_key}
    root = Span(
        **common, span_id=_workflow_span_id(row.id), parent_span_id=parent,
        remote_parent=is_remote, kind="workflow", name=row.name, status=row.status,
        started_at=row.created_at, error=row.error,
        finished_at=row.updated_at if row.status in FINISHED_STATUSES else None,
        app_version=row.app_version or None,
        parked=row.parked if row.status == PARKED and isinstance(row.parked, dict) else None,
    )
    spans = [root]
    for step in steps:
        spans.append(_step_span(step, root, common))
        spans.extend(_attempt_spans(step, common))
    return spans


def _step_span(step: StepRecord, root: Span, common: Mapping[str, Any]) -> Span:
    child = str(step.output) if step.kind == "child" and step.status == "completed" else None
    timed_out = None
    if step.kind == "wait" and isinstance(step.output, dict):
        timed_out = bool(step.output.get("timed_out"))
    return Span(
        **common, span_id=_step_span_id(step.workflow_id, step.seq),
        parent_span_id=root.span_id, kind=step.kind, name=step.name, status=step.status,
        seq=step.seq, attempt=step.attempt, started_at=step.started_at,
        finished_at=step.finished_at, fire_at=step.fire_at, error=step.error,
        child_workflow_id=child, timed_out=timed_out, app_version=step.app_version or None,
    )


def _attempt_spans(step: StepRecord, common: Mapping[str, Any]) -> Iterable[Span]:
    history = step.history if isinstance(step.history, list) else []
    parent = _step_span_id(step.workflow_id, step.seq)
    # The place in the history names an attempt: an operator's retry numbers the
    # attempts from 1 again, so the attempt number alone is not unique.
    for place, entry in enumerate(history, start=1):
        began, ended = _when(entry.get("started_at")), _when(entry.get("finished_at"))
        if began is None:
            continue
        error = entry.get("error")
        attempt = int(entry.get("attempt") or place)
        yield Span(
            **common, span_id=_span_id("attempt", step.workflow_id, step.seq, place),
            parent_span_id=parent, kind="attempt", name=f"{step.name} #{attempt}",
            status="failed" if error else "completed", seq=step.seq, attempt=attempt,
            started_at=began, finished_at=ended, error=str(error) if error else None,
        )


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


async def trace_spans(
    journal: Journal, workflow_id: str, *, max_workflows: int = 100
) -> list[Span]:
    """The spans of a workflow and its descendants (breadth first, at most
    `max_workflows` workflows); [] if the workflow is unknown. Cancellable."""
    row = await journal.get_workflow(workflow_id)
    if row is None:
        return []
    spans: list[Span] = []
    queue, seen = [row], 0
    while queue and seen < max_workflows:
        current = queue.pop(0)
        seen += 1
        spans.extend(workflow_spans(current, await journal.load_steps(current.id)))
        queue.extend(await journal.children(current.id))
    return spans


# -- OpenTelemetry export -------------------------------------------------------------


class TraceExporter:
    """Exports each finished workflow's spans through an OpenTelemetry SpanExporter.

    `workflow_finished` is a Runtime finish listener: it queues the row, never
    blocks, and drops (counting in `dropped`) past `max_queue`. `run`, started in
    a task group, reads each queued workflow's steps and hands its spans to the
    exporter in a worker thread (exporters block on the network). Cancel it to stop;
    the exporter is shut down on the way out."""

    def __init__(
        self, journal: Journal, exporter: SpanExporter, *, service_name: str = "retinue",
        max_queue: int = 1000,
    ) -> None:
        self._journal = journal
        self._exporter = exporter
        self._service_name = service_name
        self._max_queue = max_queue
        self._queue: list[WorkflowRow] = []
        self._wake: anyio.Event | None = None
        self.exported = 0
        self.dropped = 0

    def workflow_finished(self, row: WorkflowRow) -> None:
        """Queue a finished workflow for export (a Runtime finish listener)."""
        if len(self._queue) >= self._max_queue:
            self.dropped += 1
            return
        self._queue.append(row)
        if self._wake is not None:
            self._wake.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Export queued workflows until cancelled."""
        resource = _resource(self._service_name)
        task_status.started()
        try:
            while True:
                if not self._queue:
                    self._wake = anyio.Event()
                    await self._wake.wait()
                rows, self._queue = self._queue, []
                for row in rows:
                    await self._export(row, resource)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await anyio.to_thread.run_sync(self._exporter.shutdown)

    async def _export(self, row: WorkflowRow, resource: Any) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            steps = await self._journal.load_steps(row.id)
            current = await self._journal.get_workflow(row.id) or row
            spans = to_otel_spans(workflow_spans(current, steps), resource)
            result = await anyio.to_thread.run_sync(self._exporter.export, spans)
        except Exception:  # noqa: BLE001 - tracing is best effort: it never stops the server
            _log.exception("could not export the trace of workflow %s", row.id)
            return
        if result is not SpanExportResult.SUCCESS:
            _log.warning("the exporter refused the trace of workflow %s (%s)", row.id, result)
            return
        self.exported += 1


def _resource(service_name: str) -> Any:
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": service_name})


def to_otel_spans(spans: Sequence[Span], resource: Any = None) -> list[ReadableSpan]:
    """OpenTelemetry SDK spans with the journal's ids and times. A span still
    open (a wait, a step in flight) ends where its workflow does."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, TraceFlags

    scope = InstrumentationScope("retinue.runtime.tracing")
    ends = {s.workflow_id: s.finished_at for s in spans if s.kind == "workflow"}
    converted = []
    for span in spans:
        trace = int(span.trace_id, 16)
        context = SpanContext(trace, int(span.span_id, 16), is_remote=False,
                              trace_flags=TraceFlags(TraceFlags.SAMPLED))
        parent = None
        if span.parent_span_id is not None:
            parent = SpanContext(trace, int(span.parent_span_id, 16),
                                 is_remote=span.remote_parent,
                                 trace_flags=TraceFlags(TraceFlags.SAMPLED))
        end = span.finished_at or ends.get(span.workflow_id) or span.started_at
        converted.append(ReadableSpan(
            name=span.name, context=context, parent=parent, resource=resource,
            attributes=_attributes(span), status=_status(span), events=_events(span),
            start_time=_nanos(span.started_at), end_time=_nanos(max(end, span.started_at)),
            instrumentation_scope=scope,
        ))
    return converted


def _attributes(span: Span) -> dict[str, str | int | bool]:
    attributes: dict[str, str | int | bool] = {
        "retinue.kind": span.kind, "retinue.status": span.status,
        "retinue.workflow.id": span.workflow_id, "retinue.workflow.name": span.workflow_name,
        "retinue.actor.key": span.actor_key,
    }
    optional: dict[str, str | int | bool | None] = {
        "retinue.step.seq": span.seq, "retinue.step.attempt": span.attempt,
        "retinue.child.workflow.id": span.child_workflow_id,
        "retinue.wait.fire_at": span.fire_at.isoformat() if span.fire_at else None,
        "retinue.wait.timed_out": span.timed_out, "retinue.error": span.error,
        "retinue.app_version": span.app_version,
    }
    attributes.update({k: v for k, v in optional.items() if v is not None})
    return attributes


def _status(span: Span) -> Any:
    from opentelemetry.trace import Status, StatusCode

    if span.status in ("failed", "cancelled", PARKED) or (
            span.kind == "attempt" and span.error):
        return Status(StatusCode.ERROR, span.error or span.status)
    if span.status == "completed":
        return Status(StatusCode.OK)
    return Status(StatusCode.UNSET)


def _events(span: Span) -> list[Any]:
    """A parked workflow's span carries the mismatch as its "parked" event."""
    from opentelemetry.sdk.trace import Event

    if span.parked is None:
        return []
    attributes = {f"retinue.parked.{key}": value for key, value in span.parked.items()
                  if isinstance(value, (str, int))}
    return [Event("parked", attributes, _nanos(span.finished_at or span.started_at))]


def _nanos(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000) * 1000


def otlp_exporter_from_env(
    journal: Journal, environ: Mapping[str, str], *, service_name: str = "retinue"
) -> TraceExporter | None:
    """A TraceExporter over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT (or
    ..._TRACES_ENDPOINT) is set and the `opentelemetry` extra is installed; else
    None (with a warning when the endpoint is set but the extra is missing)."""
    if not any(environ.get(name) for name in _OTLP_ENDPOINTS):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        _log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed; "
                     "no traces are exported. Install it: pip install 'retinue[opentelemetry]'")
        return None
    name = environ.get("OTEL_SERVICE_NAME") or service_name
    return TraceExporter(journal, OTLPSpanExporter(), service_name=name)
