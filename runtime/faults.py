"""Fault injection for tests: journal wrappers, and one that 'kills the process'
after the k-th write.

Injected, not monkeypatched: wrap the real journal and hand the wrapper to the
Runtime. With no wrapper there is no cost at all.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import anyio
from anyio.abc import TaskStatus

from journal import (
    Batch,
    ClusterView,
    DeadLetter,
    Document,
    DomainEvent,
    Journal,
    NewWorkflow,
    Signal,
    StepRecord,
    WaitingStep,
    WorkflowPage,
    WorkflowRow,
)

from .errors import SimulatedCrash

__all__ = ["CrashingJournal", "DelegatingJournal"]


class DelegatingJournal(Journal):
    """A journal that passes every call of the `Journal` contract to `inner`, one
    method each, so mypy checks a subclass's overrides against the contract.
    Subclass it and override the calls to perturb (call `self.inner` inside);
    every call can be cancelled as the inner journal's can."""

    def __init__(self, inner: Journal) -> None:
        self.inner = inner

    # -- life cycle -------------------------------------------------------

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def ping(self) -> None:
        await self.inner.ping()

    # -- scale-out: nodes, partition leases, wake-ups ------------------------

    async def heartbeat(self, node_id: str, ttl: float, *, stale_after: float) -> ClusterView:
        return await self.inner.heartbeat(node_id, ttl, stale_after=stale_after)

    async def cluster_view(self, *, stale_after: float) -> ClusterView:
        return await self.inner.cluster_view(stale_after=stale_after)

    async def leave(self, node_id: str) -> None:
        await self.inner.leave(node_id)

    async def acquire_leases(
        self, node_id: str, partitions: Collection[int], ttl: float, *, stale_after: float
    ) -> dict[int, int]:
        return await self.inner.acquire_leases(node_id, partitions, ttl, stale_after=stale_after)

    async def renew_leases(
        self, node_id: str, held: Mapping[int, int], ttl: float
    ) -> dict[int, int]:
        return await self.inner.renew_leases(node_id, held, ttl)

    async def release_leases(self, node_id: str, held: Mapping[int, int]) -> None:
        await self.inner.release_leases(node_id, held)

    async def serve_node(
        self,
        node_id: str,
        on_wake: Callable[[str], None],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        await self.inner.serve_node(node_id, on_wake, task_status=task_status)

    async def wake(self, payloads: Sequence[str]) -> None:
        await self.inner.wake(payloads)

    async def runnable_workflows(
        self, partitions: Collection[int], signals_after: int
    ) -> tuple[list[WorkflowRow], int]:
        return await self.inner.runnable_workflows(partitions, signals_after)

    # -- the write path ---------------------------------------------------

    async def append(self, batch: Batch) -> None:
        await self.inner.append(batch)

    async def create_workflow(
        self, workflow: NewWorkflow, *, key_expired_before: datetime | None = None
    ) -> tuple[WorkflowRow, bool]:
        return await self.inner.create_workflow(workflow, key_expired_before=key_expired_before)

    # -- workflows --------------------------------------------------------

    async def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        return await self.inner.get_workflow(workflow_id)

    async def list_workflows(
        self,
        *,
        status: str | None = None,
        actor_key: str | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        created_since: datetime | None = None,
        created_before: datetime | None = None,
    ) -> WorkflowPage:
        return await self.inner.list_workflows(
            status=status, actor_key=actor_key, name=name, limit=limit, cursor=cursor,
            created_since=created_since, created_before=created_before,
        )

    async def count_workflows_by_status(self) -> dict[str, int]:
        return await self.inner.count_workflows_by_status()

    async def count_parked(self) -> dict[str, int]:
        return await self.inner.count_parked()

    async def children(self, workflow_id: str) -> list[WorkflowRow]:
        return await self.inner.children(workflow_id)

    async def unfinished_workflows(
        self, partitions: Collection[int] | None = None, *, waiting: bool = True
    ) -> list[WorkflowRow]:
        return await self.inner.unfinished_workflows(partitions, waiting=waiting)

    async def load_steps(self, workflow_id: str) -> list[StepRecord]:
        return await self.inner.load_steps(workflow_id)

    async def load_histories(self, workflow_ids: Sequence[str]) -> dict[str, list[StepRecord]]:
        return await self.inner.load_histories(workflow_ids)

    async def waiting_steps(self, partitions: Collection[int] | None = None) -> list[WaitingStep]:
        return await self.inner.waiting_steps(partitions)

    async def request_cancel(self, workflow_id: str) -> list[str]:
        return await self.inner.request_cancel(workflow_id)

    async def retry_workflow(self, workflow_id: str) -> None:
        await self.inner.retry_workflow(workflow_id)

    async def fork_workflow(
        self, workflow_id: str, from_seq: int, new_id: str, *,
        idempotency_key: str | None = None, request_hash: str | None = None, trace_id: str = "",
    ) -> tuple[WorkflowRow, bool]:
        return await self.inner.fork_workflow(
            workflow_id, from_seq, new_id, idempotency_key=idempotency_key,
            request_hash=request_hash, trace_id=trace_id,
        )

    async def forks(self, workflow_id: str) -> list[WorkflowRow]:
        return await self.inner.forks(workflow_id)

    async def workflow_signals(self, workflow_id: str) -> list[Signal]:
        return await self.inner.workflow_signals(workflow_id)

    # -- signals and workflow events ----------------------------------------

    async def send_signal(self, workflow_id: str, name: str, payload: Any) -> Signal:
        return await self.inner.send_signal(workflow_id, name, payload)

    async def next_signal(self, workflow_id: str, name: str) -> Signal | None:
        return await self.inner.next_signal(workflow_id, name)

    async def get_workflow_event(self, workflow_id: str, key: str) -> tuple[bool, Any]:
        return await self.inner.get_workflow_event(workflow_id, key)

    # -- domain events and documents ----------------------------------------

    async def read_events(self, actor_key: str, after_seq: int = 0) -> list[DomainEvent]:
        return await self.inner.read_events(actor_key, after_seq)

    async def read_all_events(self) -> list[DomainEvent]:
        return await self.inner.read_all_events()

    async def last_event_seq(self, actor_key: str) -> int:
        return await self.inner.last_event_seq(actor_key)

    async def get_document(self, kind: str, doc_id: str) -> Document | None:
        return await self.inner.get_document(kind, doc_id)

    async def find_document(self, kind: str, unique_key: str) -> Document | None:
        return await self.inner.find_document(kind, unique_key)

    async def list_documents(self, kind: str, owner: str | None = None) -> list[Document]:
        return await self.inner.list_documents(kind, owner)

    async def replace_documents(self, kind: str, documents: Sequence[Document]) -> None:
        await self.inner.replace_documents(kind, documents)

    async def rebuild_documents(
        self, kinds: Collection[str], fold: Callable[[list[DomainEvent]], Sequence[Document]]
    ) -> dict[str, int]:
        return await self.inner.rebuild_documents(kinds, fold)

    # -- dead letters ---------------------------------------------------------

    async def add_dead_letter(self, actor_key: str, message: Any, error: str) -> DeadLetter:
        return await self.inner.add_dead_letter(actor_key, message, error)

    async def list_dead_letters(self, *, include_redelivered: bool = False) -> list[DeadLetter]:
        return await self.inner.list_dead_letters(include_redelivered=include_redelivered)

    async def take_dead_letter(self, letter_id: int) -> DeadLetter | None:
        return await self.inner.take_dead_letter(letter_id)

    # -- retention --------------------------------------------------------------

    async def prune_finished(
        self, finished_before: datetime, *, leases: Mapping[int, int] | None = None,
        limit: int = 500,
    ) -> int:
        return await self.inner.prune_finished(finished_before, leases=leases, limit=limit)

    async def expire_idempotency_keys(
        self, issued_before: datetime, *, leases: Mapping[int, int] | None = None,
        limit: int = 500,
    ) -> int:
        return await self.inner.expire_idempotency_keys(issued_before, leases=leases, limit=limit)


class CrashingJournal(DelegatingJournal):
    """Delegates to `inner`; right after its `crash_after`-th write commits, raises
    SimulatedCrash (a BaseException), which tears the runtime down like kill -9.

    Writes are `append` and `create_workflow`. `writes` counts them, so a clean
    run tells how many crash points a workflow has.
    """

    def __init__(self, inner: Journal, crash_after: int | None = None) -> None:
        super().__init__(inner)
        self.crash_after = crash_after
        self.writes = 0

    def _wrote(self) -> None:
        self.writes += 1
        if self.crash_after is not None and self.writes == self.crash_after:
            raise SimulatedCrash(f"simulated crash after journal write {self.writes}")

    async def append(self, batch: Batch) -> None:
        await self.inner.append(batch)
        self._wrote()

    async def create_workflow(
        self, workflow: NewWorkflow, *, key_expired_before: datetime | None = None
    ) -> tuple[WorkflowRow, bool]:
        result = await self.inner.create_workflow(workflow, key_expired_before=key_expired_before)
        self._wrote()
        return result
