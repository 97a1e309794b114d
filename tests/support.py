"""Helpers shared by the tests."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from bench.polling import eventually
from journal import Journal
from runtime import RetryPolicy, Runtime, SimulatedCrash, WorkflowContext, current_step

__all__ = ["FAST_RETRY", "Effects", "crashed", "ids", "run_one", "sequence", "wait_status"]


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


def ids(first: str) -> Callable[[], str]:
    """A Runtime's `new_id` whose first id (the first workflow's) is `first`: a
    fresh id, as eager start needs, that the test knows."""
    made = itertools.count()
    return lambda: first if (n := next(made)) == 0 else f"{first}-{n}"


async def wait_status(journal: Journal, workflow_id: str, status: str, timeout: float = 5) -> None:
    """Poll until the workflow has `status`; fail after `timeout` seconds."""

    async def has_status() -> bool:
        row = await journal.get_workflow(workflow_id)
        return row is not None and row.status == status

    await eventually(has_status, within=timeout, interval=0.01,
                     what=f"workflow {workflow_id} to be {status}")


# -- a workflow of effect steps, for the runtime tests ----------------------------------

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.002)


class Effects:
    """A side-effecting step target that records every call with its idempotency key."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.failures: dict[str, int] = {}

    async def act(self, name: str, value: int) -> int:
        self.calls.append((name, current_step().idempotency_key))
        if self.failures.get(name, 0) > 0:
            self.failures[name] -= 1
            raise ConnectionError(f"{name} is down")
        return value * 10

    def count(self) -> Counter[str]:
        return Counter(name for name, _ in self.calls)


def sequence(effects: Effects, steps: int = 4) -> Any:
    async def workflow(ctx: WorkflowContext, start: int) -> int:
        total = 0
        for i in range(steps):
            total += await ctx.step(f"s{i}", effects.act, f"s{i}", start + i, retry=FAST_RETRY)
        return total

    return workflow


async def run_one(journal: Journal, register: Any, name: str, payload: Any, key: str = "a:1",
                  **options: Any) -> Any:
    async with Runtime(journal, **options) as rt:
        register(rt)
        row, _ = await rt.start_workflow(name, payload, actor_key=key)
        done = await rt.wait_for_finish(row.id, 10)
        assert done is not None
        return done
