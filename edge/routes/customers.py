"""Customers: invite (a command), verify (a signal to the invite workflow), and
their projection and messages."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Final

import msgspec
from aiohttp import web

from actors import (
    CUSTOMER,
    INVITE_EVENT,
    MESSAGE,
    VERIFY_SIGNAL,
    Customer,
    InviteCustomer,
    InviteResult,
    Message,
    NotVerifiableError,
    VerifyCustomer,
    VerifyResult,
    ensure_verifiable,
    verify_event_key,
)
from edge.errors import (
    ApiError,
    Conflict,
    IdempotencyConflict,
    NotFound,
    WrongToken,
    workflow_ended,
)
from edge.routing import BAD, BUSY, PENDING, UUID_ID, Route, Services
from edge.schemas import (
    CustomerReply,
    ErrorReply,
    InviteReply,
    InviteRequest,
    MessageReply,
    MessagesReply,
    PendingReply,
    VerifyReply,
    VerifyRequest,
    json_response,
)
from edge.validation import (
    customer_id,
    idempotency_key,
    read_json,
    request_hash,
    valid_email,
    valid_token,
)
from runtime import parse_traceparent, trace_ref

__all__ = ["Customers"]

_INVITE_EXAMPLE: Final = '{"email": "ada@example.com"}'
_VERIFY_EXAMPLE: Final = '{"token": "<the token from the invitation>"}'
_invite_decoder: Final = msgspec.json.Decoder(InviteRequest)
_verify_decoder: Final = msgspec.json.Decoder(VerifyRequest)


class Customers:
    """POST /customers/invite, POST /customers/{id}/verify, GET /customers/{id} and
    GET /customers/{id}/messages."""

    def __init__(self, services: Services) -> None:
        self._s = services

    def routes(self) -> list[Route]:
        missing = ("unknown customer", ErrorReply)
        too_large = ("body over 64 KiB", ErrorReply)
        return [
            Route("POST", "/customers/invite", self.invite, "Invite a customer by email",
                  {200: ("invited", InviteReply), 202: PENDING,
                   400: BAD, 409: ("already a customer; `id` is theirs", ErrorReply),
                   413: too_large, 415: BAD,
                   422: ("Idempotency-Key reused with another body", ErrorReply), 503: BUSY},
                  body=InviteRequest, command="invite", idempotent=True),
            Route("POST", "/customers/{id}/verify", self.verify,
                  "Verify a customer with the token from the invitation",
                  {200: ("verified", VerifyReply), 202: PENDING,
                   400: ("wrong token, bad id or body", ErrorReply), 404: missing,
                   409: ("already verified or expired", ErrorReply),
                   413: too_large, 415: BAD, 503: BUSY},
                  body=VerifyRequest, command="verify", id_schema=UUID_ID),
            Route("GET", "/customers/{id}", self.get_customer, "The customer's projection",
                  {200: ("the customer", CustomerReply), 400: BAD, 404: missing},
                  id_schema=UUID_ID),
            Route("GET", "/customers/{id}/messages", self.messages,
                  "What was communicated to the customer, with delivery status",
                  {200: ("the messages, oldest first", MessagesReply), 400: BAD,
                   404: missing},
                  id_schema=UUID_ID),
        ]

    # -- invite --

    async def invite(self, request: web.Request) -> web.Response:
        body = await read_json(request, _invite_decoder, _INVITE_EXAMPLE)
        email = valid_email(body.email)
        key = idempotency_key(request)
        digest = request_hash("POST /customers/invite", InviteRequest(email=email))
        # A caller's traceparent makes its span the parent of the workflow's trace.
        caller = parse_traceparent(request.headers.get("traceparent"))
        self._s.require_ready()
        workflow_id, created = await self._s.onboarding.invite(
            self._s.runtime, InviteCustomer(email=email),
            idempotency_key=None if key is None else f"invite:{key}", request_hash=digest,
            trace_id=trace_ref(*caller) if caller is not None else None,
        )
        if created:
            self._s.metrics.accepted.labels("invite").inc()
        else:
            await self._check_same_request(workflow_id, digest, key)
            self._s.metrics.deduplicated.labels("invite").inc()
        return await self._invite_answer(workflow_id)

    async def _check_same_request(self, workflow_id: str, digest: str, key: str | None) -> None:
        row = await self._s.journal.get_workflow(workflow_id)
        if row is not None and row.request_hash != digest:
            raise IdempotencyConflict(key, workflow_id)

    async def _invite_answer(self, workflow_id: str) -> web.Response:
        found, value, ended = await self._s.runtime.wait_for_outcome(
            workflow_id, INVITE_EVENT, self._s.resolve_timeout
        )
        if found:
            result = msgspec.convert(value, InviteResult)
            if result.invited:
                return json_response(200, InviteReply(
                    id=result.id, email=result.email, invited=True, workflow_id=workflow_id))
            raise Conflict.already_customer(result.email, result.error, result.id)
        if ended is not None:
            raise workflow_ended(ended, "invite")
        return json_response(202, PendingReply(workflow_id=workflow_id,
                                               status_url=f"/workflows/{workflow_id}"))

    # -- verify --

    async def verify(self, request: web.Request) -> web.Response:
        cid = customer_id(request)
        body = await read_json(request, _verify_decoder, _VERIFY_EXAMPLE)
        token = valid_token(body.token)
        customer = _verifiable(await self._customer(cid))
        self._s.require_ready()
        request_id = uuid.uuid4().hex
        command = VerifyCustomer(customer_id=cid, token=token, request_id=request_id)
        await self._s.runtime.signal(customer.workflow_id, VERIFY_SIGNAL, command)
        self._s.metrics.accepted.labels("verify").inc()
        found, value, ended = await self._s.runtime.wait_for_outcome(
            customer.workflow_id, verify_event_key(request_id), self._s.resolve_timeout
        )
        if found:
            result = msgspec.convert(value, VerifyResult)
            if result.verified:
                return json_response(200, VerifyReply(id=cid, verified=True))
            raise WrongToken(cid, result.error)
        if ended is not None:
            await self._explain_ended(cid)
            raise workflow_ended(ended, "invite")
        return json_response(202, PendingReply(workflow_id=customer.workflow_id,
                                               status_url=f"/customers/{cid}"))

    async def _explain_ended(self, cid: str) -> None:
        """The invite workflow ended without answering an accepted verification:
        say why if the customer's state does (verified meanwhile, or expired)."""
        try:
            _verifiable(await self._customer(cid))
        except ApiError as exc:
            raise exc.after_acceptance() from exc

    async def _customer(self, cid: str) -> Customer:
        doc = await self._s.journal.get_document(CUSTOMER, cid)
        if doc is None:
            raise NotFound.customer(cid)
        return msgspec.convert(doc.data, Customer, strict=False)

    # -- reads --

    async def get_customer(self, request: web.Request) -> web.Response:
        c = await self._customer(customer_id(request))
        return json_response(200, CustomerReply(
            id=c.id, email=c.email, invited=c.invited, verified=c.verified, status=c.status,
            invited_at=c.invited_at, verified_at=c.verified_at,
        ))

    async def messages(self, request: web.Request) -> web.Response:
        cid = customer_id(request)
        await self._customer(cid)
        docs = await self._s.journal.list_documents(MESSAGE, owner=cid)
        messages = sorted(
            (msgspec.convert(doc.data, Message, strict=False) for doc in docs),
            key=lambda m: (m.recorded_at is None, m.recorded_at or datetime.min, m.id),
        )
        return json_response(200, MessagesReply(customer_id=cid, messages=[
            MessageReply(id=m.id, type=m.type, email=m.email, status=m.status,
                         idempotency_key=m.idempotency_key, recorded_at=m.recorded_at,
                         delivered_at=m.delivered_at)
            for m in messages
        ]))


def _verifiable(customer: Customer) -> Customer:
    """The customer, if their invitation is still open; else the domain's 409."""
    try:
        return ensure_verifiable(customer)
    except NotVerifiableError as exc:
        raise Conflict.not_verifiable(exc) from exc
