"""A journal that passes every call to another: the base of fault-injecting test journals."""

from __future__ import annotations

from typing import Any

from journal import Journal


class DelegatingJournal:
    """Delegates everything to `inner`; subclasses override the calls they perturb."""

    def __init__(self, inner: Journal) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
