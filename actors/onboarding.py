"""The onboarding handlers, in the LOW pattern: lookup -> operate -> write.

lookup reads (the store, the clock, a fresh token); operate is pure business
logic; write turns the event into projection rows plus the logged event, which
the runtime commits in one transaction with the step's completion.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

import msgspec

from runtime import Reader, WriteSet

from .identity import customer_id_for, normalize_email
from .messages import (
    Customer,
    CustomerInvited,
    CustomerInviteFailed,
    CustomerVerificationExpired,
    CustomerVerified,
    InviteCustomer,
    InviteOutcome,
    VerificationRejected,
    VerifyCustomer,
    VerifyOutcome,
)
from .projections import CUSTOMER, project_customer

__all__ = [
    "InviteLookup",
    "lookup_invite",
    "operate_invite",
    "write_invite",
    "operate_verify",
    "operate_expire",
    "write_verification",
    "ALREADY_INVITED",
    "WRONG_TOKEN",
    "REMINDER_PATCH",
    "REMINDER_BEFORE_EXPIRY",
    "reminder_time",
]

ALREADY_INVITED = "customer already invited"
WRONG_TOKEN = "wrong token"


class InviteLookup(msgspec.Struct, frozen=True, kw_only=True):
    """Everything operate_invite needs, read once and journaled."""

    existing_customer_id: str | None
    now: datetime
    token: str


# -- invite_customer ------------------------------------------------------------


async def lookup_invite(db: Reader, command: InviteCustomer) -> InviteLookup:
    existing = await db.find(CUSTOMER, normalize_email(command.email))
    return InviteLookup(
        existing_customer_id=existing.id if existing is not None else None,
        now=db.now(),
        token=secrets.token_urlsafe(24),
    )


def operate_invite(command: InviteCustomer, data: InviteLookup, workflow_id: str) -> InviteOutcome:
    """Pure: invite a new email; refuse one that is already a customer."""
    customer_id = customer_id_for(command.email)
    if data.existing_customer_id is not None:
        return CustomerInviteFailed(customer_id=customer_id, reason=ALREADY_INVITED)
    return CustomerInvited(
        customer_id=customer_id,
        email=normalize_email(command.email),
        token=data.token,
        invited_at=data.now,
        workflow_id=workflow_id,
    )


def write_invite(db: WriteSet, event: InviteOutcome) -> None:
    """The customer row (unique email: the integrity check) and the event."""
    if isinstance(event, CustomerInvited):
        customer = project_customer(None, event)
        assert customer is not None
        db.put(CUSTOMER, customer.id, customer, unique_key=customer.email)
    db.emit(event)


# -- verify_customer --------------------------------------------------------------


def operate_verify(
    invited: CustomerInvited, command: VerifyCustomer, now: datetime
) -> VerifyOutcome:
    """Pure: the right token verifies the customer; any other is rejected."""
    # As bytes: compare_digest raises TypeError on str with non-ASCII characters.
    given, expected = (t.encode("utf-8", "surrogatepass") for t in (command.token, invited.token))
    if not secrets.compare_digest(given, expected):
        return VerificationRejected(customer_id=invited.customer_id, reason=WRONG_TOKEN)
    return CustomerVerified(customer_id=invited.customer_id, verified_at=now)


def operate_expire(invited: CustomerInvited, now: datetime) -> CustomerVerificationExpired:
    return CustomerVerificationExpired(customer_id=invited.customer_id, expired_at=now)


def write_verification(
    db: WriteSet,
    invited: CustomerInvited,
    event: CustomerVerified | CustomerVerificationExpired,
) -> None:
    customer: Customer | None = project_customer(project_customer(None, invited), event)
    assert customer is not None
    db.put(CUSTOMER, customer.id, customer, unique_key=customer.email)
    db.emit(event)


def verification_deadline(invited: CustomerInvited, ttl: timedelta) -> datetime:
    return invited.invited_at + ttl


# -- the verification reminder (version B, behind a patch) ---------------------------

# Added while customers were waiting: the invite workflow asks
# `ctx.patched(REMINDER_PATCH)` so invitations sent before the deploy go on
# without a reminder, and new ones get it (README: "Deploy while customers wait").
REMINDER_PATCH = "verification-reminder"
REMINDER_BEFORE_EXPIRY = timedelta(days=2)


def reminder_time(invited: CustomerInvited, ttl: timedelta) -> datetime | None:
    """Pure: when to remind the customer, two days before the invitation expires;
    None when it is open for two days or less (no reminder then)."""
    if ttl <= REMINDER_BEFORE_EXPIRY:
        return None
    return verification_deadline(invited, ttl) - REMINDER_BEFORE_EXPIRY
