"""runtime.testing opens a whole runtime for tests of user code."""

from __future__ import annotations

import time

import pytest

from actors import CUSTOMER, InviteCustomer, Onboarding, customer_id_for
from journal import Journal, MemoryJournal
from runtime import WorkflowContext
from runtime.testing import VirtualClock, open_test_runtime

from .support import wait_status


async def greet(ctx: WorkflowContext, name: str) -> str:
    return await ctx.step("greet", lambda: f"hello {name}")


@pytest.mark.parametrize("journal", ["memory", "postgres"])
async def test_a_workflow_runs_in_a_few_lines(journal: str) -> None:
    async with open_test_runtime(greet, journal=journal) as runtime:  # type: ignore[arg-type]
        row, created = await runtime.start_workflow("greet", "ada", actor_key="user:ada")
        done = await runtime.wait_for_finish(row.id, 10)
    assert created and done is not None and done.result == "hello ada"


@pytest.mark.parametrize("journal", ["memory", "postgres"], indirect=True)
async def test_a_week_long_verification_expires_at_once_on_a_virtual_clock(
    journal: Journal,
) -> None:
    """The onboarding's 7-day expiry, tested in milliseconds: the virtual clock
    fires the durable timer when the test moves it, on both journals."""
    clock = VirtualClock()
    if isinstance(journal, MemoryJournal):
        journal = MemoryJournal(clock=clock.timestamp)  # rows stamped on the same clock
    began = time.perf_counter()
    onboarding = Onboarding()
    async with open_test_runtime(journal=journal, clock=clock) as runtime:
        onboarding.register(runtime)
        workflow_id, _ = await onboarding.invite(runtime, InviteCustomer(email="ada@example.com"))
        await wait_status(runtime.journal, workflow_id, "waiting")
        await clock.advance(days=6, hours=23)
        assert await runtime.wait_for_finish(workflow_id, 0.05) is None  # not yet due
        await clock.advance(hours=1)
        done = await runtime.wait_for_finish(workflow_id, 5)
    assert done is not None and done.status == "completed"
    customer = await journal.get_document(CUSTOMER, customer_id_for("ada@example.com"))
    assert customer is not None and customer.data["status"] == "expired"
    assert time.perf_counter() - began < 1.0
