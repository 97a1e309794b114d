"""The HTTP edge: real HTTP to a real aiohttp server over a Runtime on PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from prometheus_client.parser import text_string_to_metric_families

from actors import INVITE_WORKFLOW, customer_actor_key, customer_id_for
from bench.polling import eventually
from runtime import RestartPolicy, VirtualClock, WorkflowContext
from tests.server_support import JSON, Served, invitation_token, serving, workflow_count
from tests.support import wait_status

ROOT = Path(__file__).resolve().parent.parent


async def _invite(served: Served, email: str, **kwargs: Any) -> tuple[int, Any]:
    response = await served.client.post("/customers/invite", json={"email": email}, **kwargs)
    return response.status, await response.json()


# -- invite -----------------------------------------------------------------------------


async def test_invite_answers_200_then_409_for_the_same_customer(served: Served) -> None:
    status, body = await _invite(served, "Ada@Example.com")
    assert status == 200, body
    customer_id = customer_id_for("ada@example.com")
    assert body == {"id": customer_id, "email": "ada@example.com", "invited": True,
                    "workflow_id": body["workflow_id"]}

    status, again = await _invite(served, " ada@example.COM ")
    assert status == 409
    assert again["id"] == customer_id
    assert "already a customer" in again["error"]

    response = await served.client.get(f"/customers/{customer_id}")
    customer = await response.json()
    assert response.status == 200
    assert customer == {"id": customer_id, "email": "ada@example.com", "invited": True,
                        "verified": False, "status": "invited",
                        "invited_at": customer["invited_at"], "verified_at": None}


async def test_concurrent_invites_of_one_email_make_exactly_one_customer(served: Served) -> None:
    results: list[tuple[int, Any]] = []

    async def invite() -> None:
        results.append(await _invite(served, "grace@example.com"))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(invite)
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [409] * 9
    assert {body["id"] for _, body in results} == {customer_id_for("grace@example.com")}


# -- bad input --------------------------------------------------------------------------

_UNKNOWN = "0b9f6c3e-2d41-4f6a-8e8b-6a3c1d2e4f50"

BAD_REQUESTS: list[tuple[str, str, Any, dict[str, str], int, str]] = [
    # method, path, body (bytes or JSON value), headers, status, part of the error
    ("POST", "/customers/invite", {"email": 1}, {}, 400,
     "Expected `str`, got `int` - at `$.email`"),
    ("POST", "/customers/invite", {}, {}, 400, "missing required field `email`"),
    ("POST", "/customers/invite", {"email": "a@b.co", "x": 1}, {}, 400, "unknown field `x`"),
    ("POST", "/customers/invite", [], {}, 400, "Expected `object`, got `array` - at `$`"),
    ("POST", "/customers/invite", b"{nope", {}, 400, "not valid JSON"),
    ("POST", "/customers/invite", b"", {}, 400, "the request body is empty"),
    ("POST", "/customers/invite", {"email": "nope"}, {}, 400, "not an email address"),
    ("POST", "/customers/invite", {"email": "x" * 300 + "@a.co"}, {}, 400, "- at `$.email`"),
    ("POST", "/customers/invite", b'{"email": "' + b"a" * 70_000 + b'@b.co"}', {}, 413,
     "larger than 65536 bytes"),
    ("POST", "/customers/invite", b'{"email": "a@b.co"}', {"Content-Type": "text/plain"}, 415,
     "application/json"),
    ("POST", "/customers/invite", {"email": "a@b.co"}, {"Idempotency-Key": "has space"}, 400,
     "Idempotency-Key"),
    ("POST", "/customers/not-a-uuid/verify", {"token": "t"}, {}, 400, "is not a customer id"),
    ("POST", f"/customers/{_UNKNOWN}/verify", {"token": 5}, {}, 400, "at `$.token`"),
    ("POST", f"/customers/{_UNKNOWN}/verify", {"token": ""}, {}, 400, "at `$.token`"),
    ("POST", f"/customers/{_UNKNOWN}/verify", {"token": "t"}, {}, 404, "no customer"),
    ("GET", "/customers/42", None, {}, 400, "is not a customer id"),
    ("GET", f"/customers/{_UNKNOWN}", None, {}, 404, "no customer"),
    ("GET", f"/customers/{_UNKNOWN}/messages", None, {}, 404, "no customer"),
    ("GET", "/workflows?limit=0", None, {}, 400, "`$.limit`"),
    ("GET", "/workflows?limit=501", None, {}, 400, "`$.limit`"),
    ("GET", "/workflows?limit=ten", None, {}, 400, "`$.limit`"),
    ("GET", "/workflows?status=sleepy", None, {}, 400, "`$.status`"),
    ("GET", "/workflows?colour=red", None, {}, 400, "unknown field `colour`"),
    ("GET", "/workflows?limit=1&limit=2", None, {}, 400, "more than once"),
    ("GET", "/workflows?cursor=abc", None, {}, 400, "`$.cursor`"),
    ("GET", "/workflows?cursor=99999999999999999999", None, {}, 400, "`$.cursor`"),
    ("GET", "/workflows/nope", None, {}, 404, "no workflow"),
    ("POST", "/workflows/nope/retry", None, {}, 404, "no workflow"),
    ("POST", "/workflows/nope/cancel", None, {}, 404, "no workflow"),
    ("POST", "/dead-letters/abc/redeliver", None, {}, 400, "not a dead letter id"),
    ("POST", "/dead-letters/999/redeliver", None, {}, 404, "no dead letter 999"),
    ("GET", "/no/such/route", None, {}, 404, "no route GET /no/such/route"),
    # Texts the journal cannot hold are refused at the edge, on every route.
    ("GET", "/actors/%00/events", None, {}, 400, "the path's {key} holds a control character"),
    ("GET", "/actors/a%0Ab/events", None, {}, 400, "control character"),
    ("GET", "/actors/" + "k" * 1025 + "/events", None, {}, 400, "longer than 1024"),
    ("GET", "/workflows/%00", None, {}, 400, "the path's {id} holds a control character"),
    ("GET", "/workflows?name=%00", None, {}, 400, "query parameter 'name' holds a control"),
    ("GET", "/workflows?%01=x", None, {}, 400, "control character"),
    ("POST", "/customers/invite", {"email": "a@b.co"}, {"Idempotency-Key": "a\u00e9"}, 400,
     "Idempotency-Key"),
    ("POST", "/customers/invite", {"email": "a@b.co"}, {"traceparent": "\u00e9" * 1100}, 400,
     "the traceparent header is longer than 1024"),
    ("DELETE", "/customers/invite", None, {}, 405, "DELETE is not allowed"),
]


async def test_bad_requests_get_a_4xx_that_names_the_problem_and_journal_nothing(
    served: Served,
) -> None:
    before = await workflow_count(served.journal)
    for method, path, body, headers, status, message in BAD_REQUESTS:
        options: dict[str, Any] = {"headers": {**JSON, **headers} if method == "POST"
                                   else headers}
        if isinstance(body, bytes):
            options["data"] = body
        elif body is not None:
            options["json"] = body
        response = await served.client.request(method, path, **options)
        assert response.content_type == "application/json", (method, path)
        answer = await response.json()
        assert (response.status, list(answer)) == (status, ["error"]), (method, path, answer)
        assert message in answer["error"], (method, path, answer)
    assert await workflow_count(served.journal) == before == 0


# -- verify -----------------------------------------------------------------------------


async def test_verify_with_the_right_token_verifies_and_welcomes(served: Served) -> None:
    _, invited = await _invite(served, "lin@example.com")
    customer_id = invited["id"]
    token = await invitation_token(served.journal, customer_id)
    verify = f"/customers/{customer_id}/verify"

    wrong = await served.client.post(verify, json={"token": "not-" + token})
    assert wrong.status == 400
    assert "wrong token" in (await wrong.json())["error"]

    right = await served.client.post(verify, json={"token": token})
    assert right.status == 200
    assert await right.json() == {"id": customer_id, "verified": True}

    customer = await (await served.client.get(f"/customers/{customer_id}")).json()
    assert (customer["verified"], customer["status"]) == (True, "verified")
    assert customer["verified_at"] is not None

    async def both_messages() -> list[Any] | None:
        reply = await (await served.client.get(f"/customers/{customer_id}/messages")).json()
        done = [m for m in reply["messages"] if m["status"] == "recorded"]
        return reply["messages"] if len(done) == 2 else None

    messages = await eventually(both_messages)
    assert [m["type"] for m in messages] == ["invitation", "welcome"]
    assert all("token" not in m for m in messages)

    again = await served.client.post(verify, json={"token": token})
    assert again.status == 409
    assert "already verified" in (await again.json())["error"]


async def test_an_expired_invitation_cannot_be_verified(pg_dsn: str) -> None:
    clock = VirtualClock()
    async with serving(pg_dsn, clock=clock) as served:  # the default 7-day expiry
        _, invited = await _invite(served, "old@example.com")
        customer_id = invited["id"]
        token = await invitation_token(served.journal, customer_id)
        await wait_status(served.journal, invited["workflow_id"], "waiting")
        await clock.advance(days=7)

        async def expired() -> bool:
            reply = await served.client.get(f"/customers/{customer_id}")
            return bool((await reply.json())["status"] == "expired")

        await eventually(expired)
        late = await served.client.post(f"/customers/{customer_id}/verify", json={"token": token})
        assert late.status == 409
        assert "expired" in (await late.json())["error"]


# -- idempotency ------------------------------------------------------------------------


async def test_an_idempotency_key_replays_the_first_answer_and_refuses_another_body(
    served: Served,
) -> None:
    key = {"Idempotency-Key": "3f1c-invite-ada"}
    first = await _invite(served, "ada@example.com", headers=key)
    same = await _invite(served, "ADA@example.com ", headers=key)
    assert first[0] == 200
    assert same == first
    page = await served.journal.list_workflows(name=INVITE_WORKFLOW)
    assert [row.id for row in page.workflows] == [first[1]["workflow_id"]]

    status, body = await _invite(served, "bob@example.com", headers=key)
    assert status == 422
    assert "different body" in body["error"]
    page = await served.journal.list_workflows(name=INVITE_WORKFLOW)
    assert len(page.workflows) == 1


async def test_an_unresolved_invite_answers_202_and_its_replay_resolves_later(
    pg_dsn: str,
) -> None:
    gate = anyio.Event()

    async def hold(ctx: WorkflowContext, payload: dict[str, Any]) -> str:
        await gate.wait()  # keeps the customer's actor busy: the invite queues behind it
        return "released"

    async with serving(pg_dsn, resolve_timeout=0.2) as served:
        served.runtime.register(hold)
        actor_key = customer_actor_key(customer_id_for("slow@example.com"))
        await served.runtime.start_workflow("hold", {}, actor_key=actor_key)
        key = {"Idempotency-Key": "slow-1"}
        status, pending = await _invite(served, "slow@example.com", headers=key)
        assert status == 202
        workflow_id = pending["workflow_id"]
        assert pending == {"workflow_id": workflow_id, "status_url": f"/workflows/{workflow_id}"}
        polled = await (await served.client.get(pending["status_url"])).json()
        assert polled["status"] == "pending"

        gate.set()
        status, invited = await _invite(served, "slow@example.com", headers=key)
        assert (status, invited["workflow_id"]) == (200, workflow_id)


# -- auth, overload, readiness ------------------------------------------------------------


async def test_a_token_guards_every_route_but_health_readiness_and_metrics(pg_dsn: str) -> None:
    async with serving(pg_dsn, api_token="s3cret") as served:
        client = served.client
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = await client.post("/customers/invite", json={"email": "a@b.co"},
                                         headers=headers)
            assert response.status == 401
            assert "Authorization: Bearer" in (await response.json())["error"]
            assert (await client.get("/workflows", headers=headers)).status == 401
        assert await workflow_count(served.journal) == 0

        good = {"Authorization": "bearer s3cret"}  # the scheme is case-insensitive
        response = await client.post("/customers/invite", json={"email": "a@b.co"}, headers=good)
        assert response.status == 200
        assert (await client.get("/workflows", headers=good)).status == 200
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(path)).status == 200, path
        spec = await (await client.get("/openapi.json", headers=good)).json()
        assert spec["paths"]["/healthz"]["get"]["security"] == []
        assert "401" in spec["paths"]["/customers/invite"]["post"]["responses"]


async def test_overload_answers_503_with_retry_after_and_journals_nothing(pg_dsn: str) -> None:
    async with serving(pg_dsn, max_in_flight=0) as served:
        response = await served.client.post("/customers/invite", json={"email": "a@b.co"})
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert "nothing was accepted" in (await response.json())["error"]
        assert await workflow_count(served.journal) == 0


async def test_readiness_follows_the_runtime(pg_dsn: str) -> None:
    async with serving(pg_dsn, open_runtime=False) as served:
        assert (await served.client.get("/healthz")).status == 200
        assert (await served.client.get("/readyz")).status == 503
        refused = await served.client.post("/customers/invite", json={"email": "a@b.co"})
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "1"
        async with served.runtime:
            assert await (await served.client.get("/readyz")).json() == {"status": "ready"}
        assert (await served.client.get("/readyz")).status == 503


# -- workflows and dead letters -------------------------------------------------------------


async def test_workflow_routes_list_detail_cancel_and_refuse_wrong_transitions(
    served: Served,
) -> None:
    client = served.client
    _, invited = await _invite(served, "kim@example.com")
    workflow_id = invited["workflow_id"]
    await _invite(served, "lee@example.com")

    async def both_waiting() -> bool:
        reply = await (await client.get("/workflows?status=waiting")).json()
        return len(reply["workflows"]) == 2

    await eventually(both_waiting)
    listed = await (await client.get("/workflows?status=waiting&limit=1")).json()
    assert len(listed["workflows"]) == 1 and listed["next_cursor"]
    rest = await (await client.get(f"/workflows?status=waiting&cursor={listed['next_cursor']}")
                  ).json()
    waiting = {w["id"] for w in listed["workflows"] + rest["workflows"]}
    assert workflow_id in waiting and len(waiting) == 2

    actor = f"customer:{invited['id']}"
    mine = await (await client.get("/workflows", params={"actor": actor})).json()
    assert {w["actor_key"] for w in mine["workflows"]} == {actor}

    response = await client.get(f"/workflows/{workflow_id}")
    detail = await response.json()
    token = await invitation_token(served.journal, invited["id"])
    assert token not in await response.text()
    assert detail["status"] == "waiting"
    names = [step["name"] for step in detail["steps"]]
    # The invite event rides with the write (behind its patch marker): no step of its own.
    assert names[:4] == ["invite.lookup", "invite.operate", "invite-event-with-write",
                         "invite.write"]
    assert "invite" not in names
    assert set(detail["steps"][0]) >= {"seq", "name", "kind", "status", "attempt", "started_at",
                                       "finished_at", "output", "error"}
    assert [child["name"] for child in detail["children"]] == ["communicate_to_customer"]

    assert (await client.post(f"/workflows/{workflow_id}/retry", headers=JSON)).status == 409
    cancelled = await client.post(f"/workflows/{workflow_id}/cancel", headers=JSON)
    assert cancelled.status == 202
    assert workflow_id in (await cancelled.json())["workflows"]

    async def is_cancelled() -> bool:
        reply = await (await client.get(f"/workflows/{workflow_id}")).json()
        return bool(reply["status"] == "cancelled")

    await eventually(is_cancelled)
    again = await client.post(f"/workflows/{workflow_id}/cancel", headers=JSON)
    assert again.status == 409
    assert "cancelled" in (await again.json())["error"]
    # The invitation's workflow is gone, so a verification cannot be answered.
    late = await client.post(f"/customers/{invited['id']}/verify", json={"token": token})
    assert late.status == 409
    assert "cancelled by an operator" in (await late.json())["error"]


async def test_dead_letters_are_listed_and_redelivered_once(pg_dsn: str) -> None:
    healed = anyio.Event()

    async def poison(ctx: WorkflowContext, payload: dict[str, Any]) -> str:
        if not healed.is_set():
            raise RuntimeError("this message crashes its actor")
        return "ok"

    restart = RestartPolicy(max_crashes=2, initial_backoff=0.01)
    async with serving(pg_dsn, restart=restart) as served:
        served.runtime.register(poison)
        row, _ = await served.runtime.start_workflow("poison", {}, actor_key="poison:1")

        async def letters() -> list[Any] | None:
            reply = await (await served.client.get("/dead-letters")).json()
            return reply["dead_letters"] or None

        [letter] = await eventually(letters)
        # The runtime lists the letter a moment before it marks the workflow failed.
        await wait_status(served.journal, row.id, "failed")
        assert letter["message"] == {"workflow_id": row.id}
        assert "this message crashes its actor" in letter["error"]

        healed.set()
        redeliver = f"/dead-letters/{letter['id']}/redeliver"
        response = await served.client.post(redeliver, headers=JSON)
        assert response.status == 202
        assert (await response.json())["workflow_id"] == row.id
        finished = await served.runtime.wait_for_finish(row.id, 5)
        assert finished is not None and finished.status == "completed"
        assert (await served.client.post(redeliver, headers=JSON)).status == 404


# -- metrics, spec, dashboard ---------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_requests_by_route_and_commands_by_outcome(served: Served) -> None:
    _, invited = await _invite(served, "mo@example.com")
    await served.client.get(f"/customers/{invited['id']}")
    await served.client.post("/customers/invite", json={"email": 7})
    await served.client.get("/nowhere")

    samples = _samples(await (await served.client.get("/metrics")).text())

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    http = "retinue_http_requests_total"
    assert value(http, method="POST", route="/customers/invite", status="200") == 1
    assert value(http, method="POST", route="/customers/invite", status="400") == 1
    assert value(http, method="GET", route="/customers/{id}", status="200") == 1
    assert value(http, method="GET", route="unmatched", status="404") == 1
    assert value("retinue_http_request_duration_seconds_count", method="GET",
                 route="/customers/{id}") == 1
    assert value("retinue_commands_accepted_total", type="invite") == 1
    assert value("retinue_commands_rejected_total", type="invite", reason="invalid_body") == 1
    assert value("retinue_workflows_started_total", workflow="invite_customer") == 1


async def test_the_openapi_document_describes_every_route(served: Served) -> None:
    spec = await (await served.client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    for route in served.app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        assert route.method.lower() in spec["paths"][path], (route.method, path)
    invite = spec["paths"]["/customers/invite"]["post"]
    assert invite["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/InviteRequest"
    }
    assert spec["components"]["schemas"]["InviteRequest"]["required"] == ["email"]
    assert {"200", "202", "400", "409", "413", "422", "503"} <= set(invite["responses"])

    page = await served.client.get("/")
    assert page.status == 200 and page.content_type == "text/html"
    assert "Retinue" in await page.text()
