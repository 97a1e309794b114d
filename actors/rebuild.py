"""Rebuild every projection from the event log (`retinue rebuild-projections`)."""

from __future__ import annotations

from typing import Any

from runtime import WriteSet, rebuild_from_log

from .projections import CUSTOMER, MESSAGE, rebuild

__all__ = ["rebuild_projections"]


async def rebuild_projections(journal: Any) -> dict[str, int]:
    """Fold the whole event log into fresh customer and message rows and swap
    them in, in one transaction that writes wait for (so servers may run
    meanwhile: nothing they write is lost); returns how many rows each
    projection has now."""
    return await rebuild_from_log(journal, (CUSTOMER, MESSAGE), _fold)


def _fold(events: list[Any]) -> WriteSet:
    customers, messages = rebuild(events)
    writes = WriteSet("rebuild")
    for customer in customers.values():
        writes.put(CUSTOMER, customer.id, customer, unique_key=customer.email)
    for message in messages.values():
        writes.put(MESSAGE, message.id, message, owner=message.customer_id)
    return writes
