"""A safer edge: what another site's page, a token of the wrong role, a public
address without a token, and the server's own log may and may not do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from actors import Onboarding, customer_id_for
from bench.polling import eventually
from bench.processes import ServerProcess
from edge import ExposureError, create_app, is_loopback, open_server
from edge.crosssite import allowed_hosts, host_name, same_origin
from journal import MemoryJournal, PostgresJournal
from runtime import Runtime
from server import ServerConfig, parse_config, run_server
from tests.server_support import JSON, Served, invitation_token, serving

API, OPERATOR = "product-s3cret", "operator-s3cret"
README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _error(response: aiohttp.ClientResponse) -> str:
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert list(body) == ["error"], body
    return str(body["error"])


# -- Host: DNS rebinding ------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.evil.example",
                                  "localhost.", "[::2]:80", "a:b:c", "[::1"])
async def test_a_foreign_host_header_is_refused_with_421(served: Served, host: str) -> None:
    for method, path in (("GET", "/workflows"), ("GET", "/healthz"), ("POST", "/customers/invite")):
        response = await served.client.request(method, path, json={"email": "r@b.co"},
                                               headers={"Host": host})
        assert response.status == 421, (method, path)
        error = await _error(response)
        assert "is not a name of this server" in error and "RETINUE_ALLOWED_HOSTS" in error
    assert (await served.journal.count_workflows_by_status()) == {}


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:9", "127.0.0.1", "127.0.0.1:1",
                                  "[::1]", "[::1]:8080", "api.example.com",
                                  "API.example.com:443"])
async def test_the_servers_own_names_pass_with_or_without_a_port(pg_dsn: str, host: str) -> None:
    async with serving(pg_dsn, extra_hosts=("api.example.com",)) as served:
        response = await served.client.get("/workflows", headers={"Host": host})
        assert response.status == 200, await response.text()


@pytest.mark.parametrize(("header", "name"), [
    ("Localhost", "localhost"), ("a.example:80", "a.example"), ("[::1]", "::1"),
    ("[::1]:8080", "::1"), ("a.example:", None), ("a.example:123456", None), ("::1", None),
    ("[::1]x", None), ("[::1", None), ("a.example:8x", None)])
def test_host_name_reads_a_host_header(header: str, name: str | None) -> None:
    assert host_name(header) == name


def test_allowed_hosts_are_loopback_the_bound_host_and_the_configured_names() -> None:
    assert allowed_hosts("10.0.0.5") == {"localhost", "127.0.0.1", "::1", "10.0.0.5"}
    assert allowed_hosts("[::1]", [" API.example ", ""]) == {"localhost", "127.0.0.1", "::1",
                                                              "api.example"}
    assert allowed_hosts("0.0.0.0") is None and allowed_hosts("::", ["*"]) is None
    assert allowed_hosts("0.0.0.0", ["a.example"]) == {"localhost", "127.0.0.1", "::1",
                                                        "a.example"}
    assert [is_loopback(h) for h in ("LOCALHOST", "127.0.0.9", "[::1]", "::", "a.example")] \
        == [True, True, True, False, False]


@pytest.mark.parametrize(("origin", "host", "same"), [
    ("http://a.example", "a.example", True), ("https://a.example", "a.example", True),
    ("http://a.example:8080", "A.example:8080", True), ("http://[::1]:9", "[::1]:9", True),
    ("http://a.example", "a.example:8080", False), ("http://b.example", "a.example", False),
    ("http://a.example", None, False), ("http://a.example", "a:b:c", False),
    ("null", "a.example", False), ("http://a.example:99999", "a.example", False),
    ("file://", "a.example", False)])
def test_same_origin_compares_the_origin_with_the_host(
    origin: str, host: str | None, same: bool
) -> None:
    assert same_origin(origin, host) is same


# -- Origin: cross-site requests that change state -----------------------------------------


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1",
                                    "https://127.0.0.1", "not a url", "http://[::1"])
async def test_a_post_from_a_foreign_origin_is_refused_with_403(
    served: Served, origin: str
) -> None:
    response = await served.client.post("/customers/invite", json={"email": "o@b.co"},
                                        headers={"Origin": origin})
    assert response.status == 403
    assert "cross-site request refused" in await _error(response)
    assert (await served.journal.count_workflows_by_status()) == {}
    # Reads are not state-changing: the Host check is what guards them.
    assert (await served.client.get("/workflows", headers={"Origin": origin})).status == 200


async def test_a_post_from_the_servers_own_origin_passes(served: Served) -> None:
    own = str(served.client.make_url("/")).rstrip("/")
    response = await served.client.post("/customers/invite", json={"email": "own@b.co"},
                                        headers={"Origin": own})
    assert response.status == 200, await response.text()


# -- every POST says JSON -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/workflows/nope/cancel", "/workflows/nope/retry",
                                  "/dead-letters/1/redeliver", "/customers/invite"])
async def test_a_post_without_a_json_content_type_is_refused_with_415(
    served: Served, path: str
) -> None:
    bare = await served.client.post(path, skip_auto_headers={"Content-Type"})
    assert bare.status == 415
    assert "needs the header 'Content-Type: application/json', even without a body" in \
        await _error(bare)
    octets = await served.client.post(path)  # aiohttp says application/octet-stream
    assert octets.status == 415
    assert "send it as Content-Type: application/json" in await _error(octets)
    # The same request saying JSON reaches the route (which knows no such thing).
    assert (await served.client.post(path, headers=JSON)).status in (400, 404)


# -- two roles ------------------------------------------------------------------------------


async def test_with_both_tokens_an_operator_route_refuses_the_api_token(pg_dsn: str) -> None:
    async with serving(pg_dsn, api_token=API, operator_token=OPERATOR) as served:
        client = served.client
        for method, path in (("GET", "/workflows"), ("GET", "/workflows/x"),
                             ("POST", "/workflows/x/cancel"), ("POST", "/workflows/x/retry"),
                             ("GET", "/dead-letters"), ("POST", "/dead-letters/1/redeliver"),
                             ("GET", "/api/overview"), ("GET", "/actors/customer:x/events")):
            response = await client.request(method, path, headers={**JSON, **_bearer(API)})
            assert response.status == 403, (method, path)
            error = await _error(response)
            assert "needs the operator token (RETINUE_OPERATOR_TOKEN)" in error, error
            assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
            ok = await client.request(method, path, headers={**JSON, **_bearer(OPERATOR)})
            assert ok.status not in (401, 403), (method, path, await ok.text())
        for token in ("wrong", ""):
            refused = await client.get("/workflows", headers=_bearer(token))
            assert refused.status == 401


async def test_the_api_token_is_accepted_on_the_customer_routes(pg_dsn: str) -> None:
    async with serving(pg_dsn, api_token=API, operator_token=OPERATOR) as served:
        client = served.client
        invite = await client.post("/customers/invite", json={"email": "p@b.co"},
                                   headers=_bearer(API))
        assert invite.status == 200, await invite.text()
        customer = (await invite.json())["id"]
        token = await invitation_token(served.journal, customer)
        for path in (f"/customers/{customer}", f"/customers/{customer}/messages"):
            assert (await client.get(path, headers=_bearer(API))).status == 200, path
        verify = await client.post(f"/customers/{customer}/verify", json={"token": token},
                                   headers=_bearer(API))
        assert verify.status == 200, await verify.text()
        # The operator's token serves the product's routes too; no token serves none.
        read = await client.get(f"/customers/{customer}", headers=_bearer(OPERATOR))
        assert read.status == 200
        assert (await client.get(f"/customers/{customer}")).status == 401
        # Either token reads the spec; health, readiness, metrics and the page need none.
        for token in (API, OPERATOR):
            assert (await client.get("/openapi.json", headers=_bearer(token))).status == 200
        for path in ("/healthz", "/readyz", "/metrics", "/", "/assets/api.js"):
            assert (await client.get(path)).status == 200, path


async def test_a_lone_operator_token_serves_both_roles(pg_dsn: str) -> None:
    async with serving(pg_dsn, operator_token=OPERATOR) as served:
        client = served.client
        invite = await client.post("/customers/invite", json={"email": "l@b.co"},
                                   headers=_bearer(OPERATOR))
        assert invite.status == 200
        assert (await client.get("/workflows", headers=_bearer(OPERATOR))).status == 200
        assert (await client.get("/workflows")).status == 401


# -- no token off loopback -------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com"])
async def test_run_server_refuses_a_public_host_without_a_token(host: str) -> None:
    # Refused before anything opens: the database named here does not exist.
    config = ServerConfig(host=host, database_url="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(ExposureError, match="without a token") as refused:
        await run_server(config, stop=anyio.Event())
    assert "RETINUE_API_TOKEN" in str(refused.value) and refused.value.host == host


async def test_create_app_and_open_server_refuse_a_public_host_without_a_token() -> None:
    runtime = Runtime(MemoryJournal(), registry=CollectorRegistry())
    with pytest.raises(ExposureError):
        create_app(runtime, Onboarding(), host="0.0.0.0")
    loopback_app = create_app(runtime, Onboarding())
    with pytest.raises(ExposureError):
        async with open_server(loopback_app, host="0.0.0.0"):
            pass  # pragma: no cover - never reached
    with pytest.raises(ExposureError):  # an app of its own takes no token
        async with open_server(web.Application(), host="::"):
            pass  # pragma: no cover - never reached
    public = create_app(Runtime(MemoryJournal(), registry=CollectorRegistry()), Onboarding(),
                        operator_token=OPERATOR, host="0.0.0.0")
    assert public is not None
    async with open_server(public, host="127.0.0.1") as server:
        assert server.port > 0


def test_the_command_line_reads_both_tokens_and_the_allowed_hosts() -> None:
    config = parse_config(["--host", "0.0.0.0"], environ={
        "RETINUE_OPERATOR_TOKEN": "op", "RETINUE_ALLOWED_HOSTS": " a.example, ,B.example "})
    assert (config.api_token, config.operator_token) == (None, "op")
    assert config.allowed_hosts == ("a.example", "B.example")


# -- the invitation token stays out of the log -----------------------------------------------


async def test_an_invitation_token_never_reaches_the_server_log(
    pg_dsn: str, tmp_path: Path
) -> None:
    server = ServerProcess(database_url=pg_dsn, log=tmp_path / "server.log")
    try:
        await server.start()
        async with aiohttp.ClientSession(server.url) as session:
            async with session.post("/customers/invite", json={"email": "log@b.co"}) as reply:
                assert reply.status == 200, await reply.text()
            customer = customer_id_for("log@b.co")

            async def recorded() -> list[Any] | None:
                async with session.get(f"/customers/{customer}/messages") as reply:
                    messages = (await reply.json())["messages"]
                done = [m for m in messages if m["status"] == "recorded"]
                return done or None

            [message] = await eventually(recorded, within=30, what="the invitation recorded")
        journal = await PostgresJournal.connect(pg_dsn)
        try:
            token = await invitation_token(journal, customer)
        finally:
            await journal.aclose()
        assert await server.terminate(within=20) == 0
        log = server.log.read_text()
        assert f"invitation for customer {customer} written to the outbox as message " \
               f"{message['id']}" in log, log[-2000:]
        assert len(token) >= 16 and token not in log
    finally:
        await server.aclose()


# -- the README says what each route needs --------------------------------------------------


async def test_the_readme_says_which_token_every_route_needs() -> None:
    section = README.split("### Who may call what", 1)[1].split("\n## ", 1)[0]
    app = create_app(Runtime(MemoryJournal(), registry=CollectorRegistry()), Onboarding())
    routes = [f"`{route.method} {resource.canonical}`"
              for resource in app.router.resources() for route in resource]
    missing = [route for route in routes if route not in section]
    assert len(routes) >= 15 and not missing, (
        f"README.md's 'Who may call what' table does not list {missing}; add each with "
        "the token it needs")
