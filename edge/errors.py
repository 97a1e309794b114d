"""The edge's error catalogue: every answer other than success, and what to do about it.

An `ApiError` becomes `{"error": message, "id": ...}` with its status (the error
middleware answers it). Each kind of failure is a subclass with named constructors,
so a message is written once and says what happened and what to fix.

`reason` labels a refused command in `retinue_commands_rejected_total{type,reason}`;
it is None for answers to a command that was already accepted (the workflow ran and
said no, or ended), which are not refusals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec
from aiohttp import web

from actors import InvalidEmailError, NotVerifiableError
from journal import WorkflowRow
from runtime import OverloadedError

from .schemas import ErrorReply, json_response

__all__ = [
    "ApiError",
    "BodyTooLarge",
    "Conflict",
    "Forbidden",
    "IdempotencyConflict",
    "InternalError",
    "InvalidBody",
    "InvalidEmail",
    "InvalidFork",
    "InvalidId",
    "InvalidIdempotencyKey",
    "InvalidQuery",
    "InvalidText",
    "MethodNotAllowed",
    "MisdirectedRequest",
    "NotFound",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "WrongToken",
    "workflow_ended",
]


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
        return json_response(self.status, ErrorReply(error=_encodable(self.message),
                                                     id=self.id), self.headers)

    def after_acceptance(self) -> ApiError:
        """The same answer to a command that was already accepted: not a refusal."""
        return ApiError(self.status, self.message, id=self.id, headers=self.headers)


def _encodable(text: str) -> str:
    """`text` with any lone surrogate escaped: a message that quotes what the client
    sent (a path, a header) must still encode as UTF-8 JSON."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _with_path(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    return text if " - at `" in text else f"{text} - at `$`"


# -- 400: the request is malformed ------------------------------------------------------


class InvalidBody(ApiError):
    """400: the JSON body is missing, not JSON, or not the expected shape."""

    def __init__(self, problem: str) -> None:
        super().__init__(400, problem, reason="invalid_body")

    @classmethod
    def empty(cls, example: str) -> InvalidBody:
        return cls(f"the request body is empty; send JSON like {example}")

    @classmethod
    def malformed(cls, exc: msgspec.ValidationError, example: str) -> InvalidBody:
        return cls(f"invalid request body: {_with_path(exc)}; send JSON like {example}")

    @classmethod
    def not_json(cls, exc: Exception, example: str) -> InvalidBody:
        return cls(f"the request body is not valid JSON ({exc}); send JSON like {example}")

    @classmethod
    def holds_nul(cls, field: str) -> InvalidBody:
        return cls(f"the string holds a NUL character (\\u0000) - at `$.{field}`; remove it")

    @classmethod
    def unreadable(cls, exc: Exception) -> InvalidBody:
        return cls(f"the request body could not be read ({exc}); check its "
                   "Content-Encoding, or send it plain")

    @classmethod
    def token_length(cls, longest: int) -> InvalidBody:
        return cls(f"the token must be 1 to {longest} characters - at `$.token`; "
                   "send the token from the invitation message")


class InvalidEmail(ApiError):
    """400: `$.email` is not an email address."""

    def __init__(self, exc: InvalidEmailError) -> None:
        super().__init__(400, f"{exc} - at `$.email`", reason="invalid_email")


class InvalidId(ApiError):
    """400: the id in the path cannot be an id of that kind."""

    def __init__(self, problem: str) -> None:
        super().__init__(400, problem, reason="invalid_id")

    @classmethod
    def customer(cls, raw: str) -> InvalidId:
        return cls(f"{raw[:80]!r} is not a customer id; customer ids are UUIDs like "
                   "'8c0ae2d9-1c2b-5e8f-9a57-3f0e6d7c4b21'")

    @classmethod
    def dead_letter(cls, raw: str) -> InvalidId:
        return cls(f"{raw[:80]!r} is not a dead letter id; they are integers "
                   "(see GET /dead-letters)")


class InvalidIdempotencyKey(ApiError):
    """400: the Idempotency-Key header is too long or holds other than visible ASCII."""

    def __init__(self, longest: int) -> None:
        super().__init__(400, f"the Idempotency-Key header must be 1 to {longest} visible "
                         "ASCII characters, e.g. a UUID", reason="invalid_idempotency_key")


class InvalidQuery(ApiError):
    """400: the query string has an unknown, repeated or invalid parameter."""

    def __init__(self, problem: str) -> None:
        super().__init__(400, problem, reason="invalid_query")

    @classmethod
    def repeated(cls, name: str) -> InvalidQuery:
        return cls(f"query parameter `{name}` is given more than once; give it once")

    @classmethod
    def malformed(cls, exc: msgspec.ValidationError, parameters: str) -> InvalidQuery:
        return cls(f"invalid query: {_with_path(exc)}; the parameters are {parameters}")

    @classmethod
    def customer_email(cls, exc: InvalidEmailError) -> InvalidQuery:
        return cls(f"{exc} - at `$.customer`")

    @classmethod
    def not_a_customer(cls, value: str) -> InvalidQuery:
        return cls(f"{value[:80]!r} is neither an email nor a customer id - at `$.customer`")

    @classmethod
    def actor_and_customer(cls) -> InvalidQuery:
        return cls("give `actor` or `customer`, not both")

    @classmethod
    def unknown_cursor(cls, cursor: str | None) -> InvalidQuery:
        return cls(f"cursor {cursor!r} is not one this server handed out; start again "
                   "without it - at `$.cursor`")


class InvalidText(ApiError):
    """400: a text from the path, the query or a header that the journal cannot hold
    (NUL and other control characters, lone surrogates) or that is too long."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(400, f"{where} {problem}", reason="invalid_text")

    @classmethod
    def control(cls, where: str) -> InvalidText:
        return cls(where, "holds a control character (U+0000 to U+001F or U+007F to "
                   "U+009F); remove it")

    @classmethod
    def not_utf8(cls, where: str) -> InvalidText:
        return cls(where, "is not valid UTF-8 (a lone surrogate or an undecodable byte); "
                   "send UTF-8 text, percent-encoded in a URL")

    @classmethod
    def too_long(cls, where: str, longest: int) -> InvalidText:
        return cls(where, f"is longer than {longest} characters; send a shorter one")


class WrongToken(ApiError):
    """400 after acceptance: the workflow compared the token and refused it."""

    def __init__(self, customer_id: str, error: str | None) -> None:
        super().__init__(400, f"wrong token for customer {customer_id} ({error}); send the "
                         "token from the invitation message", id=customer_id)


# -- 401, 404, 405 ------------------------------------------------------------------------


class Unauthorized(ApiError):
    """401: the bearer token is missing or wrong."""

    def __init__(self) -> None:
        super().__init__(401, "missing or wrong API token; send the header "
                         "'Authorization: Bearer <token>'", reason="unauthorized",
                         headers={"WWW-Authenticate": 'Bearer realm="retinue"'})


class Forbidden(ApiError):
    """403: who asks, or from where, may not do this; the message says what is needed."""

    def __init__(self, message: str, *, reason: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(403, message, reason=reason, headers=headers)

    @classmethod
    def needs_role(cls, role: str, variable: str, method: str, route: str) -> Forbidden:
        # insufficient_scope (RFC 6750) tells a client, the dashboard among them, that
        # the token is valid but another one is needed.
        return cls(f"{method} {route} needs the {role} token ({variable}); the token sent "
                   "is valid but only for the other role. Send 'Authorization: Bearer "
                   f"<the {role} token>'", reason="forbidden",
                   headers={"WWW-Authenticate": f'Bearer realm="retinue", '
                            f'error="insufficient_scope", scope="{role}"'})

    @classmethod
    def foreign_origin(cls, origin: str, host: str) -> Forbidden:
        return cls(f"cross-site request refused: Origin {origin[:100]!r} is not this "
                   f"server's ({host[:100]!r}); call the API from the server's own pages or "
                   "from a program that sends no Origin header", reason="foreign_origin")


class MisdirectedRequest(ApiError):
    """421: the Host header names a server other than this one (DNS rebinding)."""

    def __init__(self, host: str, allowed: str) -> None:
        super().__init__(421, f"Host {host[:100]!r} is not a name of this server; use one of "
                         f"{allowed}, or add the name to RETINUE_ALLOWED_HOSTS",
                         reason="foreign_host")


class NotFound(ApiError):
    """404: nothing of that kind has that id (or no route has that path)."""

    def __init__(self, message: str) -> None:
        super().__init__(404, message, reason="not_found")

    @classmethod
    def route(cls, method: str, path: str) -> NotFound:
        return cls(f"no route {method} {path}; GET /openapi.json lists every route")

    @classmethod
    def workflow(cls, workflow_id: str) -> NotFound:
        return cls(f"no workflow with id {workflow_id[:80]!r}; check the id")

    @classmethod
    def customer(cls, customer_id: str) -> NotFound:
        return cls(f"no customer with id {customer_id}; invite one with POST "
                   "/customers/invite")

    @classmethod
    def dead_letter(cls, letter_id: int) -> NotFound:
        return cls(f"no dead letter {letter_id} is waiting: it is unknown or was already "
                   "redelivered (see GET /dead-letters)")

    @classmethod
    def asset(cls, name: str) -> NotFound:
        return cls(f"no dashboard file {name[:80]!r}; the dashboard is at GET /")


class MethodNotAllowed(ApiError):
    """405: the path exists, the method does not; `Allow` lists those that do."""

    def __init__(self, method: str, path: str, allowed: str) -> None:
        super().__init__(405, f"{method} is not allowed on {path}; use {allowed}",
                         headers={"Allow": allowed})


# -- 409: the state of things forbids it -------------------------------------------------


class Conflict(ApiError):
    """409: the request is well formed, but what it names is not in a state for it."""

    @classmethod
    def already_customer(cls, email: str, error: str | None, customer_id: str) -> Conflict:
        return cls(409, f"{email} is already a customer ({error}); GET /customers/"
                   f"{customer_id} shows it", id=customer_id)

    @classmethod
    def not_verifiable(cls, exc: NotVerifiableError) -> Conflict:
        return cls(409, str(exc), id=exc.customer_id, reason=exc.reason)

    @classmethod
    def invalid_transition(cls, exc: Exception) -> Conflict:
        return cls(409, str(exc), reason="invalid_transition")

    @classmethod
    def not_forkable(cls, workflow_id: str, status: str) -> Conflict:
        return cls(409, f"workflow {workflow_id} is {status}: only a finished or parked "
                   f"workflow can be forked; cancel it first (POST /workflows/{workflow_id}"
                   "/cancel), then fork it", reason="invalid_transition")

    @classmethod
    def cancelled(cls, workflow_id: str, what: str) -> Conflict:
        return cls(409, f"the {what} workflow {workflow_id} was cancelled by an operator; "
                   f"see GET /workflows/{workflow_id}")


# -- 413, 415, 422: the body cannot be taken ---------------------------------------------


class BodyTooLarge(ApiError):
    """413: the body is over the app's limit (`limit` bytes, when known)."""

    def __init__(self, limit: int | None = None) -> None:
        size = "too large" if limit is None else f"larger than {limit} bytes"
        super().__init__(413, f"the request body is {size}; send a smaller one",
                         reason="too_large")


class UnsupportedMediaType(ApiError):
    """415: the body is not JSON (`content_type` is what it claims to be), or a POST
    does not say it is (None)."""

    def __init__(self, content_type: str | None) -> None:
        if content_type is None:
            message = ("a POST needs the header 'Content-Type: application/json', even "
                       "without a body (other sites' pages cannot send that one); add it")
        else:
            message = (f"the body is {content_type!r}; send it as "
                       "Content-Type: application/json")
        super().__init__(415, message, reason="unsupported_media_type")


class InvalidFork(ApiError):
    """422: a fork from a seq the workflow does not have."""

    def __init__(self, message: str) -> None:
        super().__init__(422, f"{message} - at `$.from_seq`", reason="invalid_fork")


class IdempotencyConflict(ApiError):
    """422: an Idempotency-Key was first used with another body."""

    def __init__(self, key: str | None, workflow_id: str) -> None:
        super().__init__(422, f"the Idempotency-Key {key!r} was first used with a different "
                         f"body (workflow {workflow_id}); resend that body, or use a new key "
                         "for a new request", reason="idempotency_conflict")


# -- 5xx -------------------------------------------------------------------------------------


class Unavailable(ApiError):
    """503 with Retry-After: nothing was accepted; send it again later."""

    def __init__(self, message: str, *, reason: str, retry_after: int = 1) -> None:
        super().__init__(503, message, reason=reason,
                         headers={"Retry-After": str(retry_after)})

    @classmethod
    def overloaded(cls, exc: OverloadedError) -> Unavailable:
        return cls(str(exc), reason="overloaded",
                   retry_after=max(1, math.ceil(exc.retry_after)))

    @classmethod
    def journal(cls, exc: Exception) -> Unavailable:
        return cls(f"{exc}", reason="unavailable")

    @classmethod
    def not_ready(cls) -> Unavailable:
        return cls("the runtime is not ready (starting, recovering, stopping, or the "
                   "database is unreachable); nothing was accepted, retry shortly",
                   reason="not_ready")

    @classmethod
    def not_ready_probe(cls) -> Unavailable:
        """/readyz's answer."""
        return cls("not ready: the runtime is starting, recovering or stopping, or the "
                   "database is unreachable; retry shortly", reason="not_ready")


class InternalError(ApiError):
    """500: a bug, or a workflow that failed; the message says where to look."""

    def __init__(self, message: str) -> None:
        super().__init__(500, message)

    @classmethod
    def unexpected(cls, method: str, path: str, exc: Exception) -> InternalError:
        return cls(f"internal error ({type(exc).__name__}) answering {method} {path}; "
                   "the server log has the details")

    @classmethod
    def workflow_failed(cls, row: WorkflowRow, what: str) -> InternalError:
        return cls(f"the {what} workflow {row.id} ended {row.status} before answering: "
                   f"{row.error}. Fix the cause, then POST /workflows/{row.id}/retry")


def workflow_ended(row: WorkflowRow, what: str) -> ApiError:
    """The answer when the `what` workflow ended without answering: cancelled (409)
    or failed (500)."""
    if row.status == "cancelled":
        return Conflict.cancelled(row.id, what)
    return InternalError.workflow_failed(row, what)
