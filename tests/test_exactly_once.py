"""The race behind a double invite, reproduced on purpose, and what stops it.

An invite's workflow is committed by `start_workflow`, which then queues its Run.
If catch-up (or recovery) finds the workflow pending in between and runs it to
its wait, the accepting Run used to trust its stale row and replay the workflow
from an empty history: a second invite run (CustomerInvited, then
CustomerInviteFailed). Two things stop it now: the workflow is reserved while it
is accepted (one Run per workflow on a node), and the journal refuses a stale
run's appends (the run fence). Each test removes one and shows the other holds;
the last removes both and shows the double run, so the test can fail.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from actors import InviteCustomer, Onboarding, customer_actor_key, customer_id_for
from journal import Batch, Journal, MemoryJournal
from runtime import DelegatingJournal, Runtime

EMAIL = "ada@example.com"


class CatchUpAfterAccept(DelegatingJournal):
    """After the commit that accepts a workflow, and before `start_workflow` can
    queue it, runs the runtime's catch-up and lets that Run reach the wait (if
    catch-up queued one: a reserved workflow it leaves alone)."""

    runtime: Runtime | None = None

    async def append(self, batch: Batch) -> None:
        await self.inner.append(batch)
        accepted = batch.epoch is None and batch.workflows
        if accepted and self.runtime is not None:
            await self.runtime.catch_up()
            with anyio.move_on_after(1):
                while (row := await self.inner.get_workflow(batch.workflows[0].id)) is not None \
                        and row.status != "waiting":
                    await anyio.sleep(0.001)
                await anyio.sleep(0.01)  # its Run has ended: it waits for the token


async def invite_in_the_window(journal: Journal, *, trust_stale_rows: bool) -> tuple[Any, int]:
    """Invite once through the window; (event types of the customer, refused runs)."""
    racing = CatchUpAfterAccept(journal)
    onboarding = Onboarding()
    async with Runtime(racing, heartbeat_interval=60, lease_ttl=120) as runtime:
        runtime.trust_stale_rows = trust_stale_rows
        onboarding.register(runtime)
        racing.runtime = runtime
        workflow_id, created = await onboarding.invite(runtime, InviteCustomer(email=EMAIL))
        assert created
        key = customer_actor_key(customer_id_for(EMAIL))
        with anyio.fail_after(5):
            while len({e.type for e in await journal.read_events(key)} & {"MessageDelivered"}) < 1:
                await anyio.sleep(0.005)
        await anyio.sleep(0.05)  # the accepting Run, if any, has had its turn
        refused = runtime.metrics.duplicate_runs._value.get()
    return [e.type for e in await journal.read_events(key)], int(refused)


async def test_a_workflow_being_accepted_is_not_run_by_catch_up_first() -> None:
    types, refused = await invite_in_the_window(MemoryJournal(), trust_stale_rows=False)
    assert types.count("CustomerInvited") == 1 and "CustomerInviteFailed" not in types
    assert refused == 0


@pytest.mark.parametrize("journal", ["memory", "postgres"], indirect=True)
async def test_the_journal_refuses_the_stale_run_when_the_race_happens(journal: Journal) -> None:
    types, refused = await invite_in_the_window(journal, trust_stale_rows=True)
    assert types.count("CustomerInvited") == 1, types
    assert "CustomerInviteFailed" not in types, types
    assert refused == 1  # the stale run was stopped by the fence, and counted


async def test_without_either_fence_the_workflow_runs_twice() -> None:
    """The control: what the bug looked like. If this ever passes with one
    CustomerInvited only, the reproducer no longer reproduces anything."""
    types, _ = await invite_in_the_window(MemoryJournal(guards=False), trust_stale_rows=True)
    assert types.count("CustomerInvited") == 1
    assert "CustomerInviteFailed" in types
