"""The communication port: how a message reaches the customer.

The domain only knows this Protocol. server.py plugs in the webhook adapter
(`edge.WebhookCommunicator`, in edge/webhook.py: it speaks HTTP through aiohttp, which
the domain does not import) when COMMUNICATION_WEBHOOK_URL is set; otherwise messages
stay in the outbox (the `message` projection) and are logged.
"""

from __future__ import annotations

import logging
from typing import Protocol

import msgspec

__all__ = ["OutgoingMessage", "Communicator", "OutboxCommunicator"]

_log = logging.getLogger("retinue.communication")


class OutgoingMessage(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON a webhook receives; `idempotency_key` is also its header."""

    type: str
    customer_id: str
    email: str
    token: str
    idempotency_key: str


class Communicator(Protocol):
    async def deliver(self, message: OutgoingMessage) -> str:
        """Send `message` at least once; return its status ('delivered', 'recorded').

        Raise to have the step retried; raise runtime.NonRetryableError to give up."""
        ...


class OutboxCommunicator:
    """No webhook: the outbox row is the record; log it for the operator."""

    async def deliver(self, message: OutgoingMessage) -> str:
        # The log stands in for the mail: it carries the token, as the mail would.
        _log.info(
            "message %s to %s recorded in the outbox (token %s, idempotency key %s)",
            message.type, message.email, message.token or "-", message.idempotency_key,
        )
        return "recorded"
