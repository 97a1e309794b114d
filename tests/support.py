"""Helpers shared by the tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bench.polling import eventually
from journal import Journal
from runtime import SimulatedCrash

__all__ = ["crashed", "wait_status"]


def _holds_crash(exc: BaseException) -> bool:
    if isinstance(exc, SimulatedCrash):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_holds_crash(inner) for inner in exc.exceptions)
    return False


@asynccontextmanager
async def crashed() -> AsyncIterator[None]:
    """Expect the block to die of a SimulatedCrash (bare or inside task groups)."""
    try:
        yield
    except BaseException as exc:  # noqa: BLE001 - a test asserting what killed the runtime
        if not _holds_crash(exc):
            raise
        return
    raise AssertionError("the runtime was expected to crash, and did not")


async def wait_status(journal: Journal, workflow_id: str, status: str, timeout: float = 5) -> None:
    """Poll until the workflow has `status`; fail after `timeout` seconds."""

    async def has_status() -> bool:
        row = await journal.get_workflow(workflow_id)
        return row is not None and row.status == status

    await eventually(has_status, within=timeout, interval=0.01,
                     what=f"workflow {workflow_id} to be {status}")
