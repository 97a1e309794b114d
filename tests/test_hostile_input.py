"""Hostile input: hypothesis throws generated requests at a real in-process server
on PostgreSQL (bodies of any JSON or bytes, huge strings, wrong types, extra
fields, odd ids, odd headers). No answer is ever a 5xx; every 4xx that reaches
the application is JSON `{"error": str}`; a refused request journals nothing;
and the journal is consistent afterwards.

The server runs in a blocking portal (its own event loop in a thread), started
once for the module; the @given tests are plain functions that call into it.

Out of scope, as aiohttp's HTTP parser answers them (400, text/plain) before
any application code runs: request lines or headers over 8190 bytes, and
Content-Encodings it cannot decode at the end of the body (br without Brotli, a
truncated deflate stream); and an Expect header other than 100-continue, which
aiohttp answers 417 (text/plain) before the middlewares run. The generators
stay clear of those.
"""

from __future__ import annotations

import gzip
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import anyio
import asyncpg
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from actors import CustomerInvited, VerificationRejected, VerifyCustomer, customer_id_for
from actors.onboarding import operate_verify
from bench.databases import fresh_database
from tests.server_support import Served, invitation_token, serving

# Derandomized, so a run's outcome does not depend on luck; RETINUE_HOSTILE_EXPLORE=1
# draws fresh examples instead (and is worth a run after changing the HTTP edge).
SETTINGS = settings(max_examples=120, deadline=None, database=None,
                    derandomize=not os.environ.get("RETINUE_HOSTILE_EXPLORE"),
                    suppress_health_check=[HealthCheck.too_slow])

# -- the server, once for the module -------------------------------------------------------


@dataclass
class Answer:
    status: int
    content_type: str
    text: str
    refused_nothing_journaled: bool  # top-level workflows before == after


@dataclass
class Live:
    """The served app, the ids of a few real customers and workflows, and a
    connection for counting what the journal holds."""

    portal: BlockingPortal = field(repr=False)
    served: Served = field(repr=False)
    dsn: str = field(repr=False)
    customers: list[str] = field(default_factory=list, repr=False)
    workflows: list[str] = field(default_factory=list, repr=False)
    tokens: list[str] = field(default_factory=list, repr=False)
    answers: dict[int, int] = field(default_factory=dict)

    def send(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> Answer:
        answer: Answer = self.portal.call(self._send, method, path, body, headers or {})
        self.answers[answer.status] = self.answers.get(answer.status, 0) + 1
        return answer

    async def _send(self, method: str, path: str, body: bytes | None,
                    headers: dict[str, str]) -> Answer:
        skip = {"Content-Type"} if "Content-Type" not in headers else set()
        before = await self._top_level_workflows()
        with anyio.fail_after(20):
            async with self.served.client.request(
                method, URL(path, encoded=True), data=body, headers=headers,
                skip_auto_headers=skip,
            ) as reply:
                text = await reply.text(errors="replace")
                status, content_type = reply.status, reply.content_type
        after = await self._top_level_workflows()
        return Answer(status, content_type, text, before == after)

    async def _top_level_workflows(self) -> int:
        conn = await asyncpg.connect(self.dsn)
        try:
            return int(await conn.fetchval(
                "SELECT count(*) FROM workflows WHERE parent_id IS NULL"))
        finally:
            await conn.close()

    async def seed(self) -> None:
        """Invite a few customers, so that generated ids sometimes name real ones."""
        for i in range(3):
            reply = await self.served.client.post("/customers/invite",
                                                  json={"email": f"real{i}@example.com"})
            invited = await reply.json()
            assert reply.status == 200, invited
            self.customers.append(invited["id"])
            self.workflows.append(invited["workflow_id"])
            self.tokens.append(await invitation_token(self.served.journal, invited["id"]))


@pytest.fixture(scope="module")
def live(postgres_server_dsn: str) -> Iterator[Live]:
    with start_blocking_portal(backend="asyncio") as portal, \
            portal.wrap_async_context_manager(
                fresh_database(postgres_server_dsn, "hostile")) as dsn, \
            portal.wrap_async_context_manager(serving(dsn, resolve_timeout=2)) as served:
        state = Live(portal, served, dsn)
        portal.call(state.seed)
        yield state


def _check(answer: Answer, *, journals_nothing: bool = True) -> None:
    """No 5xx; a 4xx is JSON {"error": str, ...}; refused means nothing journaled."""
    assert answer.status < 500, (answer.status, answer.text[:500])
    if answer.status < 400:
        return
    assert answer.content_type == "application/json", (answer.status, answer.text[:300])
    body = json.loads(answer.text)
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    assert set(body) <= {"error", "id"}, body
    if journals_nothing:
        assert answer.refused_nothing_journaled, f"a refused request journaled: {body}"


# -- generators ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _encode(value: Any) -> bytes:
    # allow_nan: NaN and Infinity are not JSON, which is the point here.
    return json.dumps(value, allow_nan=True).encode()


EDGE_BODIES = [
    b"", b" ", b"null", b"0", b'""', b"[]", b"{}", b"{", b"}", b"[" * 5000, b"\xef\xbb\xbf{}",
    b'{"email": "\\u0000@b.co"}', b'{"email": "a\\u0000b@example.com"}',
    b'{"token": "\\u0000"}', b'{"email": "\xff\xfe@b.co"}', b'{"token": "\xc3\x28"}',
    b'{"email": "\\ud800@b.co"}', b'{"email": "a@b.co", "email": "c@d.co"}',
    b'{"email": 1e999}', b'{"email": NaN}', b"\x00" * 64, "{\"email\": \"é@ü.com\"}".encode(),
]

emails = st.one_of(
    st.emails().map(str),
    st.text(max_size=60),
    st.builds(lambda local, domain: f"{local}@{domain}.co", st.text(min_size=1, max_size=20),
              st.text(min_size=1, max_size=20)),
    st.sampled_from(["a@b.co", " A@B.CO ", "x" * 300 + "@a.co", "a@b", "@b.co", "a@@b.co",
                     "a\u0000@b.co", "\u202e@evil.co", "ü@ö.de"]),
)


def bodies(name: str, good: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Request bodies around a `{name: good}` object."""
    extras = st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k != name),
                             json_values, min_size=1, max_size=3)
    return st.one_of(
        json_values.map(_encode),
        st.binary(max_size=200),
        json_values.map(lambda v: _encode({name: v})),
        st.builds(lambda v, more: _encode({name: v, **more}), good, extras),
        good.map(lambda v: _encode({name: v})),
        st.integers(40_000, 90_000).map(lambda n: _encode({name: "a" * n + "@b.co"})),
        st.sampled_from(EDGE_BODIES),
    )


CONTENT_TYPES = [
    None, "application/json", "application/json; charset=utf-8",
    "application/json; charset=latin-1",
    "application/problem+json", "text/plain", "text/json", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz", "application/octet-stream", "", "*/*", "json",
    "application/jsonx", "APPLICATION/JSON",
]
visible = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
idempotency_keys = st.one_of(st.none(), st.uuids().map(str), st.text(visible, max_size=300))


@st.composite
def headers(draw: st.DrawFn, *, idempotent: bool) -> dict[str, str]:
    found: dict[str, str] = {}
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    if content_type is not None:
        found["Content-Type"] = content_type
    if idempotent and (key := draw(idempotency_keys)) is not None:
        found["Idempotency-Key"] = key
    for name in draw(st.lists(st.sampled_from(["Accept", "X-Request-Id", "Authorization",
                                               "Origin", "Cookie"]), max_size=2)):
        found[name] = draw(st.text(visible, max_size=100))
    return found


@st.composite
def gzipped(draw: st.DrawFn, body: bytes, found: dict[str, str]) -> bytes:
    """Sometimes the body gzip-encoded, or claiming gzip and sent plain."""
    how = draw(st.sampled_from(["plain", "plain", "plain", "gzip", "lying gzip"]))
    if how == "plain":
        return body
    found["Content-Encoding"] = "gzip"
    return gzip.compress(body) if how == "gzip" else body


def odd_ids(real: list[str]) -> st.SearchStrategy[str]:
    """Path ids of every kind; 600 characters at most keeps the request line under
    aiohttp's 8190-byte limit even when every character takes 12 bytes quoted."""
    return st.one_of(
        st.text(max_size=60),
        st.text(max_size=600),
        st.uuids().map(str),
        st.sampled_from(real),
        st.sampled_from(["", ".", "..", "%", "%00", "a/b", "a?b", "a#b", "null", "0", "-1",
                         "1e3", "١٢٣", "²", "9" * 18, "9" * 19, "0x10", " 1", "\u0000",
                         "{" + str(uuid.uuid4()) + "}", "urn:uuid:" + str(uuid.uuid4()),
                         uuid.uuid4().hex, "a" * 300]),
    )


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(part, safe="") for part in parts)


# -- the routes ------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_invite_survives_hostile_input(live: Live, data: st.DataObject) -> None:
    found = data.draw(headers(idempotent=True))
    body = data.draw(bodies("email", emails))
    answer = live.send("POST", "/customers/invite", data.draw(gzipped(body, found)), found)
    # 409 (already a customer) comes from the customer's actor: it was a command.
    _check(answer, journals_nothing=answer.status != 409)


@SETTINGS
@given(data=st.data())
def test_verify_survives_hostile_input(live: Live, data: st.DataObject) -> None:
    customer = data.draw(odd_ids(live.customers))
    found = data.draw(headers(idempotent=False))
    tokens = st.one_of(st.text(max_size=600), st.sampled_from(live.tokens))
    body = data.draw(gzipped(data.draw(bodies("token", tokens)), found))
    _check(live.send("POST", _path("customers", customer, "verify"), body, found))


@SETTINGS
@given(data=st.data())
def test_reading_customers_survives_odd_ids(live: Live, data: st.DataObject) -> None:
    customer = data.draw(odd_ids(live.customers))
    tail = data.draw(st.sampled_from([(), ("messages",)]))
    _check(live.send("GET", _path("customers", customer, *tail)))


query_values = st.one_of(
    st.text(max_size=40), st.integers().map(str), st.sampled_from(
        ["", "0", "1", "500", "501", "-1", "1e3", "1.5", "waiting", "completed", "%00",
         "9" * 19, "customer:" + str(uuid.uuid4()), "\u0000", "a" * 400, " 5", "true"]))
query_names = st.one_of(st.sampled_from(["status", "actor", "limit", "cursor"]),
                        st.text(max_size=10))


@SETTINGS
@given(pairs=st.lists(st.tuples(query_names, query_values), max_size=5),
       raw=st.one_of(st.none(), st.text(visible, max_size=80)))
def test_listing_workflows_survives_odd_queries(
    live: Live, pairs: list[tuple[str, str]], raw: str | None
) -> None:
    query = raw if raw is not None else urlencode(pairs, quote_via=quote)
    _check(live.send("GET", "/workflows?" + quote(query, safe="=&%+")))


@SETTINGS
@given(data=st.data())
def test_workflow_actions_survive_odd_ids(live: Live, data: st.DataObject) -> None:
    workflow = data.draw(odd_ids(live.workflows))
    action = data.draw(st.sampled_from(["retry", "cancel", None]))
    found = data.draw(headers(idempotent=False))
    body = data.draw(st.one_of(st.none(), st.binary(max_size=100), json_values.map(_encode)))
    if action is None:
        _check(live.send("GET", _path("workflows", workflow)))
    else:
        _check(live.send("POST", _path("workflows", workflow, action), body, found))


@SETTINGS
@given(data=st.data())
def test_redelivering_dead_letters_survives_odd_ids(live: Live, data: st.DataObject) -> None:
    letter = data.draw(st.one_of(odd_ids(["1"]), st.integers(-5, 2**70).map(str)))
    _check(live.send("POST", _path("dead-letters", letter, "redeliver")))


ROUTES = ["/customers/invite", "/customers/{id}/verify", "/customers/{id}",
          "/customers/{id}/messages", "/workflows", "/workflows/{id}", "/workflows/{id}/retry",
          "/workflows/{id}/cancel", "/dead-letters", "/dead-letters/{id}/redeliver", "/metrics",
          "/healthz", "/readyz", "/openapi.json", "/", "/nowhere", "/customers"]


@SETTINGS
@given(method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]),
       route=st.sampled_from(ROUTES), ident=st.text(max_size=30))
def test_any_method_on_any_route_gets_an_answer(
    live: Live, method: str, route: str, ident: str
) -> None:
    path = route.replace("{id}", quote(ident, safe="") or "x")
    answer = live.send(method, path, b"{}" if method in ("POST", "PUT", "PATCH") else None,
                       {"Content-Type": "application/json"})
    if method == "HEAD":  # no body to check
        assert answer.status < 500
        return
    _check(answer, journals_nothing=answer.status != 409)


# -- afterwards -----------------------------------------------------------------------------


def test_the_journal_is_consistent_after_the_hostile_input(live: Live) -> None:
    # Its own input first, so that it checks something when run alone: the same
    # emails invited concurrently (with and without a repeated key, in other cases
    # and spaces), garbage bodies between them, wrong and right tokens.
    sent = live.portal.call(_send_racing_input, live)
    problems = live.portal.call(_consistency_problems, live)
    print(f"\nhostile input: answers by status {dict(sorted(live.answers.items()))}")
    assert not problems, "\n".join(problems[:20])
    problems = live.portal.call(_check_what_was_sent, live, sent)
    assert not problems, "\n".join(problems[:20])


RACING_EMAILS = [f"racing-{i}@example.com" for i in range(4)]
NO_INVITES = [b"", b"{", b"[]", b"{}", b'{"email": 1}', b'{"email": "nope"}', b"[" * 5000,
              b'{"email": "a@b.co", "x": 1}', b"\x00" * 64]


@dataclass
class Sent:
    invites: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)  # email -> answers
    garbage: list[int] = field(default_factory=list)  # statuses of the bodies that are no invite
    wrong_token: int = 0
    right_token: int = 0


async def _send_racing_input(live: Live) -> Sent:
    sent = Sent(invites={email: [] for email in RACING_EMAILS})
    client = live.served.client

    async def invite(email: str, spelled: str, key: str | None) -> None:
        headers = {} if key is None else {"Idempotency-Key": key}
        async with client.post("/customers/invite", json={"email": spelled},
                               headers=headers) as reply:
            sent.invites[email].append((reply.status, await reply.json()))

    async def garbage(body: bytes) -> None:
        async with client.post("/customers/invite", data=body,
                               headers={"Content-Type": "application/json"}) as reply:
            sent.garbage.append(reply.status)

    async with anyio.create_task_group() as tg:
        for i, email in enumerate(RACING_EMAILS):
            for spelled in (email, email.upper(), f"  {email} "):
                tg.start_soon(invite, email, spelled, None)
                tg.start_soon(invite, email, spelled, f"racing-key-{i}")
        for body in NO_INVITES:
            tg.start_soon(garbage, body)
    customer_id = customer_id_for(RACING_EMAILS[0])
    token = await invitation_token(live.served.journal, customer_id)
    verify = f"/customers/{customer_id}/verify"
    async with client.post(verify, json={"token": "not-" + token}) as reply:
        sent.wrong_token = reply.status
    async with client.post(verify, json={"token": token}) as reply:
        sent.right_token = reply.status
    statuses = [s for answers in sent.invites.values() for s, _ in answers]
    for status in [*statuses, *sent.garbage, sent.wrong_token, sent.right_token]:
        live.answers[status] = live.answers.get(status, 0) + 1
    return sent


async def _check_what_was_sent(live: Live, sent: Sent) -> list[str]:
    """Each racing email is one customer, invited once, answered with one workflow;
    no garbage body was accepted; only the right token verified."""
    problems: list[str] = []
    for email, answers in sent.invites.items():
        statuses = sorted(status for status, _ in answers)
        accepted = {body["workflow_id"] for status, body in answers if status == 200}
        if len(answers) != 6 or not set(statuses) <= {200, 409} or len(accepted) != 1:
            problems.append(f"{email}: answers {answers}")
        reply = await live.served.client.get(f"/customers/{customer_id_for(email)}")
        customer = await reply.json()
        expected = "verified" if email == RACING_EMAILS[0] else "invited"
        if reply.status != 200 or customer.get("status") != expected:
            problems.append(f"{email}: {reply.status} {customer}, expected {expected}")
    if len(sent.garbage) != len(NO_INVITES) or not all(400 <= s < 500 for s in sent.garbage):
        problems.append(f"bodies that are no invite were answered {sent.garbage}")
    if (sent.wrong_token, sent.right_token) != (400, 200):
        problems.append(f"verify answered {sent.wrong_token} to a wrong token and "
                        f"{sent.right_token} to the right one")
    return problems


async def _consistency_problems(live: Live) -> list[str]:
    journal = live.served.journal
    problems: list[str] = []
    letters = await journal.list_dead_letters(include_redelivered=True)
    problems += [f"dead letter {dl.id}: {dl.error}" for dl in letters]
    conn = await asyncpg.connect(live.dsn)
    try:
        failed = await conn.fetch("SELECT id, name, error FROM workflows WHERE status = 'failed'")
        invited = await conn.fetch("SELECT actor_key, count(*) AS n FROM events "
                                   "WHERE type = 'CustomerInvited' GROUP BY actor_key")
        customers = await conn.fetch("SELECT id, unique_key FROM documents "
                                     "WHERE kind = 'customer'")
    finally:
        await conn.close()
    problems += [f"workflow {r['id']} ({r['name']}) failed: {r['error']}" for r in failed]
    events = {r["actor_key"]: r["n"] for r in invited}
    for customer in customers:
        if events.get(f"customer:{customer['id']}") != 1:
            count = events.get(f"customer:{customer['id']}")
            problems.append(f"customer {customer['id']} has {count} CustomerInvited events")
        if customer_id_for(customer["unique_key"]) != customer["id"]:
            problems.append(f"customer {customer['id']} is not the id of its email")
    if len(events) != len(customers):
        problems.append(f"{len(events)} invited actors but {len(customers)} customers")
    return problems


def test_a_non_ascii_token_is_a_wrong_token_not_a_crash() -> None:
    invited = CustomerInvited(customer_id="c1", email="a@b.co", token="tok",
                              invited_at=datetime.now(UTC), workflow_id="w1")
    for token in ("tök", "\u0000", "\ud800", "tok\u00e9"):
        command = VerifyCustomer(customer_id="c1", token=token, request_id="r1")
        outcome = operate_verify(invited, command, datetime.now(UTC))
        assert isinstance(outcome, VerificationRejected), token
