"""Scale-out: several nodes on one journal, one owner per partition, fenced.

PostgreSQL is the coordinator. Every node heartbeats its row in `nodes`; the
live nodes share the partitions by rendezvous hashing (each partition goes to
the live node with the highest hash of (partition, node)), so a node that joins
or leaves moves only its own share. Ownership is a lease row per partition:
owner, epoch (the fencing token, bumped on every change of owner) and expiry on
the database clock. Every append carries the writer's epoch and commits only
while it is current; that, not the timing of leases, is what makes a paused
node that wakes up late harmless.

Each heartbeat the `LeaseManager` renews the leases it holds (one it can no
longer renew was lost: its actors stop at once), releases those another live
node should have (stopping their actors first), and acquires those it should
have that are free, expired, or held by a dead node (then recovers them). A
node that leaves gracefully releases everything and wakes the others, so
nobody waits for a lease to run out.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Final, Protocol

import anyio
import msgspec
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, Counter, Gauge

from journal import PARTITION_COUNT, Cluster, ClusterView, JournalUnavailableError

from .clock import SYSTEM_CLOCK, Clock

__all__ = [
    "ClusterHost",
    "ClusterSettings",
    "LeaseManager",
    "News",
    "PartitionLost",
    "RunHere",
    "default_node_id",
    "desired_partitions",
    "news_payload",
    "parse_wake",
    "wake_payload",
]

_log = logging.getLogger("retinue.cluster")

# A wake-up with no workflow: "leases changed, look again now".
REBALANCE: Final = ""
# A node alone catches up on lost wake-ups every this many heartbeats.
_LONE_CATCH_UP: Final = 30


class PartitionLost(BaseException):  # noqa: N818 - control flow, like Suspended
    """Raised inside an actor whose partition this node does not own (any more).

    A BaseException so that no step or workflow code catches it on the way: the
    actor drops the message, and the partition's owner resumes it by replay."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        super().__init__(f"this node does not own partition {partition}")


class ClusterSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How often a node heartbeats and how long its leases last (seconds).

    A node unseen for `lease_ttl` loses its partitions; a node whose session is
    gone (its process died) is dead after `stale_after` without a heartbeat.
    Run every node with the same settings."""

    heartbeat_interval: float = 1.0
    lease_ttl: float = 5.0

    def __post_init__(self) -> None:
        if not (0 < self.heartbeat_interval and 2 * self.heartbeat_interval <= self.lease_ttl):
            raise ValueError(
                f"lease_ttl ({self.lease_ttl:g} s) must be at least twice the heartbeat "
                f"interval ({self.heartbeat_interval:g} s), which must be positive: a lease "
                "is renewed once per heartbeat and must survive one that is late"
            )

    @property
    def stale_after(self) -> float:
        return 2 * self.heartbeat_interval

    @classmethod
    def from_env(
        cls, heartbeat_interval: float | None = None, lease_ttl: float | None = None
    ) -> ClusterSettings:
        """The given values, else RETINUE_HEARTBEAT_INTERVAL / RETINUE_LEASE_TTL,
        else the defaults (1 s and 5 s)."""
        return cls(
            heartbeat_interval=heartbeat_interval
            if heartbeat_interval is not None
            else _env_float("RETINUE_HEARTBEAT_INTERVAL", 1.0),
            lease_ttl=lease_ttl if lease_ttl is not None else _env_float("RETINUE_LEASE_TTL", 5.0),
        )


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from None


def default_node_id() -> str:
    """RETINUE_NODE_ID, else host-pid: one node per process. A process that
    reopens a Runtime is the same node and takes its own partitions back at once."""
    return os.environ.get("RETINUE_NODE_ID") or f"{socket.gethostname()}-{os.getpid()}"


def _score(node_id: str, partition: int) -> int:
    digest = hashlib.blake2b(f"{partition}/{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def desired_partitions(node_id: str, live_nodes: Iterable[str]) -> set[int]:
    """The partitions `node_id` should own among `live_nodes` (rendezvous hashing)."""
    return set(_desired(node_id, tuple(sorted(set(live_nodes) | {node_id}))))


# Every heartbeat asks again, and the live nodes seldom change: 256 x nodes hashes
# each time were a third of the simulation's CPU. Keyed by the sorted node tuple.
@functools.lru_cache(maxsize=64)
def _desired(node_id: str, nodes: tuple[str, ...]) -> frozenset[int]:
    return frozenset(
        p for p in range(PARTITION_COUNT)
        if max(nodes, key=lambda n: (_score(n, p), n)) == node_id
    )


class RunHere(msgspec.Struct, frozen=True, array_like=True, tag="run"):
    """To the owner of `actor_key`: run `workflow_id`. `watched`: the sender waits
    for its events or its end (an HTTP answer), so tell it of them (News)."""

    actor_key: str
    workflow_id: str
    watched: bool = False


class News(msgspec.Struct, frozen=True, array_like=True, tag="news"):
    """From an owner: `workflow_id` published event `key` (None: it ended). Waiters
    elsewhere look at the journal now instead of at their next poll."""

    workflow_id: str
    key: str | None = None


_WAKE_DECODER: Final[msgspec.json.Decoder[RunHere | News]] = msgspec.json.Decoder(RunHere | News)


def wake_payload(actor_key: str, workflow_id: str, *, watched: bool = False) -> str:
    """What a node sends to wake the owner of `actor_key` for `workflow_id`."""
    return msgspec.json.encode(RunHere(actor_key, workflow_id, watched)).decode()


def news_payload(workflow_id: str, key: str | None) -> str:
    return msgspec.json.encode(News(workflow_id, key)).decode()


def parse_wake(payload: str) -> RunHere | News | None:
    """What a wake-up says; None for a rebalance (or garbage, logged)."""
    if payload == REBALANCE:
        return None
    try:
        return _WAKE_DECODER.decode(payload)
    except msgspec.DecodeError:
        _log.warning("ignoring a malformed wake-up: %r", payload[:200])
        return None


class ClusterHost(Protocol):
    """What the lease manager needs from the runtime."""

    def owned(self) -> Mapping[int, int]:
        """{partition: epoch} of the partitions this node owns now."""
        ...

    def stop_partitions(self, partitions: Collection[int]) -> None:
        """Stop those partitions' actors at once and forget their epochs."""
        ...

    async def partitions_acquired(self, epochs: Mapping[int, int]) -> None:
        """Own `epochs` from now on and recover their workflows and timers."""
        ...

    async def catch_up(self) -> None:
        """Find work in owned partitions that a lost wake-up may have hidden."""
        ...


class _Metrics:
    def __init__(self, registry: CollectorRegistry, manager: LeaseManager) -> None:
        self.lease_changes = Counter(
            "retinue_lease_changes", "Partition leases this node acquired, lost or released.",
            ["change"], registry=registry,
        )
        for change in ("acquired", "lost", "released"):
            self.lease_changes.labels(change)
        self.fenced_appends = Counter(
            "retinue_fenced_appends",
            "Appends the journal refused because this node's lease on the partition was stale.",
            registry=registry,
        )
        owned = Gauge("retinue_partitions_owned", "Partitions this node owns now.",
                      registry=registry)
        owned.set_function(lambda: len(manager.host.owned()))
        epoch = Gauge("retinue_partition_epoch_max",
                      "The highest epoch among the partitions this node owns (0: none).",
                      registry=registry)
        epoch.set_function(lambda: max(manager.host.owned().values(), default=0))
        nodes = Gauge("retinue_cluster_nodes", "Live nodes at this node's last heartbeat.",
                      registry=registry)
        nodes.set_function(lambda: manager.live_nodes)


class LeaseManager:
    """Keeps this node's share of the partitions, one heartbeat at a time."""

    def __init__(
        self,
        journal: Cluster,
        node_id: str,
        settings: ClusterSettings,
        host: ClusterHost,
        registry: CollectorRegistry,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._clock = clock
        # Told after every heartbeat whether the journal answered: an idle node
        # learns that an outage is over from its heartbeat, not only from a commit.
        self.on_journal: Callable[[bool], None] = lambda answered: None
        self.journal = journal
        self.node_id = node_id
        self.settings = settings
        self.host = host
        self.live_nodes = 0
        self.metrics = _Metrics(registry, self)
        self._kicked = anyio.Event()
        self._scope = anyio.CancelScope()
        self._renewed_at = self._clock.monotonic()

    # -- life cycle ---------------------------------------------------------

    async def join(self) -> None:
        """The first heartbeat: take this node's share of what is free (all of it
        when alone), and tell the others to make room if they hold the rest."""
        view = await self.tick()
        if len(view.live_nodes) > 1 or any(lease.owner not in ("", self.node_id)
                                           for lease in view.leases):
            await self.journal.wake([REBALANCE])

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat every `heartbeat_interval` (or at once when kicked) until stopped."""
        with self._scope:
            task_status.started()
            beats = 0
            while True:
                with anyio.move_on_after(self.settings.heartbeat_interval):
                    await self._kicked.wait()
                self._kicked = anyio.Event()
                beats += 1
                try:
                    await self.tick()
                    self.on_journal(True)
                    # Wake-ups come from other nodes; alone, a node seldom needs this.
                    if self.live_nodes > 1 or beats % _LONE_CATCH_UP == 0:
                        await self.host.catch_up()
                except JournalUnavailableError as exc:
                    self.on_journal(False)
                    self._unreachable(exc)

    def stop(self) -> None:
        """Stop heartbeating (the leases then run out unless `leave` releases them)."""
        self._scope.cancel()

    def kick(self) -> None:
        """Heartbeat now: another node released or joined."""
        self._kicked.set()

    async def leave(self) -> None:
        """Release every lease and leave (graceful shutdown): the others take over
        at their next heartbeat, which this wakes at once."""
        held = dict(self.host.owned())
        self.host.stop_partitions(held)
        try:
            if held:
                await self.journal.release_leases(self.node_id, held)
                self.metrics.lease_changes.labels("released").inc(len(held))
            await self.journal.leave(self.node_id)
            await self.journal.wake([REBALANCE])
        except JournalUnavailableError as exc:
            _log.warning("node %s could not hand over its %d partitions (%s); they move "
                         "once their leases run out", self.node_id, len(held), exc)

    # -- one heartbeat --------------------------------------------------------

    async def tick(self) -> ClusterView:
        """Heartbeat, renew, release the surplus, acquire what is missing."""
        began = self._clock.monotonic()
        ttl = self.settings.lease_ttl
        view = await self.journal.heartbeat(self.node_id, ttl,
                                            stale_after=self.settings.stale_after)
        live = set(view.live_nodes) | {self.node_id}
        self.live_nodes = len(live)
        held = await self._renew()
        self._renewed_at = began
        wanted = desired_partitions(self.node_id, live)
        surplus = {p: epoch for p, epoch in held.items() if p not in wanted}
        if surplus:
            await self._release(surplus)
        missing = [lease.partition for lease in view.leases
                   if lease.partition in wanted and lease.partition not in held
                   and (lease.owner in ("", self.node_id) or lease.expired
                        or lease.owner not in live)]
        if missing:
            await self._acquire(missing)
        return view

    async def _renew(self) -> dict[int, int]:
        held = dict(self.host.owned())
        if not held:
            return {}
        renewed = await self.journal.renew_leases(self.node_id, held, self.settings.lease_ttl)
        lost = [p for p, epoch in held.items() if renewed.get(p) != epoch]
        if lost:
            self.lost(lost, "another node took them over")
        return {p: epoch for p, epoch in renewed.items() if p in self.host.owned()}

    async def _release(self, surplus: dict[int, int]) -> None:
        self.host.stop_partitions(surplus)
        await self.journal.release_leases(self.node_id, surplus)
        self.metrics.lease_changes.labels("released").inc(len(surplus))
        _log.info("node %s released %d partitions for other nodes", self.node_id, len(surplus))
        await self.journal.wake([REBALANCE])

    async def _acquire(self, partitions: list[int]) -> None:
        acquired = await self.journal.acquire_leases(
            self.node_id, partitions, self.settings.lease_ttl,
            stale_after=self.settings.stale_after,
        )
        if acquired:
            self.metrics.lease_changes.labels("acquired").inc(len(acquired))
            _log.info("node %s acquired %d partitions", self.node_id, len(acquired))
            await self.host.partitions_acquired(acquired)

    def lost(self, partitions: Collection[int], why: str) -> None:
        """Partitions this node no longer owns: stop their actors now."""
        owned = self.host.owned()
        gone = [p for p in partitions if p in owned]
        if not gone:
            return
        self.host.stop_partitions(gone)
        self.metrics.lease_changes.labels("lost").inc(len(gone))
        _log.warning("node %s lost %d partitions (%s); their actors stopped",
                     self.node_id, len(gone), why)

    def _unreachable(self, exc: JournalUnavailableError) -> None:
        # Without a renewal for a whole TTL, the leases may be someone else's
        # already: stop writing for them (the fence would refuse it anyway).
        silent = self._clock.monotonic() - self._renewed_at
        _log.warning("node %s could not heartbeat (%s)", self.node_id, exc)
        if silent > self.settings.lease_ttl:
            self.lost(list(self.host.owned()), f"no lease renewed for {silent:.1f} s")
