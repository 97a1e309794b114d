"""The dashboard's JSON API and its files, over real HTTP and PostgreSQL."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from actors import customer_actor_key, customer_id_for
from bench.polling import eventually
from edge import WebhookCommunicator
from edge import quantile as _quantile
from journal import PARTITION_COUNT, Batch, NewWorkflow, PostgresJournal, StatusChange
from runtime import WorkflowContext
from tests.server_support import Served, serving

ROOT = Path(__file__).resolve().parent.parent
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


async def get(served: Served, path: str, **params: Any) -> Any:
    response = await served.client.get(path, params=params)
    assert response.status == 200, (path, await response.text())
    return await response.json()


async def invite(served: Served, email: str, **headers: str) -> Any:
    response = await served.client.post("/customers/invite", json={"email": email},
                                        headers=headers)
    assert response.status == 200, await response.text()
    return await response.json()


# -- the page and its files ----------------------------------------------------------------


async def test_the_page_and_its_files_load_without_the_token_and_the_api_asks_for_it(
    pg_dsn: str,
) -> None:
    async with serving(pg_dsn, api_token="s3cret") as served:
        client = served.client
        page = await client.get("/")
        assert (page.status, page.content_type) == (200, "text/html")
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        html = await page.text()
        files = set(re.findall(r'"/assets/([\w.-]+)"', html))
        assert {"app.css", "main.js"} <= files
        # Every module the page imports, transitively, is served without the token.
        pending, seen = list(files), set()
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen.add(name)
            response = await client.get(f"/assets/{name}")
            assert response.status == 200, name
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            if name.endswith(".js"):
                assert response.content_type == "text/javascript"
                pending += re.findall(r'from "\./([\w.-]+)"', await response.text())
        assert {"api.js", "dom.js", "timeline.js", "workflow.js", "overview.js"} <= seen

        first = await client.get("/assets/main.js")
        etag = first.headers["ETag"]
        again = await client.get("/assets/main.js", headers={"If-None-Match": etag})
        assert again.status == 304
        for missing in ("/assets/nope.js", "/assets/..%2Fserver.py", "/assets/.hidden"):
            response = await client.get(missing)
            assert response.status == 404, missing

        for path in ("/api/overview", "/api/actors", "/actors/x/events", "/workflows/x/trace"):
            assert (await client.get(path)).status == 401, path
            authorized = await client.get(path, headers={"Authorization": "Bearer s3cret"})
            assert authorized.status in (200, 404), path
        spec = await (await client.get("/openapi.json",
                                       headers={"Authorization": "Bearer s3cret"})).json()
        assert spec["paths"]["/"]["get"]["security"] == []
        assert spec["paths"]["/assets/{name}"]["get"]["security"] == []
        for path in ("/api/overview", "/api/actors", "/actors/{key}/events",
                     "/workflows/{id}/trace"):
            assert "401" in spec["paths"][path]["get"]["responses"], path
        query = {p["name"] for p in spec["paths"]["/workflows"]["get"]["parameters"]}
        assert {"status", "name", "customer", "since", "until", "cursor", "limit"} <= query


# -- overview ------------------------------------------------------------------------------


def test_percentiles_interpolate_within_the_bucket_as_prometheus_does() -> None:
    start = {0.01: 0.0, 0.1: 0.0, 1.0: 0.0, math.inf: 0.0}
    end = {0.01: 50.0, 0.1: 90.0, 1.0: 100.0, math.inf: 100.0}
    assert _quantile(0.5, start, end) == pytest.approx(0.01)
    assert _quantile(0.7, start, end) == pytest.approx(0.01 + 0.09 * 0.5)
    assert _quantile(0.99, start, end) == pytest.approx(0.1 + 0.9 * 0.9)
    assert _quantile(0.5, end, end) is None  # nothing observed between the readings
    assert _quantile(0.99, {}, {0.1: 1.0, math.inf: 2.0}) == 0.1  # past the last bound


async def test_the_overview_counts_workflows_and_measures_rates_and_latency(
    served: Served,
) -> None:
    for name in ("ann", "ben", "cat"):
        await invite(served, f"{name}@example.com")

    async def settled() -> Any:
        data = await get(served, "/api/overview")
        return data if data["counts"]["completed"] == 3 else None

    data = await eventually(settled)
    assert data["counts"] == {"pending": 0, "running": 0, "waiting": 3, "parked": 0,
                              "completed": 3, "failed": 0, "cancelled": 0}
    assert data["total"] == 6
    assert data["runtime"]["ready"] is True
    assert data["runtime"]["active_actors"] == 3 and data["runtime"]["timers"] == 3
    assert data["window_seconds"] > 0
    assert data["rates"]["started"] > 0 and data["rates"]["commands"] > 0
    assert data["rates"]["workflow_error_rate"] == 0
    commands = data["latency"]["commands"]
    assert commands["count"] == 3
    assert 0 < commands["p50"] <= commands["p90"] <= commands["p99"]
    assert data["latency"]["steps"]["count"] > 0
    assert data["samples"], data
    sample = data["samples"][-1]
    assert sample["seconds"] > 0 and sample["t"] <= datetime.now(UTC).timestamp() + 1
    # The dashboard's own GETs are not commands.
    for _ in range(3):
        await get(served, "/api/overview")
    assert (await get(served, "/api/overview"))["latency"]["commands"]["count"] == 3

    for bad in ("0", "16", "x"):
        response = await served.client.get("/api/overview", params={"minutes": bad})
        assert response.status == 400
        assert "`$.minutes`" in (await response.json())["error"]


async def test_workflow_counts_are_the_overviews_counts_alone_behind_the_token(
    pg_dsn: str,
) -> None:
    token = {"Authorization": "Bearer s3cret"}
    async with serving(pg_dsn, api_token="s3cret") as served:
        client = served.client
        assert (await client.get("/api/workflow-counts")).status == 401
        empty = await client.get("/api/workflow-counts", headers=token)
        assert await empty.json() == {"counts": {"pending": 0, "running": 0, "waiting": 0,
                                                 "parked": 0, "completed": 0, "failed": 0,
                                                 "cancelled": 0}}
        for name in ("ann", "ben"):
            await invite(served, f"{name}@example.com", **token)

        async def settled() -> Any:
            response = await client.get("/api/workflow-counts", headers=token)
            data = await response.json()
            return data if data["counts"]["completed"] == 2 else None

        data = await eventually(settled)
        assert data == {"counts": {"pending": 0, "running": 0, "waiting": 2, "parked": 0,
                                   "completed": 2, "failed": 0, "cancelled": 0}}
        overview = await (await client.get("/api/overview", headers=token)).json()
        assert overview["counts"] == data["counts"]

        spec = await (await client.get("/openapi.json", headers=token)).json()
        operation = spec["paths"]["/api/workflow-counts"]["get"]
        assert "401" in operation["responses"] and "security" not in operation
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/WorkflowCountsReply"
        }
        schema = spec["components"]["schemas"]["WorkflowCountsReply"]
        assert schema["required"] == ["counts"]


# -- actors and their event logs ----------------------------------------------------------


async def test_actors_show_their_mailbox_what_they_run_and_passivations(pg_dsn: str) -> None:
    gate = anyio.Event()

    async def hold(ctx: WorkflowContext, payload: Any) -> str:
        await gate.wait()
        return "released"

    async with serving(pg_dsn, idle_timeout=0.2) as served:
        served.runtime.register(hold)
        first, _ = await served.runtime.start_workflow("hold", {}, actor_key="hold:1")
        for _ in range(2):
            await served.runtime.start_workflow("hold", {}, actor_key="hold:1")
        await served.runtime.start_workflow("hold", {}, actor_key="hold:2")

        async def busy() -> Any:
            data = await get(served, "/api/actors")
            return data if len(data["actors"]) == 2 and data["mailbox_depth"] == 2 else None

        data = await eventually(busy)
        assert data["actors"][0] == {"key": "hold:1", "mailbox_depth": 2,
                                     "current_workflow": first.id}
        assert data["actors"][1]["key"] == "hold:2"
        assert (data["active"], data["in_flight"], data["truncated"]) == (2, 4, False)
        only = await get(served, "/api/actors", q="2", limit=1)
        assert [a["key"] for a in only["actors"]] == ["hold:2"]
        assert (await get(served, "/api/actors", limit=1))["truncated"] is True

        gate.set()

        async def passivated() -> Any:
            data = await get(served, "/api/actors")
            return data if data["active"] == 0 else None

        data = await eventually(passivated)
        assert data["passivated"] == 2 and data["actors"] == []
        assert (await get(served, "/api/overview"))["runtime"]["passivations"] == 2


async def test_an_actors_event_log_pages_oldest_first_with_tokens_redacted(
    served: Served,
) -> None:
    invited = await invite(served, "eve@example.com")
    key = customer_actor_key(invited["id"])

    async def three_events() -> Any:
        data = await get(served, f"/actors/{key}/events")
        return data if len(data["events"]) == 3 else None

    log = await eventually(three_events)
    assert [e["type"] for e in log["events"]] == ["CustomerInvited", "MessageRecorded",
                                                   "MessageDelivered"]
    assert [e["seq"] for e in log["events"]] == [1, 2, 3]
    first = log["events"][0]
    assert first["payload"]["token"] == "<redacted>"
    assert first["workflow_id"] == invited["workflow_id"]
    assert log["next_after"] is None

    page = await get(served, f"/actors/{key}/events", limit=1)
    assert [e["seq"] for e in page["events"]] == [1] and page["next_after"] == 1
    rest = await get(served, f"/actors/{key}/events", after=page["next_after"])
    assert [e["seq"] for e in rest["events"]] == [2, 3]
    assert (await get(served, "/actors/nobody/events"))["events"] == []
    response = await served.client.get(f"/actors/{key}/events", params={"limit": "0"})
    assert response.status == 400


# -- traces ----------------------------------------------------------------------------------


async def test_the_trace_of_an_invite_has_its_steps_child_retry_and_wait(pg_dsn: str) -> None:
    calls: list[str] = []

    async def receive(request: web.Request) -> web.Response:
        calls.append((await request.json())["type"])
        return web.Response(status=500 if len(calls) == 1 else 204)

    receiver = web.Application()
    receiver.router.add_post("/hook", receive)
    async with TestServer(receiver) as hook, \
            WebhookCommunicator(str(hook.make_url("/hook"))) as communicator, \
            serving(pg_dsn, communicator=communicator) as served:
        invited = await invite(served, "tia@example.com",
                               traceparent=f"00-{TRACE}-{CALLER_SPAN}-01")
        workflow_id = invited["workflow_id"]
        child_id = f"{workflow_id}:5"

        async def delivered() -> Any:
            trace = await get(served, f"/workflows/{workflow_id}/trace")
            child = [s for s in trace["spans"] if s["workflow_id"] == child_id]
            done = any(s["kind"] == "workflow" and s["status"] == "completed" for s in child)
            waiting = any(s["name"] == "signal:verify" for s in trace["spans"])
            return trace if done and waiting else None

        trace = await eventually(delivered)
        detail = await get(served, f"/workflows/{workflow_id}")

    assert trace["trace_id"] == detail["trace_id"] == TRACE
    spans = trace["spans"]
    assert {s["trace_id"] for s in spans} == {TRACE}
    root = spans[0]
    assert (root["kind"], root["workflow_id"], root["status"]) == ("workflow", workflow_id,
                                                                   "waiting")
    assert (root["parent_span_id"], root["remote_parent"]) == (CALLER_SPAN, True)
    mine = [s for s in spans if s["workflow_id"] == workflow_id and s["kind"] != "workflow"]
    assert [(s["seq"], s["kind"], s["name"]) for s in mine] == [
        (1, "step", "invite.lookup"), (2, "step", "invite.operate"),
        (3, "patch", "invite-event-with-write"), (4, "write", "invite.write"),
        (5, "child", "communicate_to_customer"),
        (6, "patch", "verification-reminder"), (7, "step", "now"), (8, "wait", "signal:verify"),
    ]
    wait = mine[-1]
    assert wait["status"] == "started" and "finished_at" not in wait and wait["fire_at"]
    start_child = mine[4]
    assert start_child["child_workflow_id"] == child_id
    child_root = next(s for s in spans if s["workflow_id"] == child_id and s["kind"] == "workflow")
    assert child_root["parent_span_id"] == start_child["span_id"]
    deliver = next(s for s in spans if s["name"] == "communicate.deliver")
    attempts = [s for s in spans if s["kind"] == "attempt"]
    assert [(a["attempt"], a["status"], a["parent_span_id"]) for a in attempts] == [
        (1, "failed", deliver["span_id"]), (2, "completed", deliver["span_id"])]
    assert "answered 500" in attempts[0]["error"]
    assert deliver["attempt"] == 2 and deliver["status"] == "completed"
    steps = {s["name"]: s for s in detail["children"]}
    assert steps["communicate_to_customer"]["id"] == child_id


async def test_a_bad_or_missing_traceparent_starts_a_trace_of_its_own(served: Served) -> None:
    ids = []
    for headers in ({}, {"traceparent": "00-nothex-00f067aa0ba902b7-01"}):
        invited = await invite(served, f"t{len(ids)}@example.com", **headers)
        ids.append(invited["workflow_id"])
    traces = [(await get(served, f"/workflows/{i}"))["trace_id"] for i in ids]
    assert all(re.fullmatch(r"[0-9a-f]{32}", t) for t in traces) and traces[0] != traces[1]
    trace = await get(served, f"/workflows/{ids[1]}/trace")
    assert "parent_span_id" not in trace["spans"][0]
    response = await served.client.get("/workflows/nope/trace")
    assert response.status == 404 and "no workflow" in (await response.json())["error"]


# -- the workflow list over thousands ---------------------------------------------------------

MANY = 3000
BASE = datetime(2026, 1, 1, tzinfo=UTC)


def _status_of(i: int) -> str:
    if i % 300 == 7:
        return "cancelled"  # rare: 10 of 3000
    return "failed" if i % 10 == 0 else "waiting" if i % 10 == 1 else "completed"


async def _insert_many(journal: PostgresJournal, dsn: str) -> str:
    """MANY workflows, straight through the journal in concurrent batches; the i-th
    created at BASE + i minutes. Every 100th belongs to one customer."""
    customer_actor = customer_actor_key(customer_id_for("vip@example.com"))

    async def batch(start: int) -> None:
        rows = range(start, min(start + 250, MANY))
        workflows = tuple(NewWorkflow(
            id=f"wf-{i:05d}", name="alpha" if i % 2 else "beta",
            actor_key=customer_actor if i % 100 == 0 else f"load:{i % 37}",
            partition=i % PARTITION_COUNT, trace_id=f"{i:032x}",
        ) for i in rows)
        statuses = tuple(StatusChange(workflow_id=f"wf-{i:05d}", status=_status_of(i))
                         for i in rows if _status_of(i) != "pending")
        # Appends commit in any order; positions follow the id in the end, below.
        await journal.append(Batch(partition=0, epoch=None, workflows=workflows))
        await journal.append(Batch(partition=0, epoch=None, statuses=statuses))

    async with anyio.create_task_group() as tg:
        for start in range(0, MANY, 250):
            tg.start_soon(batch, start)
    conn = await asyncpg.connect(dsn)
    try:
        # Creation order = id order, a minute apart, so ranges are easy to state.
        await conn.execute("""
            WITH ordered AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS i FROM workflows)
            UPDATE workflows w SET position = o.i + 1000000,
                                   created_at = $1::timestamptz + o.i * interval '1 minute'
            FROM ordered o WHERE w.id = o.id""", BASE)
        await conn.execute("ANALYZE workflows")
    finally:
        await conn.close()
    return customer_actor


async def _all_pages(served: Served, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    for _ in range(MANY):
        page = await get(served, "/workflows", **params, **({"cursor": cursor} if cursor else {}))
        found += page["workflows"]
        cursor = page["next_cursor"]
        if cursor is None:
            return found
    raise AssertionError("the pages never ended")


def _iso(minutes: int) -> str:
    return (BASE + timedelta(minutes=minutes)).isoformat()


async def test_the_list_filters_and_pages_over_thousands_of_workflows(pg_dsn: str) -> None:
    async with serving(pg_dsn, open_runtime=False) as served:
        customer_actor = await _insert_many(served.journal, pg_dsn)

        overview = await get(served, "/api/overview")
        assert overview["counts"] == {"pending": 0, "running": 0, "waiting": MANY // 10,
                                      "parked": 0, "completed": MANY * 8 // 10 - 10,
                                      "failed": MANY // 10, "cancelled": 10}

        failed = await _all_pages(served, status="failed", limit=120)
        assert [w["id"] for w in failed] == [f"wf-{i:05d}" for i in range(MANY - 10, -1, -10)]

        every = await _all_pages(served, limit=500)
        assert len(every) == len({w["id"] for w in every}) == MANY
        assert every[0]["id"] == f"wf-{MANY - 1:05d}" and every[-1]["id"] == "wf-00000"

        betas = await _all_pages(served, name="beta", status="completed", limit=500)
        assert {w["name"] for w in betas} == {"beta"} and {w["status"] for w in betas} == {
            "completed"}
        assert len(betas) == sum(1 for i in range(0, MANY, 2) if _status_of(i) == "completed")

        vip = await _all_pages(served, customer="VIP@example.com", limit=7)
        assert [w["id"] for w in vip] == [f"wf-{i:05d}" for i in range(2900, -1, -100)]
        assert {w["actor_key"] for w in vip} == {customer_actor}
        by_id = await get(served, "/workflows", customer=customer_id_for("vip@example.com"))
        assert [w["id"] for w in by_id["workflows"]] == [w["id"] for w in vip]

        # Created in [minute 1000, minute 1100): exactly those 100, in pages of 30.
        window = await _all_pages(served, since=_iso(1000), until=_iso(1100), limit=30)
        assert [w["id"] for w in window] == [f"wf-{i:05d}" for i in range(1099, 999, -1)]
        # Only the oldest rows match: the server reads through the newer pages itself.
        oldest = await _all_pages(served, until=_iso(40), status="failed", limit=50)
        assert [w["id"] for w in oldest] == ["wf-00030", "wf-00020", "wf-00010", "wf-00000"]
        recent = await get(served, "/workflows", since=_iso(MANY - 5))
        assert [w["id"] for w in recent["workflows"]] == [f"wf-{i:05d}" for i in
                                                          range(MANY - 1, MANY - 6, -1)]
        assert recent["next_cursor"] is None

        for params, part in (({"since": "2026-01-01T00:00:00"}, "`$.since`"),
                             ({"customer": "not-an-email"}, "`$.customer`"),
                             ({"customer": "a@b.co", "actor": "x"}, "not both"),
                             ({"name": ""}, "`$.name`")):
            response = await served.client.get("/workflows", params=params)
            assert response.status == 400, params
            assert part in (await response.json())["error"], params


async def test_the_list_query_uses_an_index_for_the_status_filter(pg_dsn: str) -> None:
    from journal._pg_workflows import _LIST_WORKFLOWS

    async with serving(pg_dsn, open_runtime=False) as served:
        await _insert_many(served.journal, pg_dsn)
    conn = await asyncpg.connect(pg_dsn)
    try:
        used = {status: await _indexes_used(conn, _LIST_WORKFLOWS, status)
                for status in ("failed", "cancelled")}
    finally:
        await conn.close()
    # No sequential scan, with the planner's own statistics (no enable_seqscan = off).
    # A common status (10% of rows): walking the position index newest first fills a
    # page soonest. A rare one (0.3%): the (status, position) index goes straight to it.
    assert used["failed"] <= {"workflows_position", "workflows_status_position"}, used
    assert used["cancelled"] == {"workflows_status_position"}, used


async def _indexes_used(conn: asyncpg.Connection, query: str, status: str) -> set[str]:
    """The indexes the plan of the list query reads workflows through; fails on a
    scan of workflows that is not an index scan."""
    # Bound parameters, as asyncpg binds them: the planner sees their values.
    [plan] = json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + query,
                                            status, None, None, None, 51, None, None))
    nodes = [n for n in _plan_nodes(plan["Plan"]) if n.get("Relation Name") == "workflows"]
    assert nodes, plan
    assert all(n["Node Type"] in ("Index Scan", "Index Only Scan") for n in nodes), nodes
    return {n["Index Name"] for n in nodes}


def _plan_nodes(node: dict[str, Any]) -> Any:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)
