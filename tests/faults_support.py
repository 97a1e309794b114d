"""Helpers for the fault tests (which run `python server.py` as a real process with
bench.processes.ServerProcess): a webhook receiver, a load of invites from concurrent
clients, the journal's invariants, and freezing a PostgreSQL server (SIGSTOP to each
of its processes).

The load never trusts timing for its verdict: clients retry (with the same
Idempotency-Key) until they get an answer, and the checks poll with deadlines.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc
import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer

from actors import customer_actor_key, customer_id_for
from bench.exactly_once import REWRITTEN_STEPS
from bench.polling import eventually
from journal import Batch, Document, Journal, JournalUnavailableError, NewWorkflow, WorkflowRow
from runtime import DelegatingJournal

__all__ = [
    "Figures",
    "FlakyJournal",
    "InviteLoad",
    "Outcome",
    "WebhookReceiver",
    "check_journal",
    "frozen_postgres",
    "postgres_processes",
    "wait_all_finished",
]

ROOT = Path(__file__).resolve().parent.parent
_FINISHED = ("completed", "failed", "cancelled")


# -- the outside world ------------------------------------------------------------------


class WebhookReceiver:
    """Records every POST (Idempotency-Key header, JSON body). Refuses a seeded
    fraction with 500, so the runtime's delivery retries are exercised too."""

    def __init__(self, *, fail_rate: float = 0.0, seed: int = 0) -> None:
        self.posts: list[tuple[str | None, dict[str, Any]]] = []
        self.tokens: dict[str, str] = {}  # customer id -> invitation token
        self._fail_rate = fail_rate
        self._rng = random.Random(seed)

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.posts.append((request.headers.get("Idempotency-Key"), body))
        if body.get("type") == "invitation":
            self.tokens.setdefault(body["customer_id"], body["token"])
        return web.Response(status=500 if self._rng.random() < self._fail_rate else 200)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """Serve on a free local port; yields the URL to POST to."""
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        async with TestServer(app) as server:
            yield str(server.make_url("/hook"))


# -- the load ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one client saw of one invite (and its verification, if it sent one)."""

    email: str
    key: str | None  # None: sent once without an Idempotency-Key, never retried
    verify: bool
    status: int | None = None
    body: Any = None
    verify_status: int | None = None


@dataclass
class InviteLoad:
    """Invites `emails` from `concurrency` clients, each retrying with the same
    Idempotency-Key through connection errors and 503 until it gets an answer.
    A seeded `verify_fraction` of the customers then verify with the token that
    reached the webhook receiver. A seeded `keyless_fraction` of the invites go
    without a key, once: retried, they would be a second invite of the email."""

    url: str
    receiver: WebhookReceiver
    emails: list[str]
    seed: int
    concurrency: int = 16
    verify_fraction: float = 0.25
    keyless_fraction: float = 0.0
    give_up_after: float = 60.0
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    answered: int = 0
    interrupted: int = 0  # requests cut off by the server going away
    statuses: Counter[str] = field(default_factory=Counter)  # "invite 200", "verify 409"...
    server_errors: list[tuple[str, int, str]] = field(default_factory=list)  # 5xx but 503
    observers: list[Callable[[str, int | None], None]] = field(default_factory=list)

    async def run(self) -> None:
        rng = random.Random(self.seed)
        for email in self.emails:
            keyless = rng.random() < self.keyless_fraction
            self.outcomes[email] = Outcome(
                email=email, key=None if keyless else f"invite-{self.seed}-{email}",
                verify=rng.random() < self.verify_fraction,
            )
        queue = list(reversed(self.emails))
        timeout = aiohttp.ClientTimeout(total=20)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

            async def client() -> None:
                while queue:
                    await self._invite(session, self.outcomes[queue.pop()])

            async with anyio.create_task_group() as tg:
                for _ in range(self.concurrency):
                    tg.start_soon(client)

    async def _invite(self, session: aiohttp.ClientSession, outcome: Outcome) -> None:
        headers = {} if outcome.key is None else {"Idempotency-Key": outcome.key}
        outcome.status, outcome.body = await self._post(
            session, "/customers/invite", {"email": outcome.email}, headers,
            retry=outcome.key is not None,
        )
        self.answered += 1
        if outcome.verify and outcome.status in (200, 202):
            customer_id = customer_id_for(outcome.email)
            await eventually(self._has_token(customer_id), within=self.give_up_after,
                             what=f"the invitation of {outcome.email} to reach the receiver")
            outcome.verify_status, _ = await self._post(
                session, f"/customers/{customer_id}/verify",
                {"token": self.receiver.tokens[customer_id]}, {},
            )

    def _has_token(self, customer_id: str) -> Callable[[], Awaitable[bool]]:
        async def probe() -> bool:
            return customer_id in self.receiver.tokens

        return probe

    async def _post(
        self, session: aiohttp.ClientSession, path: str, body: Any, headers: dict[str, str],
        *, retry: bool = True,
    ) -> tuple[int | None, Any]:
        """Until an answer that is not 5xx (or once, without `retry`): (status, body);
        the status is None if the request was cut off."""
        deadline = time.monotonic() + self.give_up_after
        while time.monotonic() < deadline:
            status: int | None = None
            try:
                async with session.post(self.url + path, json=body, headers=headers) as reply:
                    status = reply.status
                    text = await reply.text()
            except (aiohttp.ClientError, TimeoutError):
                self.interrupted += 1
            for observe in self.observers:
                observe(path, status)
            if status is not None:
                self.statuses[f"{path.rsplit('/', 1)[-1]} {status}"] += 1
                if status < 500:
                    return status, json.loads(text)
                if status != 503:
                    self.server_errors.append((path, status, text[:300]))
            if not retry:
                return status, None
            await anyio.sleep(0.05 + random.random() * 0.1)
        raise AssertionError(f"POST {path} got no answer in {self.give_up_after} s")


# -- the invariants --------------------------------------------------------------------------

# (kind, name before any ":") of every step, in order, for each kind of workflow.
_INVITE_PREFIX = [
    ("step", "invite.lookup"), ("step", "invite.operate"), ("patch", "invite-event-with-write"),
    ("write", "invite.write"), ("child", "communicate_to_customer"),
    ("patch", "verification-reminder"), ("step", "now"), ("wait", "signal"),
]
INVITE_EXPIRED = [*_INVITE_PREFIX, ("step", "verify.operate_expire"), ("write", "verify.write")]
INVITE_VERIFIED = [
    *_INVITE_PREFIX, ("step", "now"), ("step", "verify.operate"), ("write", "verify.write"),
    ("event", "verify"), ("child", "communicate_to_customer"),
]
COMMUNICATE = [
    ("step", "communicate.prepare"), ("write", "communicate.record"),
    ("step", "communicate.deliver"), ("step", "now"), ("write", "communicate.mark"),
]
_DELIVER_SEQ = 3  # the seq of communicate.deliver: its idempotency key is "<id>:3"


@dataclass
class Figures:
    invites_checked: int = 0
    customers: int = 0
    verified: int = 0
    expired: int = 0
    workflows: int = 0
    deliveries: int = 0
    duplicate_deliveries: int = 0  # the same key delivered again: allowed
    conflicting_keys: int = 0  # one message under two keys: a step ran twice
    steps_rerun: int = 0  # steps whose final attempt is > 1 (crash or retry)
    problems: list[str] = field(default_factory=list)

    def require(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)


async def wait_all_finished(dsn: str, within: float) -> None:
    """Poll until no workflow is unfinished."""
    conn = await asyncpg.connect(dsn)
    try:

        async def finished() -> bool:
            left = await conn.fetchval(
                "SELECT count(*) FROM workflows WHERE status <> ALL($1::text[])", list(_FINISHED)
            )
            return bool(left == 0)

        await eventually(finished, within=within, what="every workflow to finish")
    finally:
        await conn.close()


async def check_journal(dsn: str, receiver: WebhookReceiver, load: InviteLoad) -> Figures:
    """Check DESIGN.md's promises on the journal, the receiver and the clients'
    answers; every breach is listed in `Figures.problems`."""
    conn = await asyncpg.connect(dsn)
    try:
        workflows = await conn.fetch("SELECT id, name, actor_key, status, parent_id, error, "
                                     "idempotency_key FROM workflows")
        steps = await conn.fetch("SELECT workflow_id, seq, kind, name, status, attempt "
                                 "FROM steps ORDER BY workflow_id, seq")
        events = await conn.fetch("SELECT actor_key, seq, type, payload::text AS payload "
                                  "FROM events ORDER BY actor_key, seq")
        documents = await conn.fetch("SELECT kind, id, data::text AS data, unique_key "
                                     "FROM documents")
        dead_letters = await conn.fetchval("SELECT count(*) FROM dead_letters")
        rewritten = await conn.fetch(REWRITTEN_STEPS)
    finally:
        await conn.close()
    figures = Figures(workflows=len(workflows))
    figures.require(dead_letters == 0, f"{dead_letters} dead letters")
    figures.require(not rewritten, f"completed steps written again by a later run: "
                                   f"{[dict(r) for r in rewritten[:5]]}")
    _check_answers(figures, load)
    _check_workflows(figures, workflows, steps, documents, load)
    _check_events(figures, events, documents, receiver)
    _check_receiver(figures, receiver, workflows, documents)
    return figures


def _check_answers(figures: Figures, load: InviteLoad) -> None:
    figures.require(not load.server_errors, f"5xx answers: {load.server_errors[:5]}")
    for outcome in load.outcomes.values():
        if outcome.key is None and outcome.status in (None, 503):
            continue  # sent once, refused or cut off: it may or may not have been accepted
        figures.require(outcome.status in (200, 202),
                        f"invite of {outcome.email} answered {outcome.status}: {outcome.body}")
        if outcome.verify_status is not None:
            figures.require(outcome.verify_status in (200, 202, 409),
                            f"verify of {outcome.email} answered {outcome.verify_status}")


def _check_workflows(
    figures: Figures, workflows: list[Any], steps: list[Any], documents: list[Any],
    load: InviteLoad,
) -> None:
    shapes: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for step in steps:
        shapes[step["workflow_id"]].append((step["kind"], step["name"].split(":")[0]))
        figures.require(step["status"] == "completed",
                        f"step {step['workflow_id']}:{step['seq']} is {step['status']}")
        figures.require(step["seq"] == len(shapes[step["workflow_id"]]),
                        f"workflow {step['workflow_id']} has a gap before seq {step['seq']}")
        figures.steps_rerun += step["attempt"] > 1
    customers = {d["id"]: json.loads(d["data"]) for d in documents if d["kind"] == "customer"}
    children: dict[str, list[str]] = defaultdict(list)
    invites: dict[str, list[Any]] = defaultdict(list)
    for row in workflows:
        figures.require(row["status"] == "completed",
                        f"workflow {row['id']} ({row['name']}) is {row['status']}: {row['error']}")
        if row["parent_id"] is not None:
            children[row["parent_id"]].append(row["id"])
            figures.require(shapes[row["id"]] == COMMUNICATE,
                            f"child {row['id']} has steps {shapes[row['id']]}")
        else:
            invites[row["actor_key"]].append(row)
    for actor_key, rows in invites.items():
        figures.require(len(rows) == 1, f"{len(rows)} invite workflows for {actor_key}")
    for outcome in load.outcomes.values():
        if outcome.status not in (200, 202):
            continue
        figures.invites_checked += 1
        customer_id = customer_id_for(outcome.email)
        rows = invites.get(customer_actor_key(customer_id), [])
        figures.require(
            [r["id"] for r in rows] == [outcome.body.get("workflow_id")],
            f"{outcome.email} was answered workflow {outcome.body} but has {rows}",
        )
        customer = customers.get(customer_id)
        if customer is None:
            figures.problems.append(f"{outcome.email} got {outcome.status} but is no customer")
            continue
        expected = INVITE_VERIFIED if customer["status"] == "verified" else INVITE_EXPIRED
        figures.verified += customer["status"] == "verified"
        figures.expired += customer["status"] == "expired"
        figures.require(customer["status"] in ("verified", "expired"),
                        f"customer {customer_id} ended {customer['status']}")
        figures.require(customer["workflow_id"] == outcome.body.get("workflow_id"),
                        f"customer {customer_id} belongs to workflow {customer['workflow_id']}")
        for row in rows:
            figures.require(shapes[row["id"]] == expected,
                            f"invite {row['id']} has steps {shapes[row['id']]}")
            figures.require(len(children[row["id"]]) == (2 if expected is INVITE_VERIFIED else 1),
                            f"invite {row['id']} has children {children[row['id']]}")
    figures.customers = len(customers)
    figures.require(len(customers) == len(invites),
                    f"{len(customers)} customers for {len(invites)} invite workflows")


def _check_events(
    figures: Figures, events: list[Any], documents: list[Any], receiver: WebhookReceiver
) -> None:
    by_actor: dict[str, list[Any]] = defaultdict(list)
    for event in events:
        by_actor[event["actor_key"]].append(event)
    for document in documents:
        if document["kind"] != "customer":
            continue
        log = by_actor.get(customer_actor_key(document["id"]), [])
        invited = [json.loads(e["payload"]) for e in log if e["type"] == "CustomerInvited"]
        figures.require(len(invited) == 1,
                        f"customer {document['id']} has {len(invited)} CustomerInvited events")
        # Every email is invited once (retries carry their key): a failed invite means
        # the invite workflow ran again and found its own customer.
        figures.require(all(e["type"] != "CustomerInviteFailed" for e in log),
                        f"customer {document['id']} has a CustomerInviteFailed event")
        sent = receiver.tokens.get(document["id"])
        figures.require(not invited or sent is None or sent == invited[0]["token"],
                        f"customer {document['id']} was sent another token than the one logged")
        figures.require([e["seq"] for e in log] == list(range(1, len(log) + 1)),
                        f"the log of customer {document['id']} has gaps")


def _check_receiver(
    figures: Figures, receiver: WebhookReceiver, workflows: list[Any], documents: list[Any]
) -> None:
    keys_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    bodies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key, body in receiver.posts:
        figures.require(key == body.get("idempotency_key"), f"header {key} != body {body}")
        keys_of[(body["customer_id"], body["type"])].add(str(key))
        bodies[str(key)].append(body)
    figures.deliveries = len(receiver.posts)
    figures.duplicate_deliveries = len(receiver.posts) - len(bodies)
    for message, keys in keys_of.items():
        if len(keys) > 1:
            figures.conflicting_keys += 1
            figures.problems.append(f"message {message} was sent under keys {sorted(keys)}")
    for key, sent in bodies.items():
        figures.require(all(b == sent[0] for b in sent), f"key {key} carried different bodies")
    for row in workflows:
        if row["parent_id"] is not None:
            key = f"{row['id']}:{_DELIVER_SEQ}"
            figures.require(key in bodies, f"message {key} never reached the receiver")
    messages = [json.loads(d["data"]) for d in documents if d["kind"] == "message"]
    for message in messages:
        figures.require(message["status"] == "delivered" and message["idempotency_key"] in bodies,
                        f"message {message['id']} is {message['status']}, key "
                        f"{message['idempotency_key']}")
    for document in documents:
        if document["kind"] == "customer":
            figures.require(document["id"] in receiver.tokens,
                            f"customer {document['id']} never got an invitation")


# -- journal faults, injected in-process -------------------------------------------------------


class FlakyJournal(DelegatingJournal):
    """Delegates to `inner`. `reads_down` reads (get_document, find_document) raise
    JournalUnavailableError first, like a database that went away for a while.
    `lose_ack_of` appends that carry domain events commit, then raise
    JournalUnavailableError: the commit's answer was lost on the way back;
    `lose_ack_of_create` does the same to create_workflow."""

    def __init__(
        self, inner: Journal, *, reads_down: int = 0, lose_ack_of: int = 0,
        lose_ack_of_create: int = 0,
    ) -> None:
        super().__init__(inner)
        self.reads_down = reads_down
        self.lose_ack_of = lose_ack_of
        self.lose_ack_of_create = lose_ack_of_create
        self.lost_acks = 0

    def _read(self) -> None:
        if self.reads_down > 0:
            self.reads_down -= 1
            raise JournalUnavailableError("FlakyJournal: the database is away")

    async def get_document(self, kind: str, doc_id: str) -> Document | None:
        self._read()
        return await self.inner.get_document(kind, doc_id)

    async def find_document(self, kind: str, unique_key: str) -> Document | None:
        self._read()
        return await self.inner.find_document(kind, unique_key)

    async def append(self, batch: Batch) -> None:
        await self.inner.append(batch)
        if batch.events and self.lose_ack_of > 0:
            self.lose_ack_of -= 1
            self.lost_acks += 1
            raise JournalUnavailableError("FlakyJournal: the connection died before the ack")

    async def create_workflow(
        self, workflow: NewWorkflow, *, key_expired_before: datetime | None = None
    ) -> tuple[WorkflowRow, bool]:
        created = await self.inner.create_workflow(workflow, key_expired_before=key_expired_before)
        if self.lose_ack_of_create > 0:
            self.lose_ack_of_create -= 1
            self.lost_acks += 1
            raise JournalUnavailableError("FlakyJournal: the connection died before the ack")
        return created


# -- a frozen PostgreSQL -----------------------------------------------------------------------


def postgres_processes(data_dir: Path) -> list[int]:
    """The postmaster of the server on `data_dir` (its postmaster.pid) and every
    process under it, found by walking /proc: that server's processes only."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry.name))
    found, todo = [postmaster], [postmaster]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


@contextmanager
def frozen_postgres(data_dir: Path) -> Iterator[list[int]]:
    """SIGSTOP every process of the server on `data_dir` for the block (a hung
    database: sockets open, nothing answers), SIGCONT on the way out. The
    postmaster stops first, so it forks nothing new while its children are stopped;
    yields their pids."""
    stopped: list[int] = []
    try:
        for _ in range(3):  # again, for a child forked just before its parent stopped
            for pid in postgres_processes(data_dir):
                if pid not in stopped:
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
        yield stopped
    finally:
        for pid in reversed(stopped):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
