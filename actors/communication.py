"""The communication port: how a message reaches the customer.

The domain only knows this Protocol. server.py plugs in the webhook adapter
(`edge.WebhookCommunicator`, in edge/webhook.py: it speaks HTTP through aiohttp, which
the domain does not import) when COMMUNICATION_WEBHOOK_URL is set; otherwise messages
stay in the outbox (the `message` projection) and a log line says where (without
the token).
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
        # The log says where the message is, never its token: logs are read, shipped
        # and kept by more people than the customer's mailbox. The key is
        # `<message id>:<seq>` (a step's key is its workflow's id and seq, and the
        # message is its communication workflow's id).
        message_id = message.idempotency_key.rpartition(":")[0]
        _log.info(
            "%s for customer %s written to the outbox as message %s (idempotency key %s)",
            message.type, message.customer_id, message_id, message.idempotency_key,
        )
        return "recorded"
