"""runtime.testing opens a whole runtime for tests of user code."""

from __future__ import annotations

import pytest

from runtime import WorkflowContext
from runtime.testing import open_test_runtime


async def greet(ctx: WorkflowContext, name: str) -> str:
    return await ctx.step("greet", lambda: f"hello {name}")


@pytest.mark.parametrize("journal", ["memory", "postgres"])
async def test_a_workflow_runs_in_a_few_lines(journal: str) -> None:
    async with open_test_runtime(greet, journal=journal) as runtime:  # type: ignore[arg-type]
        row, created = await runtime.start_workflow("greet", "ada", actor_key="user:ada")
        done = await runtime.wait_for_finish(row.id, 10)
    assert created and done is not None and done.result == "hello ada"
