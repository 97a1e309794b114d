"""A whole runtime in-process, in a few lines, for tests of user code.

    async with open_test_runtime(checkout, refund) as runtime:          # in memory
        row, _ = await runtime.start_workflow("checkout", "o-1", actor_key="order:1")

    async with open_test_runtime(checkout, journal="postgres") as runtime:  # real PostgreSQL
        ...

With journal="postgres" it uses DATABASE_URL when set, else a private embedded
PostgreSQL in a temporary folder that is removed afterwards.

And a check that today's code still replays a stored history (see runtime/replay.py):

    exported = await export_history(runtime.journal, row.id)   # keep it as a JSON file
    await assert_replays(exported, runtime.workflows)          # later, in a test
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

from journal import Journal, MemoryJournal, open_journal

from .clock import VirtualClock
from .replay import ReplayResult, check_history_replays, export_history
from .system import Runtime, WorkflowFn

__all__ = [
    "VirtualClock",
    "assert_replays",
    "check_history_replays",
    "export_history",
    "open_test_runtime",
]


async def assert_replays(
    exported: Mapping[str, Any] | bytes | str, registry: Mapping[str, WorkflowFn]
) -> ReplayResult:
    """Assert that the code in `registry` (e.g. `runtime.workflows`) replays an
    exported history (`export_history`, or GET /workflows/{id}/export) cleanly;
    the AssertionError names the seq, the step asked for and the step recorded."""
    result = await check_history_replays(exported, registry)
    if not result.ok:
        raise AssertionError(
            f"workflow {result.workflow_id} ({result.name}) does not replay: {result.detail}")
    return result


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
