"""MemoryJournal's domain events and documents (the `Projections` protocol)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import msgspec

from ._mem_state import MemoryState
from .base import Projections, count_by_kind
from .errors import IntegrityError
from .records import Document, DomainEvent

__all__ = ["MemoryProjections"]


class MemoryProjections(MemoryState, Projections):
    """Events and documents in memory."""

    async def read_events(self, actor_key: str, after_seq: int = 0) -> list[DomainEvent]:
        events = self._events.get(actor_key, {})
        return [events[seq] for seq in sorted(events) if seq > after_seq]

    async def read_all_events(self) -> list[DomainEvent]:
        return [
            event
            for actor_key in sorted(self._events)
            for event in await self.read_events(actor_key)
        ]

    async def last_event_seq(self, actor_key: str) -> int:
        return max(self._events.get(actor_key, {}), default=0)

    async def get_document(self, kind: str, doc_id: str) -> Document | None:
        return self._documents.get((kind, doc_id))

    async def find_document(self, kind: str, unique_key: str) -> Document | None:
        for (doc_kind, _), doc in self._documents.items():
            if doc_kind == kind and doc.unique_key == unique_key:
                return doc
        return None

    async def list_documents(self, kind: str, owner: str | None = None) -> list[Document]:
        found = [
            doc
            for (doc_kind, _), doc in self._documents.items()
            if doc_kind == kind and (owner is None or doc.owner == owner)
        ]
        return sorted(found, key=lambda d: d.id)

    async def replace_documents(self, kind: str, documents: Sequence[Document]) -> None:
        async with self._lock:
            self._check_unique_keys(kind, documents)
            for key in [k for k in self._documents if k[0] == kind]:
                del self._documents[key]
            now = self._now()
            for doc in documents:
                self._documents[(kind, doc.id)] = msgspec.structs.replace(doc, updated_at=now)

    async def rebuild_documents(
        self, kinds: Collection[str], fold: Callable[[list[DomainEvent]], Sequence[Document]]
    ) -> dict[str, int]:
        wanted = sorted(set(kinds))
        async with self._lock:  # and no await until the swap is done: nothing interleaves
            events = [event for key in sorted(self._events)
                      for _, event in sorted(self._events[key].items())]
            documents = fold(events)
            counts = count_by_kind(wanted, documents)
            for kind in wanted:
                self._check_unique_keys(kind, [d for d in documents if d.kind == kind])
            for key in [k for k in self._documents if k[0] in counts]:
                del self._documents[key]
            now = self._now()
            for doc in documents:
                self._documents[(doc.kind, doc.id)] = msgspec.structs.replace(doc, updated_at=now)
            return counts

    def _check_unique_keys(self, kind: str, documents: Sequence[Document]) -> None:
        holders: dict[str, str] = {}
        for doc in documents:
            if doc.unique_key is None:
                continue
            holder = holders.setdefault(doc.unique_key, doc.id)
            if holder != doc.id:
                raise IntegrityError(
                    "documents_unique_key",
                    f"{kind} {doc.unique_key!r} already belongs to {holder!r}",
                )
