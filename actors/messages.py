"""Commands and events of customer onboarding: frozen, tagged msgspec Structs.

Schema evolution: new fields get defaults; a field's type never changes; a field
may be dropped. Every Struct here is read back from rows that older code wrote
(step outputs, workflow inputs, signals, the event log, projection documents),
so none refuses unknown fields: a field the code has dropped is ignored. The
HTTP edge's request bodies are separate Structs that do refuse them.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

__all__ = [
    "InviteCustomer",
    "VerifyCustomer",
    "CustomerInvited",
    "CustomerInviteFailed",
    "CustomerVerified",
    "CustomerVerificationExpired",
    "VerificationRejected",
    "MessageRecorded",
    "MessageDelivered",
    "CustomerEvent",
    "InviteOutcome",
    "VerifyOutcome",
    "CommunicationRequest",
    "InviteResult",
    "VerifyResult",
    "Customer",
    "Message",
]


class _Frozen(msgspec.Struct, frozen=True, kw_only=True):
    """Stored rows outlive the code that wrote them: unknown fields are ignored
    (msgspec's default), never an error. See README, "Changing payload shapes"."""


class _Tagged(_Frozen, frozen=True, tag_field="kind"):
    """Commands and events carry their type in "kind", so a log entry decodes alone."""


# -- commands ------------------------------------------------------------------


class InviteCustomer(_Tagged, frozen=True, tag="InviteCustomer"):
    email: str


class VerifyCustomer(_Tagged, frozen=True, tag="VerifyCustomer"):
    customer_id: str
    token: str
    request_id: str = ""


# -- events (the customer actor's log) --------------------------------------------


class CustomerInvited(_Tagged, frozen=True, tag="CustomerInvited"):
    customer_id: str
    email: str
    token: str
    invited_at: datetime
    workflow_id: str = ""


class CustomerInviteFailed(_Tagged, frozen=True, tag="CustomerInviteFailed"):
    customer_id: str
    reason: str


class CustomerVerified(_Tagged, frozen=True, tag="CustomerVerified"):
    customer_id: str
    verified_at: datetime


class CustomerVerificationExpired(_Tagged, frozen=True, tag="CustomerVerificationExpired"):
    customer_id: str
    expired_at: datetime | None = None


class VerificationRejected(_Tagged, frozen=True, tag="VerificationRejected"):
    """Not logged: the answer to a wrong token, which changes nothing."""

    customer_id: str
    reason: str


class MessageRecorded(_Tagged, frozen=True, tag="MessageRecorded"):
    message_id: str
    customer_id: str
    type: str
    email: str
    token: str
    idempotency_key: str
    recorded_at: datetime


class MessageDelivered(_Tagged, frozen=True, tag="MessageDelivered"):
    message_id: str
    customer_id: str
    status: str
    delivered_at: datetime


CustomerEvent = (
    CustomerInvited
    | CustomerInviteFailed
    | CustomerVerified
    | CustomerVerificationExpired
    | MessageRecorded
    | MessageDelivered
)
InviteOutcome = CustomerInvited | CustomerInviteFailed
VerifyOutcome = CustomerVerified | VerificationRejected


# -- workflow inputs and results -------------------------------------------------


class CommunicationRequest(_Frozen, frozen=True):
    type: str  # "invitation" | "reminder" | "welcome"
    customer_id: str
    email: str
    token: str = ""


class InviteResult(_Frozen, frozen=True):
    id: str
    email: str
    invited: bool
    workflow_id: str
    error: str | None = None


class VerifyResult(_Frozen, frozen=True):
    id: str
    verified: bool
    error: str | None = None


# -- projections (the read side) ---------------------------------------------------


class Customer(_Frozen, frozen=True):
    id: str
    email: str
    invited: bool = True
    verified: bool = False
    status: str = "invited"  # invited | verified | expired
    invited_at: datetime | None = None
    verified_at: datetime | None = None
    workflow_id: str = ""


class Message(_Frozen, frozen=True):
    id: str
    customer_id: str
    type: str
    email: str
    idempotency_key: str
    status: str = "pending"  # pending | delivered | recorded
    recorded_at: datetime | None = None
    delivered_at: datetime | None = None
