"""Fault injection for tests: a journal that 'kills the process' after the k-th write.

Injected, not monkeypatched: wrap the real journal and hand the wrapper to the
Runtime. With no wrapper there is no cost at all.
"""

from __future__ import annotations

from typing import Any

from journal import Batch, Journal, NewWorkflow, WorkflowRow

from .errors import SimulatedCrash

__all__ = ["CrashingJournal"]


class CrashingJournal:
    """Delegates to `inner`; right after its `crash_after`-th write commits, raises
    SimulatedCrash (a BaseException), which tears the runtime down like kill -9.

    Writes are `append` and `create_workflow`. `writes` counts them, so a clean
    run tells how many crash points a workflow has.
    """

    def __init__(self, inner: Journal, crash_after: int | None = None) -> None:
        self._inner = inner
        self.crash_after = crash_after
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _wrote(self) -> None:
        self.writes += 1
        if self.crash_after is not None and self.writes == self.crash_after:
            raise SimulatedCrash(f"simulated crash after journal write {self.writes}")

    async def append(self, batch: Batch) -> None:
        await self._inner.append(batch)
        self._wrote()

    async def create_workflow(self, workflow: NewWorkflow) -> tuple[WorkflowRow, bool]:
        result = await self._inner.create_workflow(workflow)
        self._wrote()
        return result
