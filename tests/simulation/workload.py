"""What the nodes run: the onboarding application and a small generic workflow,
whose side effects all land in one `Effects` log (the outside world).

Every effect step records `(current_step().idempotency_key, attempt)` each
time it runs, with the node that ran it; the communicator also records each
message it got through. A killed node runs nothing more (SimulatedCrash).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final

import anyio
import msgspec

from actors import Onboarding, OutgoingMessage
from runtime import RetryPolicy, Runtime, WorkflowContext, current_step

from .faults import Process

__all__ = ["CHORES", "Chore", "Delivery", "Effects", "Execution", "register_workload"]

CHORES: Final = "sim_chores"
# Backoffs short in virtual time, and more attempts than failures plus crashes need.
_CHORE_RETRY: Final = RetryPolicy(max_attempts=12, initial_backoff=0.02, max_backoff=0.2)


@dataclass(frozen=True)
class Execution:
    """One run of an effect step's function."""

    workflow_id: str
    seq: int
    attempt: int
    step: str
    node: str
    at: float


@dataclass(frozen=True)
class Delivery:
    """One message that reached the customer."""

    key: str
    customer_id: str
    type: str
    token: str
    node: str
    at: float


@dataclass
class Effects:
    """The outside world of one seed: every effect, in the order it happened."""

    executions: list[Execution] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)  # customer id -> invitation token

    def ran(self, node: str) -> int:
        """Record that the current step's function ran on `node`; its attempt."""
        step = current_step()
        self.executions.append(Execution(step.workflow_id, step.seq, step.attempt, step.name,
                                         node, anyio.current_time()))
        return step.attempt

    def delivered(self, message: OutgoingMessage, node: str) -> None:
        self.deliveries.append(Delivery(message.idempotency_key, message.customer_id,
                                        message.type, message.token, node,
                                        anyio.current_time()))
        if message.type == "invitation":
            self.tokens.setdefault(message.customer_id, message.token)


class Chore(msgspec.Struct, frozen=True, kw_only=True):
    """The generic workflow's input: how often its flaky step fails, how long it naps."""

    flaky_failures: int
    nap: float


class _Node:
    """A node's step functions. Holds the rest weakly: the runtime caches step
    functions, with what they are bound to, for the life of the interpreter."""

    def __init__(self, process: Process, effects: Effects) -> None:
        self._process_ref = weakref.ref(process)
        self._effects = weakref.ref(effects)

    @property
    def _process(self) -> Process:
        process = self._process_ref()
        assert process is not None, "a step ran after its simulation ended"
        return process

    async def _run(self, fail_p: float = 0.0) -> int:
        """The body of every effect: a seeded pause (a kill may land in it), then
        the effect itself, recorded. Raises ConnectionError with probability fail_p."""
        rng = self._process.rng
        if rng.random() < 0.3:
            await anyio.sleep(rng.choice((0.0, 0.001, 0.01)))
        self._process.check_alive()
        effects = self._effects()
        assert effects is not None, "a step ran after its simulation ended"
        attempt = effects.ran(self._process.name)
        if attempt <= 2 and rng.random() < fail_p:
            raise ConnectionError(f"simulated failure of attempt {attempt}")
        return attempt

    # -- the communication port ---------------------------------------------

    async def deliver(self, message: OutgoingMessage) -> str:
        """actors.Communicator: fails now and then on early attempts (retried)."""
        await self._run(fail_p=0.15)
        effects = self._effects()
        assert effects is not None
        effects.delivered(message, self._process.name)
        return "delivered"

    # -- the generic workflow -------------------------------------------------

    async def effect(self) -> int:
        return await self._run()

    async def flaky(self, failures: int) -> int:
        attempt = await self._run()
        if attempt <= failures:
            raise RuntimeError(f"flaky step: attempt {attempt} of {failures} that fail")
        return attempt

    async def chores(self, ctx: WorkflowContext, chore: Chore) -> list[int]:
        """Effect steps around a flaky one (retried) and a durable sleep."""
        first = await ctx.step("chore.first", self.effect)
        second = await ctx.step("chore.flaky", self.flaky, chore.flaky_failures,
                                retry=_CHORE_RETRY)
        await ctx.sleep(chore.nap)
        last = await ctx.step("chore.last", self.effect)
        return [first, second, last]


def register_workload(runtime: Runtime, process: Process, effects: Effects,
                      verification_ttl: float) -> None:
    """Register onboarding (with this node's communicator) and the chores workflow."""
    node = _Node(process, effects)
    Onboarding(communicator=node, verification_ttl=timedelta(seconds=verification_ttl)
               ).register(runtime)
    runtime.register(node.chores, name=CHORES)
