"""runtime.testing opens a whole runtime for tests of user code."""

from __future__ import annotations

from datetime import timedelta

import pytest

from actors import CUSTOMER, InviteCustomer, Onboarding, customer_id_for
from bench.polling import eventually
from journal import Journal, MemoryJournal
from runtime import RetryPolicy, WorkflowContext
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
    """The onboarding's 7-day expiry, tested in milliseconds (see the durations:
    `pytest --durations=0`): the virtual clock fires the durable timer when the
    test moves it, on both journals."""
    clock = VirtualClock()
    if isinstance(journal, MemoryJournal):
        journal = MemoryJournal(clock=clock.timestamp)  # rows stamped on the same clock
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


@pytest.mark.parametrize("journal", ["memory", "postgres"], indirect=True)
async def test_durable_sleeps_and_retry_backoffs_follow_the_virtual_clock(
    journal: Journal,
) -> None:
    """A month's sleep, then a step whose retry waits an hour: nothing moves until
    the clock does, and each fires the moment it comes due."""
    clock = VirtualClock()
    if isinstance(journal, MemoryJournal):
        journal = MemoryJournal(clock=clock.timestamp)
    attempts: list[timedelta] = []
    start = clock.now()
    hourly = RetryPolicy(max_attempts=3, initial_backoff=3600, max_backoff=3600, jitter=0.0)

    def charge() -> int:
        attempts.append(clock.now() - start)
        if len(attempts) == 1:
            raise ConnectionError("the payment provider is down")
        return len(attempts)

    async def renew(ctx: WorkflowContext, _: None) -> int:
        await ctx.sleep(30 * 86400)
        return await ctx.step("charge", charge, retry=hourly)

    async def backing_off() -> bool:
        steps = await journal.load_steps(row.id)
        return [s.status for s in steps] == ["completed", "backoff"]

    async with open_test_runtime(renew, journal=journal, clock=clock) as runtime:
        row, _ = await runtime.start_workflow("renew", None, actor_key="subscription:1")
        await wait_status(journal, row.id, "waiting")
        await clock.advance(days=29, hours=23)
        assert await runtime.wait_for_finish(row.id, 0.05) is None
        assert attempts == []
        await clock.advance(hours=1)  # the sleep is over: the first attempt fails
        await eventually(backing_off, within=5, interval=0.01, what="the retry's backoff")
        assert attempts == [timedelta(days=30)]
        await clock.advance(minutes=59)
        assert await runtime.wait_for_finish(row.id, 0.05) is None
        await clock.advance(minutes=1)  # the backoff is over: the second attempt
        done = await runtime.wait_for_finish(row.id, 5)
    assert done is not None and (done.status, done.result) == ("completed", 2)
    assert attempts == [timedelta(days=30), timedelta(days=30, hours=1)]
