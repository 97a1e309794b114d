"""The webhook communicator over real HTTP: one idempotency key per message across
retries, and a refused delivery failing the workflow until an operator retries it."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.polling import eventually
from edge import WebhookCommunicator
from tests.server_support import Served, invitation_token, serving


async def _invite(served: Served, email: str, **kwargs: Any) -> tuple[int, Any]:
    response = await served.client.post("/customers/invite", json={"email": email}, **kwargs)
    return response.status, await response.json()



# -- the webhook ---------------------------------------------------------------------------


async def test_the_webhook_is_retried_with_one_idempotency_key(pg_dsn: str) -> None:
    received: list[tuple[str | None, dict[str, Any]]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append((request.headers.get("Idempotency-Key"), await request.json()))
        return web.Response(status=500 if len(received) == 1 else 200)

    receiver = web.Application()
    receiver.router.add_post("/hook", receive)
    async with TestServer(receiver) as hook, WebhookCommunicator(str(hook.make_url("/hook"))
                                                                ) as communicator:
        async with serving(pg_dsn, communicator=communicator) as served:
            _, invited = await _invite(served, "web@example.com")

            async def delivered() -> list[Any] | None:
                path = f"/customers/{invited['id']}/messages"
                reply = await (await served.client.get(path)).json()
                return [m for m in reply["messages"] if m["status"] == "delivered"] or None

            [message] = await eventually(delivered)

    assert len(received) == 2
    (first_key, first), (second_key, second) = received
    assert first == second
    assert first_key == second_key == first["idempotency_key"] == message["idempotency_key"]
    assert first["type"] == "invitation" and first["customer_id"] == invited["id"]
    assert first["token"] == await _token_in_db(pg_dsn, invited["id"])


async def _token_in_db(pg_dsn: str, customer_id: str) -> str:
    from journal import PostgresJournal

    journal = await PostgresJournal.connect(pg_dsn)
    try:
        return await invitation_token(journal, customer_id)
    finally:
        await journal.aclose()


async def test_a_refused_delivery_fails_the_workflow_and_an_operator_retry_resumes_it(
    pg_dsn: str,
) -> None:
    refuse = True

    async def receive(request: web.Request) -> web.Response:
        return web.Response(status=400 if refuse else 204)

    receiver = web.Application()
    receiver.router.add_post("/hook", receive)
    async with TestServer(receiver) as hook, WebhookCommunicator(str(hook.make_url("/hook"))
                                                                ) as communicator:
        async with serving(pg_dsn, communicator=communicator) as served:
            client = served.client
            _, invited = await _invite(served, "no@example.com")

            async def started_child() -> str | None:
                # The invite's 200 comes with its write; the child starts a commit later.
                path = f"/workflows/{invited['workflow_id']}"
                children = (await (await client.get(path)).json())["children"]
                return str(children[0]["id"]) if children else None

            child = await eventually(started_child, what="the invitation's child")

            async def status_of_child() -> str | None:
                reply = await (await client.get(f"/workflows/{child}")).json()
                return reply["status"] if reply["status"] in ("failed", "completed") else None

            assert await eventually(status_of_child) == "failed"
            failed = await (await client.get(f"/workflows/{child}")).json()
            assert "refused the message with 400" in failed["error"]

            refuse = False
            retried = await client.post(f"/workflows/{child}/retry",
                                        headers={"Content-Type": "application/json"})
            assert retried.status == 202
            assert await eventually(status_of_child) == "completed"
