"""A whole runtime in-process, in a few lines, for tests of user code.

    async with open_test_runtime(checkout, refund) as runtime:          # in memory
        row, _ = await runtime.start_workflow("checkout", "o-1", actor_key="order:1")

    async with open_test_runtime(checkout, journal="postgres") as runtime:  # real PostgreSQL
        ...

With journal="postgres" it uses DATABASE_URL when set, else a private embedded
PostgreSQL in a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from journal import Journal, MemoryJournal, open_journal

from .clock import VirtualClock
from .system import Runtime, WorkflowFn

__all__ = ["VirtualClock", "open_test_runtime"]


@asynccontextmanager
async def open_test_runtime(
    *workflows: WorkflowFn,
    journal: Literal["memory", "postgres"] | Journal = "memory",
    **options: Any,
) -> AsyncIterator[Runtime]:
    """An open Runtime with `workflows` registered (by their __name__), over a
    MemoryJournal, a PostgreSQL one, or the journal given. `options` go to Runtime;
    with `clock=VirtualClock()` a MemoryJournal made here keeps time on it too."""
    if not isinstance(journal, str):
        async with _opened(journal, workflows, options) as runtime:
            yield runtime
    elif journal == "memory":
        clock = options.get("clock")
        memory = MemoryJournal(clock=clock.timestamp) if isinstance(clock, VirtualClock) \
            else MemoryJournal()
        async with _opened(memory, workflows, options) as runtime:
            yield runtime
    else:
        with tempfile.TemporaryDirectory(prefix="retinue-test-") as folder:
            database_url = os.environ.get("DATABASE_URL")
            async with open_journal(database_url, os.path.join(folder, "pg")) as postgres:
                async with _opened(postgres, workflows, options) as runtime:
                    yield runtime


@asynccontextmanager
async def _opened(
    journal: Journal, workflows: tuple[WorkflowFn, ...], options: dict[str, Any]
) -> AsyncIterator[Runtime]:
    runtime = Runtime(journal, **options)
    for workflow in workflows:
        runtime.register(workflow)
    async with runtime:
        yield runtime
