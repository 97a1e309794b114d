"""The HTTP edge's request and reply bodies, and how a reply goes on the wire.

Every body is a frozen msgspec Struct: requests refuse unknown fields, replies are
encoded with one shared encoder. The OpenAPI document's schemas are generated from
these classes (their names and docstrings included), so a change here is a change
of the HTTP contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import msgspec
from aiohttp import web

from runtime import Span

__all__ = [
    "WORKFLOW_STATUSES",
    "ActionReply",
    "ActorReply",
    "ActorsQuery",
    "ActorsReply",
    "CustomerReply",
    "DeadLetterReply",
    "DeadLettersReply",
    "ErrorReply",
    "EventReply",
    "EventsQuery",
    "EventsReply",
    "ForkReply",
    "ForkRequest",
    "HistoryExport",
    "InviteReply",
    "InviteRequest",
    "Latency",
    "MessageReply",
    "MessagesReply",
    "OverviewQuery",
    "OverviewReply",
    "PendingReply",
    "Percentiles",
    "Rates",
    "RedeliverReply",
    "RuntimeNumbers",
    "Sample",
    "StatusReply",
    "StepReply",
    "TraceReply",
    "VerifyReply",
    "VerifyRequest",
    "WorkflowCountsReply",
    "WorkflowQuery",
    "WorkflowReply",
    "WorkflowSummary",
    "WorkflowsReply",
    "encoder",
    "every_status",
    "json_response",
]

WORKFLOW_STATUSES: Final = (
    "pending", "running", "waiting", "parked", "completed", "failed", "cancelled"
)


def every_status(counts: Mapping[str, int]) -> dict[str, int]:
    """`counts` per workflow status with every status present, in the usual order."""
    return {status: counts.get(status, 0) for status in WORKFLOW_STATUSES}


# -- requests ----------------------------------------------------------------------------


class _Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request body: an unknown field is an error, never silently dropped."""


class InviteRequest(_Body, frozen=True):
    email: str


class VerifyRequest(_Body, frozen=True):
    token: str


class ForkRequest(_Body, frozen=True):
    """Start the workflow again from step `from_seq`: its completed steps before
    it are kept (not run again), the rest run with today's code."""

    from_seq: int


class WorkflowQuery(_Body, frozen=True):
    """The query of GET /workflows."""

    status: Literal[
        "pending", "running", "waiting", "parked", "completed", "failed", "cancelled"
    ] | None = None
    actor: Annotated[str, msgspec.Meta(min_length=1, max_length=300)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 50
    # Opaque to clients; both journals hand out a row position (see list_workflows).
    cursor: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,18}$")] | None = None
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    # A customer's email or id: their actor's workflows.
    customer: Annotated[str, msgspec.Meta(min_length=1, max_length=300)] | None = None
    # Created at or after `since`, and before `until` (RFC 3339 with an offset).
    since: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    until: Annotated[datetime, msgspec.Meta(tz=True)] | None = None


class OverviewQuery(_Body, frozen=True):
    """The query of GET /api/overview: how many minutes of samples."""

    minutes: Annotated[int, msgspec.Meta(ge=1, le=15)] = 5


class ActorsQuery(_Body, frozen=True):
    """The query of GET /api/actors: busiest first, optionally those whose key contains q."""

    q: Annotated[str, msgspec.Meta(max_length=300)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 200


class EventsQuery(_Body, frozen=True):
    """The query of GET /actors/{key}/events: events after seq `after`, oldest first."""

    after: Annotated[int, msgspec.Meta(ge=0)] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 200


# -- replies -----------------------------------------------------------------------------


class _Reply(msgspec.Struct, frozen=True, kw_only=True):
    pass


class ErrorReply(_Reply, frozen=True, omit_defaults=True):
    error: str
    id: str | None = None


class InviteReply(_Reply, frozen=True):
    id: str
    email: str
    invited: bool
    workflow_id: str


class PendingReply(_Reply, frozen=True):
    """Accepted durably, not resolved within the resolve timeout: poll status_url."""

    workflow_id: str
    status_url: str


class VerifyReply(_Reply, frozen=True):
    id: str
    verified: bool


class CustomerReply(_Reply, frozen=True):
    id: str
    email: str
    invited: bool
    verified: bool
    status: str
    invited_at: datetime | None
    verified_at: datetime | None


class MessageReply(_Reply, frozen=True):
    id: str
    type: str
    email: str
    status: str
    idempotency_key: str
    recorded_at: datetime | None
    delivered_at: datetime | None


class MessagesReply(_Reply, frozen=True):
    customer_id: str
    messages: list[MessageReply]


class WorkflowSummary(_Reply, frozen=True):
    id: str
    name: str
    actor_key: str
    status: str
    parent_id: str | None
    error: str | None
    cancel_requested: bool
    idempotency_key: str | None
    trace_id: str
    created_at: datetime
    updated_at: datetime
    # Set once retention removed its steps, signals and published events (it had
    # finished longer ago than RETINUE_RETENTION): `steps` is empty then, not lost.
    pruned_at: datetime | None
    # A fork: the workflow it was forked from, and at which seq (else null).
    forked_from: str | None
    forked_at_seq: int | None
    # The application version it started under ("" if it predates versions).
    app_version: str
    # Why it is parked: {seq, expected, found, found_version, running_version}.
    parked: Any


class StepReply(_Reply, frozen=True):
    seq: int
    name: str
    kind: str
    status: str
    attempt: int
    started_at: datetime
    finished_at: datetime | None
    fire_at: datetime | None
    output: Any
    error: str | None
    # Every attempt when there was more than one: [{attempt, started_at, finished_at, error}].
    history: Any = None
    # The application version whose code wrote the record.
    app_version: str = ""


class WorkflowReply(WorkflowSummary, frozen=True):
    input: Any
    result: Any
    steps: list[StepReply]
    children: list[WorkflowSummary]
    # The workflows forked from this one, oldest first.
    forks: list[WorkflowSummary]


class WorkflowsReply(_Reply, frozen=True):
    workflows: list[WorkflowSummary]
    next_cursor: str | None


class ActionReply(_Reply, frozen=True):
    """An operator action was recorded; `workflows` are the ids it reaches."""

    workflow_id: str
    action: str
    workflows: list[str]
    status_url: str


class ForkReply(_Reply, frozen=True):
    """A fork was accepted: `workflow_id` is the new workflow; it runs from `from_seq`."""

    workflow_id: str
    forked_from: str
    from_seq: int
    status_url: str


class HistoryExport(_Reply, frozen=True):
    """One workflow's history (runtime.export_history, tokens redacted): its row,
    steps and signals. `runtime.testing.assert_replays` checks that code replays it."""

    format: str
    workflow: dict[str, Any]
    steps: list[dict[str, Any]]
    signals: list[dict[str, Any]]


class DeadLetterReply(_Reply, frozen=True):
    id: int
    actor_key: str
    message: Any
    error: str
    created_at: datetime
    redelivered_at: datetime | None


class DeadLettersReply(_Reply, frozen=True):
    dead_letters: list[DeadLetterReply]


class RedeliverReply(_Reply, frozen=True):
    id: int
    workflow_id: str
    status_url: str


class StatusReply(_Reply, frozen=True):
    status: str


class Percentiles(_Reply, frozen=True):
    """Latency in seconds (None without observations), from histogram buckets."""

    count: int
    p50: float | None
    p90: float | None
    p99: float | None


class RuntimeNumbers(_Reply, frozen=True):
    ready: bool
    active_actors: int
    mailbox_depth: int
    in_flight: int
    timers: int
    passivations: int
    actor_restarts: int
    dead_letters: int
    replays: int


class Rates(_Reply, frozen=True):
    """Per second over the window; error rates are fractions (0 to 1)."""

    started: float
    completed: float
    failed: float
    cancelled: float
    steps: float
    step_errors: float
    commands: float
    command_errors: float
    workflow_error_rate: float
    step_error_rate: float


class Latency(_Reply, frozen=True):
    commands: Percentiles
    steps: Percentiles
    journal_append: Percentiles


class Sample(_Reply, frozen=True):
    """One interval between two samples: `t` its end (Unix seconds), rates per second."""

    t: float
    seconds: float
    started: float
    completed: float
    failed: float
    step_errors: float
    commands: float
    command_errors: float
    command_p50: float | None
    command_p99: float | None
    step_p50: float | None
    step_p99: float | None
    in_flight: int
    mailbox_depth: int
    active_actors: int


class WorkflowCountsReply(_Reply, frozen=True):
    """How many workflows are in each status (every status, 0 where none)."""

    counts: dict[str, int]


class OverviewReply(_Reply, frozen=True):
    now: datetime
    counts: dict[str, int]
    total: int
    runtime: RuntimeNumbers
    window_seconds: float
    rates: Rates
    latency: Latency
    samples: list[Sample]


class ActorReply(_Reply, frozen=True):
    key: str
    mailbox_depth: int
    current_workflow: str | None


class ActorsReply(_Reply, frozen=True):
    active: int
    passivated: int
    mailbox_depth: int
    in_flight: int
    actors: list[ActorReply]
    truncated: bool


class EventReply(_Reply, frozen=True):
    seq: int
    type: str
    payload: Any
    workflow_id: str | None
    created_at: datetime | None


class EventsReply(_Reply, frozen=True):
    actor_key: str
    events: list[EventReply]
    next_after: int | None


class TraceReply(_Reply, frozen=True):
    """A workflow's trace: its spans and its descendants', from the journal."""

    trace_id: str
    workflow_id: str
    spans: list[Span]


# -- on the wire -------------------------------------------------------------------------


encoder: Final = msgspec.json.Encoder()


def json_response(
    status: int, reply: Any, headers: Mapping[str, str] | None = None
) -> web.Response:
    """`reply` encoded as JSON, with `status` and any extra `headers`."""
    return web.Response(
        status=status, body=encoder.encode(reply), content_type="application/json",
        headers=headers,
    )
