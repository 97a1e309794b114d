"""Whether a customer can still be verified: a pure rule over their projection.

The edge applies it before it accepts a verification, so a closed invitation is
refused at once, with nothing journaled; the invite workflow keeps the final say
(a token sent after the deadline does not beat the timer).
"""

from __future__ import annotations

from .messages import Customer

__all__ = [
    "AlreadyVerifiedError",
    "InvitationExpiredError",
    "NotVerifiableError",
    "ensure_verifiable",
]


class NotVerifiableError(Exception):
    """The customer's invitation is closed. `reason` names why, for metrics and
    logs ('already_verified', 'expired'); the message says it to a person."""

    reason: str = "not_verifiable"

    def __init__(self, customer_id: str, message: str) -> None:
        super().__init__(message)
        self.customer_id = customer_id


class AlreadyVerifiedError(NotVerifiableError):
    reason = "already_verified"

    def __init__(self, customer_id: str) -> None:
        super().__init__(customer_id, f"customer {customer_id} is already verified")


class InvitationExpiredError(NotVerifiableError):
    reason = "expired"

    def __init__(self, customer_id: str) -> None:
        super().__init__(customer_id, f"the invitation of customer {customer_id} has "
                         "expired; it can no longer be verified")


def ensure_verifiable(customer: Customer) -> Customer:
    """`customer`, if their invitation is still open. Pure.

    Raises AlreadyVerifiedError or InvitationExpiredError (both NotVerifiableError)."""
    if customer.status == "verified":
        raise AlreadyVerifiedError(customer.id)
    if customer.status == "expired":
        raise InvitationExpiredError(customer.id)
    return customer
