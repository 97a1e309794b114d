"""Rebuild every projection from the event log (`retinue rebuild-projections`)."""

from __future__ import annotations

from typing import Any

from runtime import WriteSet, read_event_log, replace_projection

from .projections import CUSTOMER, MESSAGE, rebuild

__all__ = ["rebuild_projections"]


async def rebuild_projections(journal: Any) -> dict[str, int]:
    """Fold the whole event log into fresh customer and message rows and swap
    them in; returns how many rows each projection has now."""
    customers, messages = rebuild(await read_event_log(journal))
    writes = WriteSet("rebuild")
    for customer in customers.values():
        writes.put(CUSTOMER, customer.id, customer, unique_key=customer.email)
    for message in messages.values():
        writes.put(MESSAGE, message.id, message, owner=message.customer_id)
    return {
        CUSTOMER: await replace_projection(journal, CUSTOMER, writes),
        MESSAGE: await replace_projection(journal, MESSAGE, writes),
    }
