"""Projectors: the customer read model, folded from the customer's events.

`project_customer` and `project_message` are pure; `write` steps apply them to
the event being written, and `rebuild` applies them to the whole log.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .messages import (
    Customer,
    CustomerEvent,
    CustomerInvited,
    CustomerVerificationExpired,
    CustomerVerified,
    Message,
    MessageDelivered,
    MessageRecorded,
)

__all__ = [
    "CUSTOMER",
    "MESSAGE",
    "project_customer",
    "project_message",
    "decode_event",
    "rebuild",
]

CUSTOMER = "customer"
MESSAGE = "message"

def decode_event(payload: Any) -> CustomerEvent:
    """A logged event's payload back to its Struct (payloads carry their tag)."""
    event: CustomerEvent = msgspec.convert(payload, CustomerEvent, strict=False)
    return event


def project_customer(customer: Customer | None, event: CustomerEvent) -> Customer | None:
    """The customer after `event`. Events of other kinds leave it as it was."""
    if isinstance(event, CustomerInvited):
        return Customer(
            id=event.customer_id,
            email=event.email,
            invited_at=event.invited_at,
            workflow_id=event.workflow_id,
        )
    if customer is None:
        return None
    if isinstance(event, CustomerVerified):
        return msgspec.structs.replace(
            customer, verified=True, status="verified", verified_at=event.verified_at
        )
    if isinstance(event, CustomerVerificationExpired):
        return msgspec.structs.replace(customer, status="expired")
    return customer


def project_message(message: Message | None, event: CustomerEvent) -> Message | None:
    """A communication's delivery record after `event`."""
    if isinstance(event, MessageRecorded):
        return Message(
            id=event.message_id,
            customer_id=event.customer_id,
            type=event.type,
            email=event.email,
            idempotency_key=event.idempotency_key,
            recorded_at=event.recorded_at,
        )
    if isinstance(event, MessageDelivered) and message is not None:
        return msgspec.structs.replace(
            message, status=event.status, delivered_at=event.delivered_at
        )
    return message


def rebuild(events: list[Any]) -> tuple[dict[str, Customer], dict[str, Message]]:
    """Customers and messages from an event log (payloads in log order)."""
    customers: dict[str, Customer] = {}
    messages: dict[str, Message] = {}
    for payload in events:
        event = decode_event(payload)
        if isinstance(event, MessageRecorded | MessageDelivered):
            updated_message = project_message(messages.get(event.message_id), event)
            if updated_message is not None:
                messages[updated_message.id] = updated_message
            continue
        updated = project_customer(customers.get(event.customer_id), event)
        if updated is not None:
            customers[updated.id] = updated
    return customers, messages
