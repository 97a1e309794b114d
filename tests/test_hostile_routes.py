"""Every route, hostile path segments, query strings and header values: no 5xx
(503 aside) from a real server on PostgreSQL.

The routes come from the app's router, so a route added later is driven too.
Requests go over a plain socket, byte for byte, so the generators can send what a
well-behaved client would not: NUL and other control characters percent-encoded,
bytes that are not UTF-8 (encoded or raw), encoded lone surrogates and overlong
forms, over-long values, and header values of any byte but CR and LF (which would
end the header; aiohttp's parser answers those it cannot take with a plain 400).
A text the journal cannot hold must be refused at the edge with a 4xx
(edge/validation.py), never reach PostgreSQL and come back as a 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, quote_from_bytes

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.databases import fresh_database
from tests.server_support import Served, serving

# Derandomized and bounded, so CI sees the same ~40 s run every time.
SETTINGS = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

# Raw, already encoded path segments and query values that once were, or could be,
# a 500: NUL, other controls, lone surrogates (CESU), overlong NUL, beyond U+10FFFF,
# undecodable bytes, bidi overrides, and values past every length limit.
SPECIAL: list[bytes] = [
    b"%00", b"a%00b", b"%01", b"%09", b"%0A", b"%0D", b"%1F", b"%7F", b"%C2%80", b"%C2%9F",
    b"%ED%A0%80", b"%ED%BF%BF", b"%C0%80", b"%F4%90%80%80", b"%FF", b"%FE%FF", b"%C3%28",
    b"%E2%80%AE", b"%EF%BF%BD", b"%25", b"%2F", b"..", b"%2E%2E", b"x" * 1025, b"%C3%A9" * 700,
    b"\xff", b"\xc3\xa9", b"\xed\xa0\x80", b"1", b"0", b"-1", b"9" * 19,
]


@dataclass
class Live:
    portal: BlockingPortal = field(repr=False)
    served: Served = field(repr=False)
    routes: list[tuple[str, str]] = field(default_factory=list)  # (method, template)
    real: list[str] = field(default_factory=list)  # ids that exist
    statuses: dict[int, int] = field(default_factory=dict)

    def send(self, raw: bytes) -> tuple[int, str]:
        status, text = self.portal.call(self._send, raw)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status, text

    async def _send(self, raw: bytes) -> tuple[int, str]:
        server = self.served.client.server
        with anyio.fail_after(20):
            async with await anyio.connect_tcp(str(server.host), int(server.port or 0)) as conn:
                await conn.send(raw)
                chunks = []
                try:
                    while True:
                        chunks.append(await conn.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
        reply = b"".join(chunks).decode("utf-8", "replace")
        return int(reply.split(" ", 2)[1]), reply

    @property
    def host(self) -> bytes:
        server = self.served.client.server
        return f"{server.host}:{server.port}".encode()


@pytest.fixture(scope="module")
def live(postgres_server_dsn: str) -> Iterator[Live]:
    with start_blocking_portal(backend="asyncio") as portal, \
            portal.wrap_async_context_manager(
                fresh_database(postgres_server_dsn, "routes")) as dsn, \
            portal.wrap_async_context_manager(serving(dsn, resolve_timeout=1)) as served:
        state = Live(portal, served)
        for resource in served.app.router.resources():
            state.routes += [(route.method, resource.canonical) for route in resource]
        invited = portal.call(_invite, served)
        state.real += [invited["id"], invited["workflow_id"], f"customer:{invited['id']}", "1"]
        yield state
        print(f"\nhostile routes: answers by status {dict(sorted(state.statuses.items()))}")


async def _invite(served: Served) -> dict[str, str]:
    reply = await served.client.post("/customers/invite", json={"email": "seed@example.com"})
    assert reply.status == 200
    invited: dict[str, str] = await reply.json()
    return invited


def _request(live: Live, method: str, path: bytes, query: bytes,
             headers: list[tuple[bytes, bytes]], body: bytes | None) -> bytes:
    names = {name.lower() for name, _ in headers}
    lines = [method.encode() + b" " + path + (b"?" + query if query else b"") + b" HTTP/1.1"]
    if b"host" not in names:
        lines.append(b"Host: " + live.host)
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"Connection: close")
    if body is not None:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def _check(live: Live, raw: bytes) -> None:
    status, reply = live.send(raw)
    assert status < 500 or status == 503, f"{status} for {raw[:300]!r}:\n{reply[:1000]}"
    head, _, body = reply.partition("\r\n\r\n")
    if status >= 400 and re.search(r"(?im)^content-type: application/json", head):
        assert isinstance(json.loads(body).get("error"), str), reply[:500]


def _fill(template: str, segment: bytes) -> bytes:
    return re.sub(rb"{[^}]+}", lambda _: segment, template.encode())


# -- every route, every special value, in every place ----------------------------------------


def test_every_route_refuses_every_special_value_without_a_5xx(live: Live) -> None:
    """A sweep, so every route meets every special value whatever hypothesis draws."""
    assert len(live.routes) >= 15, live.routes  # the router was enumerated
    for method, template in live.routes:
        json_headers = [(b"Content-Type", b"application/json")] if method == "POST" else []
        body = b"{}" if method == "POST" else None
        for special in SPECIAL:
            for path, query in ((_fill(template, special), b""),
                                (_fill(template, b"x"), b"name=" + special),
                                (_fill(template, b"x"), special + b"=1")):
                _check(live, _request(live, method, path, query, json_headers, body))
            for header in (b"Idempotency-Key", b"traceparent"):
                _check(live, _request(live, method, _fill(template, b"x"), b"",
                                      [*json_headers, (header, special)], body))


# -- and whatever hypothesis draws -------------------------------------------------------------

texts = st.text(max_size=40).map(lambda t: quote(t, safe="").encode())
encoded_bytes = st.binary(max_size=40).map(lambda b: quote_from_bytes(b, safe="").encode())
raw_bytes = st.binary(max_size=20).map(
    lambda b: bytes(c for c in b if c > 0x20 and c not in b"?#/%\x7f"))
values = st.one_of(texts, encoded_bytes, raw_bytes, st.sampled_from(SPECIAL))
header_values = st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
header_names = st.sampled_from([b"Idempotency-Key", b"traceparent", b"Content-Type", b"Origin",
                                b"Authorization", b"If-None-Match", b"Accept", b"Cookie",
                                b"Host", b"Content-Encoding", b"X-Anything"])


@SETTINGS
@given(data=st.data())
def test_any_route_survives_hostile_paths_queries_and_headers(
    live: Live, data: st.DataObject
) -> None:
    method, template = data.draw(st.sampled_from(live.routes))
    method = data.draw(st.sampled_from([method, method, method, "POST", "DELETE", "PUT"]))
    real = st.sampled_from(live.real).map(lambda r: quote(r, safe="").encode())
    path = _fill(template, data.draw(st.one_of(values, real)))
    pairs = data.draw(st.lists(st.tuples(st.one_of(values, st.sampled_from(
        [b"status", b"actor", b"customer", b"name", b"cursor", b"limit", b"after", b"q",
         b"minutes", b"since"])), st.one_of(values, real)), max_size=4))
    query = b"&".join(name + b"=" + value for name, value in pairs)
    headers = data.draw(st.lists(st.tuples(header_names, header_values), max_size=3))
    if method == "POST" and data.draw(st.booleans()):
        headers.append((b"Content-Type", b"application/json"))
    body = data.draw(st.sampled_from([None, b"", b"{}", b'{"email": "h@example.com"}',
                                      b'{"token": "t"}']))
    _check(live, _request(live, method, path, query, headers, body))
