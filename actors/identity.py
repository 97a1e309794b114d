"""Customer identity: one email, one id, one actor."""

from __future__ import annotations

import re
import uuid

__all__ = ["normalize_email", "customer_id_for", "customer_actor_key", "InvalidEmailError"]

# The customer namespace; never change it, or every id changes with it.
_CUSTOMER_NAMESPACE = uuid.UUID("6f1d3c2e-7a4b-5c8d-9e0f-a1b2c3d4e5f6")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_MAX_EMAIL = 254


class InvalidEmailError(ValueError):
    def __init__(self, email: str) -> None:
        super().__init__(
            f"{email[:80]!r} is not an email address; send one like 'ada@example.com' "
            f"(at most {_MAX_EMAIL} characters)"
        )


def normalize_email(email: str) -> str:
    """Trimmed and lower-cased; raises InvalidEmailError if it is not an address."""
    normalized = email.strip().lower()
    if len(normalized) > _MAX_EMAIL or not _EMAIL.match(normalized):
        raise InvalidEmailError(email)
    return normalized


def customer_id_for(email: str) -> str:
    """The customer's id: a UUIDv5 of the normalized email."""
    return str(uuid.uuid5(_CUSTOMER_NAMESPACE, normalize_email(email)))


def customer_actor_key(customer_id: str) -> str:
    return f"customer:{customer_id}"
