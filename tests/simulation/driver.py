"""The seed's plan (what happens, when) and the clients that carry it out.

`Plan.draw(seed)` decides everything up front: how many nodes start, how long
the chaos lasts, the verification TTL, which customers are invited (some
twice, some with an idempotency key), who verifies with the right token, a
wrong one, or never, the generic workflows, node kills, leaves, joins and
pauses, and outage windows. `Clients` send the requests like HTTP clients would: to a
random node that is up, retrying on an outage, an overload or a dead node
(with the same idempotency key when they have one; without one, a retry after
an unknown outcome is a new, duplicate invite, as it would be over HTTP).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
import anyio.abc

from actors import (
    CUSTOMER,
    VERIFY_SIGNAL,
    InviteCustomer,
    Onboarding,
    VerifyCustomer,
    customer_actor_key,
    customer_id_for,
)
from journal import JournalUnavailableError
from runtime import OverloadedError

from .cluster import LEASE_TTL, SLOTS, Cluster, Incarnation, NoNodeError
from .workload import CHORES, Chore, Effects

__all__ = ["Clients", "Plan", "run_node_ops"]

T = TypeVar("T")

_CLIENT = Onboarding()  # only its `invite` is used: a client's way in
_WRONG_TOKEN = "not-the-token"


@dataclass(frozen=True)
class Invite:
    at: float
    email: str
    key: str | None  # the Idempotency-Key header, if the client sends one


@dataclass(frozen=True)
class Verify:
    at: float
    email: str
    tokens: tuple[bool, ...]  # each attempt: the right token?


@dataclass(frozen=True)
class ChoreStart:
    at: float
    key: str
    chore: Chore


@dataclass(frozen=True)
class NodeOp:
    at: float
    kind: str  # kill | leave | join | pause
    slot: int
    seconds: float  # how long a pause lasts


@dataclass(frozen=True)
class Plan:
    chaos_seconds: float
    verification_ttl: float
    first_nodes: int
    invites: tuple[Invite, ...]
    verifies: tuple[Verify, ...]
    chores: tuple[ChoreStart, ...]
    node_ops: tuple[NodeOp, ...]
    outages: tuple[tuple[float, float, int | None], ...]

    @classmethod
    def draw(cls, seed: int) -> Plan:
        rng = random.Random(f"{seed}:plan")
        chaos = rng.uniform(1.0, 3.0)
        ttl = rng.uniform(0.6, 1.6)
        invites: list[Invite] = []
        verifies: list[Verify] = []
        for i in range(rng.randint(2, 8)):
            email = f"c{i}@sim.test"
            at = rng.uniform(0.0, chaos * 0.8)
            invites.append(_invite(rng, at, email, f"inv-{i}"))
            if rng.random() < 0.3:  # a duplicate command, later or racing
                invites.append(_invite(rng, rng.uniform(max(0.0, at - 0.05), chaos),
                                       email, f"inv-{i}-again"))
            tokens = rng.choice(((True,), (True,), (False, True), (False,), ()))
            if tokens:
                verifies.append(Verify(at + rng.uniform(0.0, ttl), email, tokens))
        chores = tuple(
            ChoreStart(rng.uniform(0.0, chaos), f"chore-{j}",
                       Chore(flaky_failures=rng.randint(0, 3), nap=rng.uniform(0.0, 0.4)))
            for j in range(rng.randint(1, 3))
        )
        kinds = ("kill", "kill", "leave", "join", "pause")
        ops = tuple(NodeOp(rng.uniform(0.1, chaos), rng.choice(kinds), rng.randrange(SLOTS),
                           rng.uniform(0.5, 3.0) * LEASE_TTL)
                    for _ in range(rng.randint(0, 6)))
        outages = tuple(_outage(rng, chaos) for _ in range(rng.randint(0, 3)))
        return cls(chaos, ttl, rng.randint(1, SLOTS), tuple(invites),
                   tuple(verifies), chores, ops, outages)


def _invite(rng: random.Random, at: float, email: str, key: str) -> Invite:
    return Invite(at, email, key if rng.random() < 0.5 else None)


def _outage(rng: random.Random, chaos: float) -> tuple[float, float, int | None]:
    start = rng.uniform(0.0, chaos)
    where = None if rng.random() < 0.4 else rng.randrange(SLOTS)
    return start, start + rng.uniform(0.02, 0.4), where


async def _sleep_until(at: float) -> None:
    await anyio.sleep(max(0.0, at - anyio.current_time()))


async def run_node_ops(tg: anyio.abc.TaskGroup, cluster: Cluster, plan: Plan) -> None:
    """Kill, stop, pause or start nodes at the plan's times (during the chaos only)."""
    for op in sorted(plan.node_ops, key=lambda op: op.at):
        await _sleep_until(op.at)
        node = cluster.slots[op.slot]
        if op.kind == "kill" and node is not None:
            cluster.kill(node)
        elif op.kind == "pause" and node is not None:
            node.journal.pause(op.seconds)
        elif op.kind == "leave" and node is not None and node.up:
            tg.start_soon(cluster.leave, node)
        elif op.kind == "join" and node is None and op.slot not in cluster.restarting:
            cluster.start(op.slot)


class Clients:
    """Everyone outside the cluster. `accepted` maps each workflow id a node
    acknowledged to what it is for; `right_tokens` holds the customers who
    were sent their right token; `errors` are answers no client should get;
    `retries` counts the requests sent again, by the error that came back."""

    def __init__(self, seed: int, cluster: Cluster, effects: Effects, plan: Plan) -> None:
        self._rng = random.Random(f"{seed}:clients")
        self._cluster = cluster
        self._effects = effects
        self._plan = plan
        self._give_up_at = plan.chaos_seconds + plan.verification_ttl + 10.0
        self.accepted: dict[str, str] = {}
        self.right_tokens: set[str] = set()
        self.errors: list[str] = []
        self.retries: Counter[str] = Counter()  # requests sent again, by what they got
        self.pending = 0

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        for invite in self._plan.invites:
            self._spawn(tg, self._invite, invite)
        for verify in self._plan.verifies:
            self._spawn(tg, self._verify, verify)
        for chore in self._plan.chores:
            self._spawn(tg, self._chore, chore)

    def _spawn(self, tg: anyio.abc.TaskGroup, client: Callable[[T], Awaitable[None]],
               what: T) -> None:
        async def run() -> None:
            try:
                await client(what)
            finally:
                self.pending -= 1

        self.pending += 1
        tg.start_soon(run)

    async def _invite(self, invite: Invite) -> None:
        await _sleep_until(invite.at)
        command = InviteCustomer(email=invite.email)

        async def send(node: Incarnation) -> tuple[str, bool]:
            return await _CLIENT.invite(node.runtime, command, idempotency_key=invite.key)

        answer = await self._request(f"invite {invite.email} ({invite.key})", send)
        if answer is not None:
            self.accepted[answer[0]] = f"invite of {invite.email}"

    async def _chore(self, start: ChoreStart) -> None:
        await _sleep_until(start.at)

        async def send(node: Incarnation) -> str:
            row, _ = await node.runtime.start_workflow(
                CHORES, start.chore, actor_key=f"chore:{start.key}", idempotency_key=start.key)
            return row.id

        workflow_id = await self._request(f"chore {start.key}", send)
        if workflow_id is not None:
            self.accepted[workflow_id] = f"chore {start.key}"

    async def _verify(self, verify: Verify) -> None:
        """Wait for the invitation (its token), find the customer's workflow in
        the projection, then send each planned token, right or wrong."""
        await _sleep_until(verify.at)
        customer_id = customer_id_for(verify.email)
        while (token := self._effects.tokens.get(customer_id)) is None:
            if anyio.current_time() > self._give_up_at:
                return  # never invited (every try failed): nothing to verify
            await anyio.sleep(0.05)

        async def lookup(node: Incarnation) -> str | None:
            document = await node.runtime.journal.get_document(CUSTOMER, customer_id)
            return None if document is None else str(document.data["workflow_id"])

        workflow_id = await self._request(f"lookup {customer_actor_key(customer_id)}", lookup)
        for n, right in enumerate(verify.tokens):
            if workflow_id is None:
                return
            if right:
                self.right_tokens.add(customer_id)
            command = VerifyCustomer(customer_id=customer_id, request_id=f"{customer_id[:8]}-{n}",
                                     token=token if right else _WRONG_TOKEN)

            async def send(node: Incarnation, command: VerifyCustomer = command) -> None:
                await node.runtime.signal(workflow_id, VERIFY_SIGNAL, command)

            await self._request(f"verify {workflow_id} ({verify.email})", send)
            await anyio.sleep(self._rng.uniform(0.0, 0.2))

    async def _request(self, what: str, request: Callable[[Incarnation], Awaitable[T]]
                       ) -> T | None:
        """`request` on some node, again and again until it answers; None if it
        never did (noted in `errors`) or raised what no client should see."""
        while anyio.current_time() < self._give_up_at:
            try:
                return await self._cluster.on_some_node(self._rng, request)
            except (JournalUnavailableError, OverloadedError, NoNodeError) as exc:
                self.retries[type(exc).__name__] += 1
                await anyio.sleep(self._rng.uniform(0.02, 0.2))
            except Exception as exc:  # noqa: BLE001 - any other answer is a finding
                self.errors.append(f"[no-unexpected-errors] client request {what} raised "
                                   f"{type(exc).__name__}: {exc}")
                return None
        self.errors.append(f"[no-unexpected-errors] client request {what} got no answer by "
                           f"virtual time {self._give_up_at:.1f} s (healed at "
                           f"{self._plan.chaos_seconds:.1f} s)")
        return None
