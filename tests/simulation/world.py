"""One seed, start to end: `run_seed(seed, options) -> SeedResult`.

The seed decides the plan (driver.Plan), the order of ready callbacks, every
fault, and the runtime's retry jitter (the global `random`, seeded here). The
run: nodes start; clients send their requests while faults strike and nodes
die, leave and come back, for `plan.chaos_seconds` of virtual time; then
everything heals, at least one node is up, and virtual time runs until nothing
can move any more (or a deadline); the nodes close; the checkers run.
Run it with PYTHONHASHSEED=0 (see __main__): set order must not vary.
"""

from __future__ import annotations

import gc
import logging
import random
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

import anyio
import anyio.abc

from journal import PARTITION_COUNT, MemoryJournal
from runtime import Runtime

from .cluster import EPOCH, LEASE_TTL, Cluster
from .driver import Clients, Plan, run_node_ops
from .faults import Chaos
from .invariants import CHECKS, collect
from .ledger import Ledger, Trace
from .vloop import SimulationStuck, run_virtual
from .workload import Effects

__all__ = ["Options", "SeedResult", "replay_command", "run_seed", "switches_missing"]

# After the heal, time given to settle, past the verification TTL.
_SETTLE: Final = 20.0
# Then, time given to every node to let go of the commands it accepted.
_DRAIN: Final = 5.0


@dataclass(frozen=True)
class Options:
    """`shortcut`: every Runtime trusts a stale in-memory row (the old bug put
    back); `guards`: the journal refuses a stale run's append."""

    shortcut: bool = False
    guards: bool = True


@dataclass
class SeedResult:
    seed: int
    options: Options
    violations: list[str]
    digest: str
    tail: list[str]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def replay(self) -> str:
        return replay_command(self.seed, self.options)


def replay_command(seed: int, options: Options) -> str:
    flags = (" --shortcut" if options.shortcut else "") + ("" if options.guards
                                                           else " --no-guards")
    return f"replay: PYTHONHASHSEED=0 .venv/bin/python -m tests.simulation --seed {seed}{flags}"


def switches_missing(options: Options) -> str | None:
    """Why this build cannot run with `options` (None: it can)."""
    if options.shortcut and not hasattr(Runtime, "trust_stale_rows"):
        return "this build's Runtime has no trust_stale_rows switch (--shortcut)"
    if not options.guards:
        try:
            MemoryJournal(guards=False)
        except TypeError:
            return "this build's MemoryJournal has no guards switch (--no-guards)"
    return None


def run_seed(seed: int, options: Options | None = None, *, tail: int = 80) -> SeedResult:
    """Simulate `seed` once; deterministic for a given seed, options and build.
    The result keeps the last `tail` lines of the trace (0: all)."""
    options = options or Options()
    plan = Plan.draw(seed)
    world = _World(seed, plan, options, tail)
    random.seed(seed)  # retry jitter (runtime.RetryPolicy) draws from the global RNG
    began = time.perf_counter()
    with _logs_into(world.trace), _no_gc_pauses():
        try:
            run_virtual(world.main, random.Random(f"{seed}:loop"))
        except SimulationStuck as exc:
            world.violations.append(f"[quiescence] {exc}")
        except Exception as exc:  # noqa: BLE001 - a finding: report it, go on to the next seed
            world.violations.append(f"[no-unexpected-errors] the simulation raised "
                                    f"{type(exc).__name__}: {exc}")
            for line in traceback.format_exception(exc):
                world.trace.note(-1.0, "error", line.rstrip())
    world.stats["seconds"] = round(time.perf_counter() - began, 3)
    return SeedResult(seed, options, world.violations, world.trace.digest(),
                      list(world.trace.tail), world.stats)


class _World:
    def __init__(self, seed: int, plan: Plan, options: Options, tail: int) -> None:
        self.seed = seed
        self.plan = plan
        self.options = options
        self.trace = Trace(tail)
        self.ledger = Ledger()
        self.effects = Effects()
        self.violations: list[str] = []
        self.stats: dict[str, Any] = {}

    async def main(self) -> None:
        extra = {} if self.options.guards else {"guards": False}
        journal = MemoryJournal(clock=lambda: EPOCH.timestamp() + anyio.current_time(),
                                **extra)
        chaos = Chaos(LEASE_TTL, list(self.plan.outages))
        deadline = self.plan.chaos_seconds + self.plan.verification_ttl + _SETTLE + 30.0
        with anyio.move_on_after(deadline) as scope:
            async with anyio.create_task_group() as tg:
                cluster = Cluster(tg, self.seed, journal, chaos, self.trace, self.ledger,
                                  self.effects, verification_ttl=self.plan.verification_ttl,
                                  shortcut=self.options.shortcut)
                clients = Clients(self.seed, cluster, self.effects, self.plan)
                await self._run(tg, cluster, clients, chaos, journal)
                tg.cancel_scope.cancel()  # what is left: restarts never due, nothing else
        if scope.cancelled_caught:
            self.violations.append(f"[quiescence] the simulation was still running at "
                                   f"virtual time {deadline:.1f} s")
            return
        snapshot = await collect(journal, EPOCH + timedelta(seconds=anyio.current_time()),
                                 self.effects, self.ledger, clients.accepted,
                                 clients.right_tokens, cluster.runtimes)
        for check in CHECKS:
            self.violations += check(snapshot)
        self.stats.update(workflows=len(snapshot.rows), runtimes=len(cluster.runtimes),
                          journal_calls=self.trace.calls,
                          faults=dict(sorted(self.trace.faults.items())),
                          client_retries=dict(sorted(clients.retries.items())))

    async def _run(self, tg: anyio.abc.TaskGroup, cluster: Cluster, clients: Clients,
                   chaos: Chaos, journal: MemoryJournal) -> None:
        for slot in range(self.plan.first_nodes):
            cluster.start(slot)
        clients.start(tg)
        node_ops = anyio.CancelScope()
        tg.start_soon(self._node_ops, tg, cluster, node_ops)
        await anyio.sleep(self.plan.chaos_seconds)
        node_ops.cancel()
        chaos.healed = True
        self.trace.add(anyio.current_time(), "sim", "HEAL")
        cluster.ensure_one_up()
        settled = await self._settle(clients, journal)
        self.stats["virtual_seconds"] = round(anyio.current_time(), 3)
        if not settled:
            self.violations.append(f"[quiescence] not settled {_SETTLE:g} virtual seconds "
                                   "after the heal (see all-settled)")
        self.violations += await self._drained(cluster)
        await cluster.shutdown()
        self.violations += cluster.errors + clients.errors

    async def _node_ops(self, tg: anyio.abc.TaskGroup, cluster: Cluster,
                        scope: anyio.CancelScope) -> None:
        with scope:  # cancelled at the heal: no kill after it
            await run_node_ops(tg, cluster, self.plan)

    async def _drained(self, cluster: Cluster) -> list[str]:
        """Every node lets go of the commands it accepted: its in-flight count
        drops to 0. Not at once: a node may still be in the middle of a run
        that a stall from before the heal holds up (its writes are fenced)."""
        deadline = anyio.current_time() + _DRAIN
        while anyio.current_time() < deadline:
            if not any(node.runtime.statistics().in_flight for node in cluster.up()):
                return []
            await anyio.sleep(0.1)
        return [f"[in-flight-released] node {node.name} still counts "
                f"{node.runtime.statistics().in_flight} accepted commands in flight "
                f"{_DRAIN:g} virtual seconds after everything settled"
                for node in cluster.up() if node.runtime.statistics().in_flight]

    async def _settle(self, clients: Clients, journal: MemoryJournal) -> bool:
        """Let time run until the clients are done and no workflow can move."""
        deadline = anyio.current_time() + self.plan.verification_ttl + _SETTLE
        while anyio.current_time() < deadline:
            await anyio.sleep(0.2)
            if not clients.pending and await _settled(journal):
                return True
        return False


async def _settled(journal: MemoryJournal) -> bool:
    """No timer is set (waits, steps backing off), no workflow is pending or has
    an unconsumed signal, and every other one has finished or waits: nothing
    but a client can move any of them."""
    if await journal.waiting_steps():
        return False
    runnable, _ = await journal.runnable_workflows(range(PARTITION_COUNT), 0)
    return not runnable and all(row.status == "waiting"
                                for row in await journal.unfinished_workflows())


@contextmanager
def _no_gc_pauses() -> Iterator[None]:
    """No cyclic garbage collection during a seed: it would run finalizers (of
    the seeds before) at moments that depend on what ran before. What the
    interpreter held before the first seed is frozen out of the collections."""
    if not gc.get_freeze_count():
        gc.collect()
        gc.freeze()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@contextmanager
def _logs_into(trace: Trace) -> Iterator[None]:
    """The runtime's log records go to the trace's tail (not its digest), not stderr."""
    logger = logging.getLogger("retinue")
    handler = _TraceHandler(trace)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class _TraceHandler(logging.Handler):
    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self._trace = trace

    def emit(self, record: logging.LogRecord) -> None:
        try:
            now = anyio.current_time()
        except RuntimeError:
            now = -1.0
        self._trace.note(now, "log", f"{record.levelname} {record.getMessage()}")
