"""Up to three nodes (Runtimes) on the one shared journal: start, kill, leave, restart.

A node slot holds at most one incarnation at a time. An incarnation ends by a
kill (its journal raised SimulatedCrash after a write, or the chaos schedule
killed it: kill -9, no goodbye), or by a graceful leave (the Runtime closes
normally and hands its leases over). Either way its slot is started again
later with a fresh Runtime, unless the simulation is shutting down. Clients
reach a node through `Cluster.on_some_node`, like an HTTP request to it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, cast

import anyio
import anyio.abc
from prometheus_client import CollectorRegistry

from journal import Journal, JournalUnavailableError, MemoryJournal
from runtime import LoopClock, Runtime, SimulatedCrash

from .faults import Chaos, FaultProfile, Process, SimJournal
from .ledger import Ledger, Trace
from .workload import Effects, register_workload

__all__ = ["EPOCH", "SLOTS", "Cluster", "Incarnation", "NoNodeError"]

T = TypeVar("T")

EPOCH: Final = datetime(2030, 1, 1, tzinfo=UTC)
SLOTS: Final = 3
# Short, so that catch-up (every heartbeat with more than one node), lease
# expiry, recovery and rebalances all happen many times per seed. Not shorter:
# each heartbeat re-ranks the 256 partitions (rendezvous hashing), the
# simulation's largest cost.
HEARTBEAT: Final = 0.1
LEASE_TTL: Final = 0.3


class NoNodeError(Exception):
    """No node is up to take a client's request (or it died under the request)."""


class Incarnation:
    """One Runtime's life in a slot."""

    def __init__(self, slot: int, runtime: Runtime, journal: SimJournal) -> None:
        self.slot = slot
        self.runtime = runtime
        self.journal = journal
        self.scope = anyio.CancelScope()
        self.leave = anyio.Event()
        self.stopped = anyio.Event()
        self.opened = False  # its Runtime opened (joined, recovered)
        self.graceful = False  # its Runtime closed normally
        self.up = False  # opened, and not yet closing
        self.accepting = True  # clients may send it requests
        self.calls = 0  # client requests in flight on it

    @property
    def name(self) -> str:
        return self.journal.process.name

    @property
    def dead(self) -> bool:
        return self.journal.process.dead


class Cluster:
    """The nodes of one seed; every Runtime ever opened stays in `runtimes`."""

    def __init__(self, tg: anyio.abc.TaskGroup, seed: int, journal: MemoryJournal,
                 chaos: Chaos, trace: Trace, ledger: Ledger, effects: Effects, *,
                 verification_ttl: float, shortcut: bool) -> None:
        self._tg = tg
        self._seed = seed
        self._journal = journal
        self._chaos = chaos
        self._trace = trace
        self._ledger = ledger
        self._effects = effects
        self._ttl = verification_ttl
        self._shortcut = shortcut
        self._rng = random.Random(f"{seed}:cluster")
        self._ids = 0
        self._generations = [0] * SLOTS
        self.restarting: set[int] = set()
        self.slots: list[Incarnation | None] = [None] * SLOTS
        self.runtimes: list[Runtime] = []
        self.errors: list[str] = []
        self.shutting_down = False

    # -- life cycle -------------------------------------------------------------

    def start(self, slot: int) -> None:
        """Open a fresh Runtime in `slot` (empty), in the background."""
        assert self.slots[slot] is None
        generation = self._generations[slot] = self._generations[slot] + 1
        # A restarted server often keeps its node id (RETINUE_NODE_ID), sometimes not.
        name = f"n{slot}" if self._rng.random() < 0.5 else f"n{slot}.{generation}"
        rng = random.Random(f"{self._seed}:{slot}:{generation}")
        process = Process(name, slot, rng)
        journal = SimJournal(self._journal, process, FaultProfile.draw(rng), self._chaos,
                             self._trace, self._ledger)
        runtime = Runtime(
            cast(Journal, journal), node_id=name, registry=CollectorRegistry(),
            heartbeat_interval=HEARTBEAT, lease_ttl=LEASE_TTL, grace=0.5, idle_timeout=0.3,
            clock=LoopClock(EPOCH), new_id=self._new_id,
            # Tight bounds now and then: commands refused (clients retry), and
            # internal messages waiting for room in a full mailbox.
            mailbox_size=rng.choice((2, 64, 64)), max_in_flight=rng.choice((2, 10_000, 10_000)),
            # Keyless starts on an idle actor: mostly accepted by the run's first
            # commit (runtime/acceptance.py), sometimes by a commit of their own.
            eager_start=rng.random() < 0.75,
        )
        if self._shortcut:
            runtime.trust_stale_rows = True
        register_workload(runtime, process, self._effects, self._ttl)
        node = self.slots[slot] = Incarnation(slot, runtime, journal)
        self.runtimes.append(runtime)
        self._trace.add(anyio.current_time(), name, f"START slot {slot}")
        self._tg.start_soon(self._host, node)

    def kill(self, node: Incarnation) -> None:
        """kill -9: the process does nothing more; its leases run out."""
        if not node.dead:
            self._trace.add(anyio.current_time(), node.name, "KILL", fault="kill")
        node.journal.process.dead = True
        node.scope.cancel()

    async def leave(self, node: Incarnation) -> None:
        """A graceful shutdown: drain client requests, then close the Runtime."""
        node.accepting = False
        while node.calls:
            await anyio.sleep(0.01)
        self._trace.add(anyio.current_time(), node.name, "LEAVE", fault="leave")
        node.leave.set()
        await node.stopped.wait()

    async def shutdown(self) -> None:
        """Close every node gracefully; nothing restarts after this."""
        self.shutting_down = True
        async with anyio.create_task_group() as tg:
            for node in self.slots:
                if node is not None:
                    tg.start_soon(self.leave, node)

    def up(self) -> list[Incarnation]:
        return [n for n in self.slots if n is not None and n.up and not n.dead]

    def ensure_one_up(self) -> None:
        """Start a node if none is alive or coming back. (A slot whose node is
        dying is not free yet, but that node restarts once it is gone.)"""
        free = [slot for slot, node in enumerate(self.slots) if node is None]
        if free and not self.restarting and all(n is None or n.dead for n in self.slots):
            self.start(free[0])

    # -- client requests ----------------------------------------------------------

    async def on_some_node(self, rng: random.Random,
                           request: Callable[[Incarnation], Awaitable[T]]) -> T:
        """`request(node)` on a random node that is up, as a client's call to it.
        Raises NoNodeError if none is up, or if it dies under the request."""
        nodes = [n for n in self.up() if n.accepting]
        if not nodes:
            raise NoNodeError("no node is up")
        node = rng.choice(nodes)
        node.calls += 1
        try:
            return await request(node)
        except SimulatedCrash:
            self.kill(node)  # it died in the client's call: tear the rest down too
            raise NoNodeError(f"node {node.name} died under the request") from None
        finally:
            node.calls -= 1

    # -- internals ------------------------------------------------------------------

    def _new_id(self) -> str:
        self._ids += 1
        return f"w{self._ids:04d}"

    async def _host(self, node: Incarnation) -> None:
        # The Runtime lives in a task of its own: should it ever leave a cancel
        # scope open (an exception out of its __aexit__), anyio's complaint ends
        # that task, and is reported here, instead of the whole simulation.
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._serve, node)
        except* SimulatedCrash:
            pass  # kill -9 after a write
        except* JournalUnavailableError as group:
            if node.opened:  # else it could not start: the process exits, and restarts
                self._unexpected(node, group)
        except* Exception as group:
            self._unexpected(node, group)
        finally:
            node.up = False
            node.journal.process.dead = True
            node.stopped.set()
            self.slots[node.slot] = None
            self._trace.add(anyio.current_time(), node.name,
                            "STOPPED" if node.graceful else "DIED")
            if not self.shutting_down:
                self._tg.start_soon(self._restart_later, node.slot, node.graceful)

    @staticmethod
    async def _serve(node: Incarnation) -> None:
        with node.scope:
            async with node.runtime:
                node.opened = node.up = True
                await node.leave.wait()
                node.up = False
            node.graceful = True

    def _unexpected(self, node: Incarnation, group: BaseExceptionGroup[Any]) -> None:
        for exc in _leaves(group):
            root = _root_cause(exc)
            during = "" if root is exc else f" (while {type(root).__name__} propagated: {root})"
            self.errors.append(f"[no-unexpected-errors] node {node.name} died of "
                               f"{type(exc).__name__}: {exc}{during}")

    async def _restart_later(self, slot: int, graceful: bool) -> None:
        # Some stay down for a while (the cluster shrinks), most come back soon.
        delay = self._rng.uniform(0.05, 0.5) if self._rng.random() < 0.8 else 2.0
        self.restarting.add(slot)
        try:
            await anyio.sleep(delay if not graceful else delay + 0.1)
        finally:
            self.restarting.discard(slot)
        if not self.shutting_down and self.slots[slot] is None:
            self.start(slot)


def _root_cause(exc: BaseException) -> BaseException:
    """The first exception of the chain that ended in `exc`."""
    while (earlier := exc.__cause__ or exc.__context__) is not None:
        exc = earlier
    return exc


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
