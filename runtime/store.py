"""What handlers see of the local store: a Reader for lookups, a WriteSet for writes.

A WriteSet collects projection rows and domain events; the runtime commits them
in ONE journal batch together with the step's completion record, so a write
step either happened entirely (and is never run again) or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

import msgspec

from journal import Document, DomainEvent, Projections

from .clock import SYSTEM_CLOCK, Clock
from .codec import to_json_value

__all__ = ["Reader", "WriteSet", "event_type_of", "rebuild_from_log"]


def event_type_of(event: Any) -> str:
    """The name an event is logged under: its Struct tag, else its class name."""
    if isinstance(event, msgspec.Struct):
        tag = type(event).__struct_config__.tag
        if isinstance(tag, str):
            return tag
    return type(event).__name__


class Reader:
    """Read-only access to documents and the event log, for `lookup` functions."""

    def __init__(self, journal: Projections, clock: Clock = SYSTEM_CLOCK) -> None:
        self._journal = journal
        self._clock = clock

    def now(self) -> datetime:
        """The runtime's clock: a lookup's reading of the time (journaled with it)."""
        return self._clock.now()

    async def get(self, kind: str, doc_id: str) -> Any:
        """The document's data, or None."""
        doc = await self._journal.get_document(kind, doc_id)
        return None if doc is None else doc.data

    async def find(self, kind: str, unique_key: str) -> Document | None:
        return await self._journal.find_document(kind, unique_key)

    async def documents(self, kind: str, owner: str | None = None) -> list[Document]:
        return await self._journal.list_documents(kind, owner)

    async def events(self, actor_key: str) -> list[DomainEvent]:
        return await self._journal.read_events(actor_key)


class WriteSet:
    """The changes of one write step: documents to upsert and events to append."""

    def __init__(self, actor_key: str) -> None:
        self.actor_key = actor_key
        self.documents: list[Document] = []
        self.events: list[tuple[str, Any]] = []

    def put(
        self,
        kind: str,
        doc_id: str,
        data: Any,
        *,
        unique_key: str | None = None,
        owner: str | None = None,
    ) -> None:
        """Upsert a projection row; `unique_key` must be unique within `kind`."""
        self.documents.append(
            Document(
                kind=kind, id=doc_id, data=to_json_value(data), unique_key=unique_key, owner=owner
            )
        )

    def emit(self, event: Any) -> None:
        """Append `event` to the actor's event log."""
        self.events.append((event_type_of(event), to_json_value(event)))

    def domain_events(self, first_seq: int, workflow_id: str) -> tuple[DomainEvent, ...]:
        return tuple(
            DomainEvent(
                actor_key=self.actor_key,
                seq=first_seq + i,
                type=event_type,
                payload=payload,
                workflow_id=workflow_id,
            )
            for i, (event_type, payload) in enumerate(self.events)
        )


async def rebuild_from_log(
    journal: Projections, kinds: Collection[str], fold: Callable[[list[Any]], WriteSet]
) -> dict[str, int]:
    """Replace every document of `kinds` with those `fold(every event payload, each
    actor's in log order)` puts, in one transaction no write interleaves with
    (Projections.rebuild_documents): safe while servers run. How many of each kind."""

    def documents(events: list[DomainEvent]) -> list[Document]:
        return fold([event.payload for event in events]).documents

    return await journal.rebuild_documents(kinds, documents)
