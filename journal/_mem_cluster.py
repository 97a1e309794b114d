"""MemoryJournal's nodes, partition leases and wake-ups (the `Cluster` protocol).
An attached node is a callback registered for as long as `serve_node` runs."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import anyio
from anyio.abc import TaskStatus

from ._mem_state import Lease, MemoryState, Node
from .base import Cluster, ClusterView, PartitionLease

__all__ = ["MemoryCluster"]


class MemoryCluster(MemoryState, Cluster):
    """Nodes, leases and wake-ups in memory."""

    async def heartbeat(self, node_id: str, ttl: float, *, stale_after: float) -> ClusterView:
        async with self._lock:
            now = self._clock()
            self._nodes[node_id] = Node(now, now + ttl)
            return self._view(now, stale_after)

    async def cluster_view(self, *, stale_after: float) -> ClusterView:
        async with self._lock:
            return self._view(self._clock(), stale_after)

    def _view(self, now: float, stale_after: float) -> ClusterView:
        leases = tuple(
            PartitionLease(partition=p, owner=lease.owner, epoch=lease.epoch,
                           expired=self._expired(lease, now))
            for p, lease in sorted(self._leases.items())
        )
        return ClusterView(live_nodes=tuple(sorted(self._live(now, stale_after))),
                           leases=leases)

    def _live(self, now: float, stale_after: float) -> set[str]:
        return {
            node_id for node_id, node in self._nodes.items()
            if node.expires_at > now
            and (node_id in self._attached or node.heartbeat_at > now - stale_after)
        }

    @staticmethod
    def _expired(lease: Lease, now: float) -> bool:
        return lease.expires_at is None or lease.expires_at <= now

    async def leave(self, node_id: str) -> None:
        async with self._lock:
            self._nodes.pop(node_id, None)

    async def acquire_leases(
        self, node_id: str, partitions: Collection[int], ttl: float, *, stale_after: float
    ) -> dict[int, int]:
        async with self._lock:
            now = self._clock()
            live = self._live(now, stale_after)
            taken = {}
            for partition in sorted(set(partitions)):
                lease = self._leases[partition]
                if lease.owner in ("", node_id) or self._expired(lease, now) \
                        or lease.owner not in live:
                    self._leases[partition] = Lease(node_id, lease.epoch + 1, now + ttl)
                    taken[partition] = lease.epoch + 1
            return taken

    def _held(self, node_id: str, held: Mapping[int, int]) -> list[int]:
        return sorted(p for p, epoch in held.items()
                      if self._leases[p].owner == node_id and self._leases[p].epoch == epoch)

    async def renew_leases(
        self, node_id: str, held: Mapping[int, int], ttl: float
    ) -> dict[int, int]:
        async with self._lock:
            expires_at = self._clock() + ttl
            renewed = {}
            for partition in self._held(node_id, held):
                self._leases[partition] = self._leases[partition]._replace(expires_at=expires_at)
                renewed[partition] = self._leases[partition].epoch
            return renewed

    async def release_leases(self, node_id: str, held: Mapping[int, int]) -> None:
        async with self._lock:
            now = self._clock()
            for partition in self._held(node_id, held):
                self._leases[partition] = Lease("", self._leases[partition].epoch, now)

    async def serve_node(
        self,
        node_id: str,
        on_wake: Callable[[str], None],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        callbacks = self._attached.setdefault(node_id, [])
        callbacks.append(on_wake)
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            callbacks.remove(on_wake)
            if not callbacks:
                del self._attached[node_id]

    async def wake(self, payloads: Sequence[str]) -> None:
        for callbacks in list(self._attached.values()):
            for on_wake in list(callbacks):
                for payload in payloads:
                    on_wake(payload)
