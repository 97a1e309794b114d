"""Forks: a finished workflow started again from one of its steps, after a fix.
In the runtime (both journals, one node and two) and over real HTTP."""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
import pytest

from actors import customer_actor_key, customer_id_for
from journal import (
    Batch,
    InvalidForkError,
    InvalidTransitionError,
    Journal,
    NewWorkflow,
    StatusChange,
    WorkflowNotFoundError,
)
from runtime import (
    NonRetryableError,
    Operator,
    Runtime,
    UnknownWorkflowTypeError,
    WorkflowContext,
    fork_workflow,
    partition_of,
)
from runtime.testing import assert_replays, open_test_runtime
from tests.server_support import Served, invitation_token, serving

from .support import wait_status
from .test_cluster import Ran, key_owned_by, node, settled


class Shop:
    """A workflow whose step 3 has a bug; `fixed()` is the same code with it fixed.
    `calls` counts every run of every step (the side effects)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def _effect(self, name: str) -> str:
        self.calls[name] += 1
        return name

    async def _buggy(self) -> str:
        self.calls["s3"] += 1
        raise NonRetryableError("division by zero in the tax code")

    async def _fixed(self) -> str:
        self.calls["s3"] += 1
        return "s3-fixed"

    def workflow(self, step3: Any) -> Any:
        async def checkout(ctx: WorkflowContext, order: str) -> list[str]:
            done = [await ctx.step("s1", self._effect, "s1"),
                    await ctx.step("s2", self._effect, "s2")]
            await ctx.set_event("reserved", order)
            done.append(await ctx.step("s3", step3))
            done.append(await ctx.step("s4", self._effect, "s4"))
            return done

        return checkout

    def buggy(self) -> Any:
        return self.workflow(self._buggy)

    def fixed(self) -> Any:
        return self.workflow(self._fixed)


async def _failed_checkout(rt: Runtime, shop: Shop) -> str:
    row, _ = await rt.start_workflow("checkout", "o-1", actor_key="order:1")
    done = await rt.wait_for_finish(row.id, 10)
    assert done is not None and done.status == "failed", done
    return row.id


# -- the runtime -------------------------------------------------------------------------


async def test_a_fork_after_a_fix_runs_from_its_seq_and_nothing_before(journal: Journal) -> None:
    shop = Shop()
    async with open_test_runtime(journal=journal) as rt:
        rt.register(shop.buggy(), name="checkout")
        original = await _failed_checkout(rt, shop)
        assert shop.calls == {"s1": 1, "s2": 1, "s3": 1}
        rt.register(shop.fixed(), name="checkout")  # the fix is deployed
        fork, created = await rt.fork(original, 4)
        assert created and (fork.forked_from, fork.forked_at_seq) == (original, 4)
        done = await rt.wait_for_finish(fork.id, 10)
        assert done is not None and done.status == "completed", done
        assert done.result == ["s1", "s2", "s3-fixed", "s4"]
        assert shop.calls == {"s1": 1, "s2": 1, "s3": 2, "s4": 1}  # 1-2 kept, not re-run
        assert await rt.wait_for_event(fork.id, "reserved", 1) == (True, "o-1")
        assert [r.id for r in await journal.forks(original)] == [fork.id]
        assert (await journal.get_workflow(original)).status == "failed"  # type: ignore[union-attr]
        # Forking from 1 runs everything again.
        again, _ = await rt.fork(original, 1)
        assert (await rt.wait_for_finish(again.id, 10)).status == "completed"  # type: ignore[union-attr]
        assert shop.calls == {"s1": 2, "s2": 2, "s3": 3, "s4": 2}


async def test_a_fork_from_a_process_without_a_runtime_runs_on_the_owner(
    journal: Journal,
) -> None:
    shop = Shop()
    async with open_test_runtime(journal=journal) as rt:
        rt.register(shop.buggy(), name="checkout")
        original = await _failed_checkout(rt, shop)
        rt.register(shop.fixed(), name="checkout")
        # What the operator's CLI does: the journal, and a wake-up for the owner.
        fork, created = await fork_workflow(journal, original, 4, idempotency_key="cli-1")
        assert created and fork.forked_from == original
        done = await rt.wait_for_finish(fork.id, 10)
        assert done is not None and done.result == ["s1", "s2", "s3-fixed", "s4"], done
        again, created = await Operator(journal).fork(original, 4, idempotency_key="cli-1")
        assert (again.id, created) == (fork.id, False)
        assert shop.calls == {"s1": 1, "s2": 1, "s3": 2, "s4": 1}
        with pytest.raises(InvalidForkError):
            await fork_workflow(journal, original, 9)


async def test_a_fork_is_refused_for_a_bad_seq_a_live_or_unknown_workflow(
    journal: Journal,
) -> None:
    shop = Shop()

    async def waits(ctx: WorkflowContext, _: None) -> None:
        await ctx.wait_for_signal("go")

    async with open_test_runtime(waits, journal=journal) as rt:
        rt.register(shop.buggy(), name="checkout")
        original = await _failed_checkout(rt, shop)
        with pytest.raises(InvalidForkError, match="choose a seq from 1 to 5"):
            await rt.fork(original, 6)
        with pytest.raises(WorkflowNotFoundError):
            await rt.fork("ghost", 1)
        live, _ = await rt.start_workflow("waits", None, actor_key="w:1")
        await wait_status(journal, live.id, "waiting")
        with pytest.raises(InvalidTransitionError, match="'waiting'"):
            await rt.fork(live.id, 1)
        assert rt.statistics().in_flight == 0
    async with open_test_runtime(journal=journal) as bare:
        with pytest.raises(UnknownWorkflowTypeError):
            await bare.fork(original, 1)
    assert await journal.forks(original) == []


async def test_a_fork_asked_on_another_node_runs_on_the_partitions_owner(
    journal: Journal,
) -> None:
    ran = Ran()
    async with node(journal, "node-a", ran) as a, node(journal, "node-b", ran) as b:
        await settled(a, b)
        row, _ = await b.start_workflow("flow", None, actor_key=key_owned_by(b))
        await wait_status(journal, row.id, "waiting")
        await b.signal(row.id, "go", "first-go")
        assert (await b.wait_for_finish(row.id, 10)) is not None
        fork, created = await a.fork(row.id, 3)  # keeps "first" and the wait
        assert created
        done = await a.wait_for_finish(fork.id, 10)  # a polls the journal
        assert done is not None and done.result == ["node-b", "first-go", "node-b"], done
        assert [(n, s) for n, wf, s in ran.steps if wf == fork.id] == [("node-b", "second")]
        assert a.statistics().in_flight == 0


# -- over HTTP ----------------------------------------------------------------------------


async def test_fork_over_http_recovers_a_failed_workflow_after_a_fix(pg_dsn: str) -> None:
    shop = Shop()
    async with serving(pg_dsn) as served:
        client = served.client
        served.runtime.register(shop.buggy(), name="checkout")
        original = await _failed_checkout(served.runtime, shop)
        served.runtime.register(shop.fixed(), name="checkout")
        response = await client.post(f"/workflows/{original}/fork", json={"from_seq": 4})
        body = await response.json()
        assert response.status == 201, body
        fork_id = body["workflow_id"]
        assert body == {"workflow_id": fork_id, "forked_from": original, "from_seq": 4,
                        "status_url": f"/workflows/{fork_id}"}
        assert response.headers["Location"] == f"/workflows/{fork_id}"
        done = await served.runtime.wait_for_finish(fork_id, 10)
        assert done is not None and done.status == "completed", done
        assert shop.calls == {"s1": 1, "s2": 1, "s3": 2, "s4": 1}

        forked = await (await client.get(f"/workflows/{fork_id}")).json()
        assert (forked["forked_from"], forked["forked_at_seq"]) == (original, 4)
        assert [(s["seq"], s["name"], s["status"]) for s in forked["steps"]] == [
            (1, "s1", "completed"), (2, "s2", "completed"), (3, "reserved", "completed"),
            (4, "s3", "completed"), (5, "s4", "completed")]
        assert forked["forks"] == []
        first = await (await client.get(f"/workflows/{original}")).json()
        assert (first["forked_from"], first["forked_at_seq"]) == (None, None)
        assert [(f["id"], f["forked_at_seq"]) for f in first["forks"]] == [(fork_id, 4)]


async def test_fork_validation_answers_say_what_to_fix(pg_dsn: str) -> None:
    shop = Shop()

    async def waits(ctx: WorkflowContext, _: None) -> None:
        await ctx.wait_for_signal("go")

    async with serving(pg_dsn) as served:
        client = served.client
        served.runtime.register(shop.buggy(), name="checkout")
        served.runtime.register(waits)
        original = await _failed_checkout(served.runtime, shop)
        live, _ = await served.runtime.start_workflow("waits", None, actor_key="w:1")
        await wait_status(served.journal, live.id, "waiting")
        cases: list[tuple[str, Any, int, str]] = [
            ("ghost", {"from_seq": 1}, 404, "no workflow with id 'ghost'"),
            (original, {"from_seq": 0}, 422, "choose a seq from 1 to 5"),
            (original, {"from_seq": 6}, 422, "its last step is seq 4"),
            (original, {"from_seq": "3"}, 400, "Expected `int`, got `str` - at `$.from_seq`"),
            (original, {}, 400, "missing required field `from_seq`"),
            (original, {"from_seq": 1, "x": 1}, 400, "unknown field `x`"),
            (live.id, {"from_seq": 1}, 409, "cancel it first"),
        ]
        for wf_id, body, status, problem in cases:
            response = await client.post(f"/workflows/{wf_id}/fork", json=body)
            answer = await response.json()
            assert (response.status, problem in answer["error"]) == (status, True), answer
        assert await served.journal.forks(original) == []
        assert await served.journal.forks(live.id) == []
        # A workflow whose code this server does not have cannot be forked here.
        await served.journal.create_workflow(NewWorkflow(
            id="gone-1", name="retired", actor_key="r:1", partition=partition_of("r:1")))
        await served.journal.append(Batch(partition=partition_of("r:1"), epoch=None, statuses=(
            StatusChange(workflow_id="gone-1", status="failed"),)))
        response = await client.post("/workflows/gone-1/fork", json={"from_seq": 1})
        assert response.status == 409
        assert "no workflow named 'retired' is registered" in (await response.json())["error"]


async def test_fork_honours_an_idempotency_key(pg_dsn: str) -> None:
    shop = Shop()
    async with serving(pg_dsn) as served:
        client = served.client
        served.runtime.register(shop.buggy(), name="checkout")
        original = await _failed_checkout(served.runtime, shop)
        key = {"Idempotency-Key": "fork-o-1"}
        url = f"/workflows/{original}/fork"
        first = await client.post(url, json={"from_seq": 2}, headers=key)
        again = await client.post(url, json={"from_seq": 2}, headers=key)
        assert (first.status, again.status) == (201, 201)
        assert await first.json() == await again.json()
        other = await client.post(url, json={"from_seq": 3}, headers=key)
        assert other.status == 422
        assert "different body" in (await other.json())["error"]
        assert len(await served.journal.forks(original)) == 1


# -- export over HTTP -----------------------------------------------------------------------


async def test_export_hands_out_a_redacted_history_that_todays_code_replays(
    served: Served,
) -> None:
    client = served.client
    invited = await (await client.post("/customers/invite",
                                       json={"email": "eve@example.com"})).json()
    workflow_id = invited["workflow_id"]
    await wait_status(served.journal, workflow_id, "waiting")
    response = await client.get(f"/workflows/{workflow_id}/export")
    assert response.status == 200
    token = await invitation_token(served.journal, invited["id"])
    assert token not in await response.text()
    exported = msgspec.json.decode(await response.read())
    assert exported["format"] == "retinue.history/1"
    assert exported["workflow"]["actor_key"] == customer_actor_key(
        customer_id_for("eve@example.com"))
    result = await assert_replays(await response.read(), served.runtime.workflows)
    assert result.seq == exported["steps"][-1]["seq"]  # stops at the pending verification
    missing = await client.get("/workflows/ghost/export")
    assert missing.status == 404
    assert "no workflow with id 'ghost'" in (await missing.json())["error"]
