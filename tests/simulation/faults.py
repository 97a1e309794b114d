"""A node's view of the shared journal, with seeded faults: its "network".

Each Runtime (node incarnation) gets its own `SimJournal` around the ONE shared
MemoryJournal. Until the simulation heals (`Chaos.healed`), every call may, as
the node's `FaultProfile` and seeded RNG decide:

- yield a few extra times, or wait a little (virtual time), before and after;
- fail before it reaches the database (JournalUnavailableError): a blip, or
  one of the seed's outage windows (all nodes, or one node cut off);
- stall for longer than a lease lasts, before the call (it then runs with a
  stale view) or after it (the node learns late what it did);
- wait out a pause of the whole node (`pause`: every call blocks until it
  ends, like a process stopped with SIGSTOP, as the database sees it);
- after a write (`append`, `create_workflow`) that committed: lose the answer
  (JournalUnavailableError), or kill the node (SimulatedCrash, like kill -9);
- hold back the answer of a write that accepted a new workflow: the window in
  which `start_workflow` has committed and not yet queued its Run.

Wake-ups sent (`wake`) and received (`serve_node`'s callback) may be dropped
or duplicated. A dead node's journal refuses everything with SimulatedCrash,
and its wake-ups are never delivered: a killed process does nothing more.
Every call and its outcome goes to the Trace; every committed batch to the Ledger.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from journal import Batch, JournalUnavailableError, MemoryJournal, NewWorkflow, WorkflowRow
from runtime import SimulatedCrash

from .ledger import Ledger, Trace, summarize

__all__ = ["Chaos", "FaultProfile", "Process", "SimJournal"]


@dataclass(frozen=True)
class FaultProfile:
    """How often each fault strikes one node incarnation (probabilities per call)."""

    yield_p: float
    delay_p: float
    blip_p: float
    lost_answer_p: float
    stall_p: float
    crash_p: float
    window_p: float
    drop_wake_p: float
    dup_wake_p: float

    @classmethod
    def draw(cls, rng: random.Random) -> FaultProfile:
        return cls(
            yield_p=rng.uniform(0.0, 0.5),
            delay_p=rng.uniform(0.0, 0.1),
            blip_p=rng.choice((0.0, 0.003, 0.02)),
            lost_answer_p=rng.choice((0.0, 0.01, 0.04)),
            stall_p=rng.choice((0.0, 0.0, 0.002, 0.006)),
            crash_p=rng.choice((0.0, 0.0, 0.004, 0.012)),
            window_p=rng.uniform(0.2, 0.9),
            drop_wake_p=rng.choice((0.0, 0.05, 0.3)),
            dup_wake_p=rng.choice((0.0, 0.05, 0.3)),
        )


@dataclass
class Chaos:
    """The faults all nodes share: outage windows (start, end, slot or None for
    every node), until `healed`."""

    lease_ttl: float
    outages: list[tuple[float, float, int | None]] = field(default_factory=list)
    healed: bool = False

    def down(self, slot: int, now: float) -> bool:
        return not self.healed and any(
            start <= now < end and where in (None, slot) for start, end, where in self.outages
        )


class Process:
    """One node incarnation as its code sees it: its name, whether it was
    killed, and its RNG. Small on purpose: the runtime caches step functions
    (and the objects they are bound to) for the life of the interpreter."""

    __slots__ = ("__weakref__", "dead", "name", "rng", "slot")

    def __init__(self, name: str, slot: int, rng: random.Random) -> None:
        self.name = name
        self.slot = slot
        self.rng = rng
        self.dead = False

    def check_alive(self) -> None:
        if self.dead:
            raise SimulatedCrash(f"node {self.name} was killed")


class SimJournal:
    """Delegates to `inner` (the shared journal) with this node's faults; see
    the module docstring. Hand it to the node's Runtime."""

    def __init__(self, inner: MemoryJournal, process: Process, profile: FaultProfile,
                 chaos: Chaos, trace: Trace, ledger: Ledger) -> None:
        self._inner = inner
        self.process = process
        self.profile = profile
        self._chaos = chaos
        self._trace = trace
        self._ledger = ledger
        self._paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """Every call, from now on for `seconds`, blocks until the pause ends."""
        self._paused_until = anyio.current_time() + seconds
        self._add(f"PAUSE {seconds:.3f}s", fault="pause")

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._call(name, attr, args, kwargs)

        return call

    # -- the write path -------------------------------------------------------

    async def append(self, batch: Batch) -> None:
        await self._call("append", self._inner.append, (batch,), {},
                         write=batch, fresh=batch.epoch is None and bool(batch.workflows))

    async def create_workflow(
        self, workflow: NewWorkflow, *, key_expired_before: datetime | None = None
    ) -> tuple[WorkflowRow, bool]:
        row, created = await self._call("create_workflow", self._inner.create_workflow,
                                        (workflow,), {"key_expired_before": key_expired_before},
                                        fresh=True)
        return row, created  # a write; its answer may be lost, see _after

    # -- wake-ups -------------------------------------------------------------

    async def wake(self, payloads: Sequence[str]) -> None:
        async def send(*args: Any) -> None:
            if self._struck(self.profile.drop_wake_p):
                self._add(f"wake dropped {summarize(list(payloads))}", fault="wake dropped")
                return
            await self._inner.wake(payloads)
            if self._struck(self.profile.dup_wake_p):
                self._add(f"wake sent twice {summarize(list(payloads))}", fault="wake doubled")
                await self._inner.wake(payloads)

        await self._call("wake", send, (list(payloads),), {})

    async def serve_node(self, node_id: str, on_wake: Callable[[str], None], *,
                         task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        def receive(payload: str) -> None:
            if self.process.dead:
                return
            if self._struck(self.profile.drop_wake_p):
                self._add(f"recv dropped {payload!r}", fault="wake dropped")
                return
            self._add(f"recv {payload!r}")
            on_wake(payload)
            if self._struck(self.profile.dup_wake_p):
                self._add(f"recv again {payload!r}", fault="wake doubled")
                on_wake(payload)

        await self._inner.serve_node(node_id, receive, task_status=task_status)

    # -- one call -------------------------------------------------------------

    async def _call(self, name: str, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
                    kwargs: dict[str, Any], *, write: Batch | None = None,
                    fresh: bool = False) -> Any:
        self.process.check_alive()
        await self._before(name)
        self.process.check_alive()
        text = f"{name}({', '.join(summarize(a) for a in args)})"
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            self._add(f"{text} !{type(exc).__name__}")
            raise
        self._add(f"{text} -> {summarize(result)}")
        if write is not None:
            self._ledger.committed(write, self.process.name, anyio.current_time())
        if isinstance(result, WorkflowRow):
            self._ledger.seen(result, f"a {name} by {self.process.name}")
        await self._after(name, wrote=write is not None or name == "create_workflow",
                          fresh=fresh)
        self.process.check_alive()  # killed meanwhile: the caller never hears back
        return result

    async def _before(self, name: str) -> None:
        await self._wait_out_pause()
        if self._chaos.healed:
            return
        await self._jitter()
        if self._struck(self.profile.stall_p):
            await self._stall(f"before {name}")
        if self._chaos.down(self.process.slot, anyio.current_time()) \
                or self._struck(self.profile.blip_p):
            self._add(f"{name} !outage", fault="outage")
            raise JournalUnavailableError(f"simulated outage: {self.process.name} is cut off")

    async def _after(self, name: str, *, wrote: bool, fresh: bool) -> None:
        await self._wait_out_pause()
        if self._chaos.healed:
            return
        if wrote and self._struck(self.profile.crash_p):
            self._add(f"CRASH after {name}", fault="crash")
            self.process.dead = True
            raise SimulatedCrash(f"simulated crash of {self.process.name} after {name}")
        if wrote and self._struck(self.profile.lost_answer_p):
            self._add(f"{name} committed, answer lost", fault="answer lost")
            raise JournalUnavailableError(f"simulated outage: the answer to {name} was lost")
        if fresh and self._struck(self.profile.window_p):
            # Long enough, often, for a heartbeat's catch-up or a recovery to
            # find the new workflow before start_workflow queues it.
            seconds = self.process.rng.choice((0.0, 0.03, 0.06, 0.12))
            self._add(f"{name} answer held {seconds}s", fault="accept held")
            await anyio.sleep(seconds)
        await self._jitter()
        if self._struck(self.profile.stall_p):
            await self._stall(f"after {name}")

    async def _wait_out_pause(self) -> None:
        if (left := self._paused_until - anyio.current_time()) > 0:
            await anyio.sleep(left)

    async def _jitter(self) -> None:
        rng = self.process.rng
        if self._struck(self.profile.yield_p):
            for _ in range(rng.randint(1, 3)):
                await anyio.lowlevel.checkpoint()
        if self._struck(self.profile.delay_p):
            await anyio.sleep(rng.uniform(0.0, 0.02))

    async def _stall(self, where: str) -> None:
        seconds = self.process.rng.uniform(1.2, 3.0) * self._chaos.lease_ttl
        self._add(f"stall {seconds:.3f}s {where}", fault="stall")
        await anyio.sleep(seconds)

    def _struck(self, p: float) -> bool:
        return p > 0 and not self._chaos.healed and self.process.rng.random() < p

    def _add(self, line: str, *, fault: str | None = None) -> None:
        self._trace.add(anyio.current_time(), self.process.name, line, fault=fault)
