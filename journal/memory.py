"""MemoryJournal: the journal contract in one process's memory, for fast tests.

Same semantics as PostgresJournal (atomic batches, fencing, uniqueness), no
durability. A lock makes each call atomic with respect to the others, like a
transaction would. The class is composed of one part per protocol of the
contract, each in a module of its own over the shared state (`_mem_state`):
`_mem_cluster`, `_mem_writer`, `_mem_workflows`, `_mem_projections`,
`_mem_dead_letters` and `_mem_retention`.
"""

from __future__ import annotations

from ._mem_cluster import MemoryCluster
from ._mem_dead_letters import MemoryDeadLetters
from ._mem_projections import MemoryProjections
from ._mem_retention import MemoryRetention
from ._mem_workflows import MemoryWorkflows
from ._mem_writer import MemoryWriter
from .base import Journal

__all__ = ["MemoryJournal"]


class MemoryJournal(
    MemoryCluster,
    MemoryWriter,
    MemoryWorkflows,
    MemoryProjections,
    MemoryDeadLetters,
    MemoryRetention,
    Journal,
):
    """A journal that lives in memory; everything is lost with the process.

    `clock` (seconds, default time.time) stands for the database clock of leases,
    node heartbeats and row timestamps. Several Runtimes in one process may share one instance:
    it is their PostgreSQL, wake-ups included.
    """

    async def aclose(self) -> None:
        """Nothing to release: the state goes with the instance."""

    async def ping(self) -> None:
        """A journal in memory is always there."""
