"""What the edge checks before anything reaches the runtime: bodies, path ids,
headers and query strings. Each check returns the value, typed, or raises the
catalogue's 4xx that names the problem, where it is, and what to send instead."""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Final, TypeVar

import msgspec
from aiohttp import web

from actors import InvalidEmailError, customer_actor_key, customer_id_for, normalize_email

from .errors import (
    BodyTooLarge,
    InvalidBody,
    InvalidEmail,
    InvalidId,
    InvalidIdempotencyKey,
    InvalidQuery,
    InvalidText,
)
from .schemas import WORKFLOW_STATUSES, WorkflowQuery, encoder

__all__ = [
    "MAX_BODY_KEY",
    "MAX_IDEMPOTENCY_KEY",
    "MAX_TEXT",
    "check_request_text",
    "check_text",
    "customer_actor",
    "customer_id",
    "dead_letter_id",
    "idempotency_key",
    "query",
    "read_json",
    "request_hash",
    "valid_email",
    "valid_token",
    "workflow_id",
    "workflow_query",
]

T = TypeVar("T")

MAX_IDEMPOTENCY_KEY: Final = 255
MAX_BODY_KEY: Final = web.AppKey("max_body", int)  # the app's client_max_size, for messages
_MAX_TOKEN: Final = 512
_KEY_CHARS: Final = re.compile(r"^[\x21-\x7e]+$")
MAX_TEXT: Final = 1024  # characters in any one path value, query value or checked header
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Headers whose values the journal may hold (a workflow's trace comes from traceparent).
_JOURNALED_HEADERS: Final = ("Idempotency-Key", "traceparent")


# -- every text from the path, the query and the headers ----------------------------------


def check_text(value: str, where: str, longest: int = MAX_TEXT) -> str:
    """`value`, if the journal can hold it: no control characters (PostgreSQL refuses
    NUL in text; the others are never part of an id or a filter), valid UTF-8 (no
    lone surrogates), at most `longest` characters. Else a 400 naming `where`."""
    if _CONTROL.search(value):
        raise InvalidText.control(where)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidText.not_utf8(where) from exc
    if len(value) > longest:
        raise InvalidText.too_long(where, longest)
    return value


def check_request_text(request: web.Request) -> None:
    """Check every path value, query name and value, and journaled header of a request
    before any handler sees it, so that a route added later is covered too."""
    for name, value in request.match_info.items():
        check_text(value, f"the path's {{{name}}}")
    for name, value in request.query.items():
        where = f"query parameter {name[:40]!r}"
        check_text(name, where)
        check_text(value, where)
    for header in _JOURNALED_HEADERS:
        given = request.headers.get(header)
        if given is not None:
            check_text(given, f"the {header} header")


# -- bodies -------------------------------------------------------------------------------


async def read_json(request: web.Request, decoder: msgspec.json.Decoder[T], example: str) -> T:
    """Read and decode a JSON body of at most the app's client_max_size bytes (the
    input middleware has already refused a POST that does not say it is JSON)."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise BodyTooLarge(request.app[MAX_BODY_KEY]) from exc
    except web.RequestPayloadError as exc:
        raise InvalidBody.unreadable(exc) from exc
    return _decode(decoder, body, example)


def _decode(decoder: msgspec.json.Decoder[T], body: bytes, example: str) -> T:
    """The body as a `T`, or a 400 that names the problem and its path."""
    if not body.strip():
        raise InvalidBody.empty(example)
    try:
        decoded = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidBody.malformed(exc, example) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidBody.not_json(exc, example) from exc
    if isinstance(decoded, msgspec.Struct):
        _refuse_nul(decoded)
    return decoded


def _refuse_nul(body: msgspec.Struct) -> None:
    """A 400 for a string field holding NUL, which PostgreSQL cannot store."""
    for name, value in msgspec.structs.asdict(body).items():
        if isinstance(value, str) and "\x00" in value:
            raise InvalidBody.holds_nul(name)


def valid_email(email: str) -> str:
    try:
        return normalize_email(email)
    except InvalidEmailError as exc:
        raise InvalidEmail(exc) from exc


def valid_token(token: str) -> str:
    if not token or len(token) > _MAX_TOKEN:
        raise InvalidBody.token_length(_MAX_TOKEN)
    return token


def request_hash(route: str, body: msgspec.Struct) -> str:
    """sha256 of the route and the canonical (decoded, normalised, re-encoded) body."""
    return hashlib.sha256(route.encode() + b"\n" + encoder.encode(body)).hexdigest()


# -- path ids and headers -----------------------------------------------------------------


def customer_id(request: web.Request) -> str:
    raw = request.match_info["id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError as exc:
        raise InvalidId.customer(raw) from exc


def workflow_id(request: web.Request) -> str:
    return request.match_info["id"]  # check_request_text has seen it


def dead_letter_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise InvalidId.dead_letter(raw)
    return int(raw)


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if len(key) > MAX_IDEMPOTENCY_KEY or not _KEY_CHARS.match(key):
        raise InvalidIdempotencyKey(MAX_IDEMPOTENCY_KEY)
    return key


# -- query strings ------------------------------------------------------------------------


def query(request: web.Request, type_: type[T], parameters: str) -> T:
    """The query string as a `type_`, or a 400 that names the problem and the parameters."""
    repeated = sorted({k for k in request.query if len(request.query.getall(k)) > 1})
    if repeated:
        raise InvalidQuery.repeated(repeated[0])
    try:
        return msgspec.convert(dict(request.query), type_, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidQuery.malformed(exc, parameters) from exc


def workflow_query(request: web.Request) -> WorkflowQuery:
    return query(request, WorkflowQuery, (
        f"status ({', '.join(WORKFLOW_STATUSES)}), actor, customer (an email or customer id), "
        "name, since and until (RFC 3339 times with an offset), limit (1 to 500) and cursor "
        "(the next_cursor of the previous page)"))


def customer_actor(customer: str) -> str:
    """The actor key of a customer given by email or id."""
    if "@" in customer:
        try:
            return customer_actor_key(customer_id_for(customer))
        except InvalidEmailError as exc:
            raise InvalidQuery.customer_email(exc) from exc
    try:
        return customer_actor_key(str(uuid.UUID(customer)))
    except ValueError as exc:
        raise InvalidQuery.not_a_customer(customer) from exc
