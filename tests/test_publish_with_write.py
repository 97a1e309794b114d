"""`ctx.write(..., publish=(key, value))`: a workflow event committed with the
write, not with the next commit; and the invite workflow's move to it (behind
the patch "invite-event-with-write"), against both journals."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from actors import Onboarding, customer_actor_key, customer_id_for
from actors.messages import InviteCustomer, VerifyCustomer
from actors.workflows import INVITE_EVENT, INVITE_EVENT_PATCH
from journal import Journal
from runtime import Runtime, WorkflowContext, WriteSet

from .support import wait_status

Flow = Callable[[WorkflowContext, None], Awaitable[str]]


def _put(writes: WriteSet, doc_id: str, unique_key: str) -> str:
    writes.put("thing", doc_id, {"n": 1}, unique_key=unique_key)
    return unique_key


def _flow(held: anyio.Event, *, publish_with_write: bool, unique_key: str = "k1") -> Flow:
    """A write, then a pure step that holds the workflow until `held` is set: no
    commit happens meanwhile, so the event is visible then only if the write's
    own commit carried it."""

    async def flow(ctx: WorkflowContext, _: None) -> str:
        if publish_with_write:
            await ctx.write("put", _put, ctx.actor_key, unique_key,
                            publish=("answer", {"ok": True}))
        else:
            await ctx.write("put", _put, ctx.actor_key, unique_key)
            await ctx.set_event("answer", {"ok": True})
        await ctx.step("hold", held.wait, effect=False)
        return "done"

    return flow


@asynccontextmanager
async def _holding(journal: Journal, *, publish_with_write: bool) -> AsyncIterator[
        tuple[Runtime, str, anyio.Event]]:
    held = anyio.Event()
    async with Runtime(journal) as rt:
        rt.register(_flow(held, publish_with_write=publish_with_write), name="flow")
        row, _ = await rt.start_workflow("flow", None, actor_key="thing:1")
        yield rt, row.id, held
        held.set()
        done = await rt.wait_for_finish(row.id, 5)
        assert done is not None and done.status == "completed", done


async def _steps(journal: Journal, workflow_id: str) -> list[tuple[int, str, str]]:
    return [(s.seq, s.kind, s.name) for s in await journal.load_steps(workflow_id)]


async def test_the_event_commits_with_the_write_and_takes_no_step(journal: Journal) -> None:
    async with _holding(journal, publish_with_write=True) as (rt, workflow_id, _):
        found, value, ended = await rt.wait_for_outcome(workflow_id, "answer", 5)
        assert (found, value, ended) == (True, {"ok": True}, None)
        # In the journal already, while the workflow holds (no commit since the write).
        assert await journal.get_workflow_event(workflow_id, "answer") == (True, {"ok": True})
    assert await _steps(journal, workflow_id) == [(1, "write", "put"), (2, "step", "hold")]


async def test_control_set_event_after_the_write_waits_for_the_next_commit(
    journal: Journal,
) -> None:
    """What publish= saves: the same flow with set_event has no event in the
    journal while it holds (the check above can fail)."""
    async with _holding(journal, publish_with_write=False) as (rt, workflow_id, _):
        await wait_status(journal, workflow_id, "running")
        await anyio.sleep(0.05)
        assert await journal.get_workflow_event(workflow_id, "answer") == (False, None)
    assert await journal.get_workflow_event(workflow_id, "answer") == (True, {"ok": True})


async def test_a_write_that_fails_publishes_nothing(journal: Journal) -> None:
    held = anyio.Event()
    held.set()
    async with Runtime(journal) as rt:
        rt.register(_flow(held, publish_with_write=True, unique_key="taken"), name="flow")
        first, _ = await rt.start_workflow("flow", None, actor_key="thing:1")
        assert (await rt.wait_for_finish(first.id, 5)).status == "completed"  # type: ignore[union-attr]
        # Another actor's row holds the unique key "taken": this write is refused.
        second, _ = await rt.start_workflow("flow", None, actor_key="thing:2")
        found, _, ended = await rt.wait_for_outcome(second.id, "answer", 5)
    assert not found and ended is not None and ended.status == "failed"
    assert "put" in (ended.error or "")
    assert await journal.get_workflow_event(second.id, "answer") == (False, None)


# -- the invite workflow: the old shape still replays ---------------------------------


@pytest.fixture
def before_the_patch(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make `ctx.patched(INVITE_EVENT_PATCH)` answer False at the live edge, as
    the code before the patch behaved (it wrote the event as a step of its own);
    the returned function undoes it (the deploy of today's code)."""
    real = WorkflowContext.patched

    async def unpatched(self: WorkflowContext, name: str) -> bool:
        if name == INVITE_EVENT_PATCH:
            return False
        return await real(self, name)

    monkeypatch.setattr(WorkflowContext, "patched", unpatched)
    return lambda: monkeypatch.setattr(WorkflowContext, "patched", real)


async def _invite(rt: Runtime, onboarding: Onboarding, email: str) -> tuple[str, dict[str, Any]]:
    workflow_id, _ = await onboarding.invite(rt, InviteCustomer(email=email))
    found, value, _ = await rt.wait_for_outcome(workflow_id, INVITE_EVENT, 5)
    assert found, value
    return workflow_id, value


async def test_an_invite_waiting_in_the_old_shape_verifies_under_the_patched_code(
    journal: Journal, before_the_patch: Callable[[], None],
) -> None:
    onboarding = Onboarding()
    async with Runtime(journal) as rt:
        onboarding.register(rt)
        old_id, old_answer = await _invite(rt, onboarding, "old@example.com")
        await wait_status(journal, old_id, "waiting")
    old_shape = await _steps(journal, old_id)
    assert old_shape[2:4] == [(3, "write", "invite.write"), (4, "event", INVITE_EVENT)]

    before_the_patch()  # today's code
    async with Runtime(journal) as rt:
        onboarding.register(rt)
        new_id, new_answer = await _invite(rt, onboarding, "new@example.com")
        await wait_status(journal, new_id, "waiting")
        for workflow_id, email in [(old_id, "old@example.com"), (new_id, "new@example.com")]:
            cid = customer_id_for(email)
            [invited] = [e for e in await journal.read_events(customer_actor_key(cid))
                         if e.type == "CustomerInvited"]
            await rt.signal(workflow_id, "verify", VerifyCustomer(
                customer_id=cid, token=invited.payload["token"], request_id="r1"))
            done = await rt.wait_for_finish(workflow_id, 5)
            assert done is not None and done.status == "completed", done
            assert done.result["invited"] is True and done.result["workflow_id"] == workflow_id
    assert old_answer["invited"] and new_answer["invited"]
    # The old history kept its shape (no marker slipped in); the new one has the marker
    # and no event step.
    assert (await _steps(journal, old_id))[:len(old_shape)] == old_shape
    new_shape = await _steps(journal, new_id)
    assert new_shape[2:4] == [(3, "patch", INVITE_EVENT_PATCH), (4, "write", "invite.write")]
    assert all(kind != "event" or name != INVITE_EVENT for _, kind, name in new_shape)
