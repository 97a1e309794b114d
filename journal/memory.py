"""MemoryJournal: the journal contract in one process's memory, for fast tests.

Same semantics as PostgresJournal (atomic batches, fencing, uniqueness), no
durability. A lock makes each call atomic with respect to the others, like a
transaction would.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import anyio
import msgspec
from anyio.abc import TaskStatus

from .base import ClusterView, Journal, PartitionLease, WaitingStep
from .errors import (
    FencedError,
    IntegrityError,
    InvalidTransitionError,
    StaleRunError,
    WorkflowNotFoundError,
)
from .records import (
    FINISHED_STATUSES,
    PARTITION_COUNT,
    Batch,
    DeadLetter,
    Document,
    DomainEvent,
    NewWorkflow,
    RunFence,
    Signal,
    StepRecord,
    WorkflowPage,
    WorkflowRow,
)

__all__ = ["MemoryJournal"]


class _Lease(NamedTuple):
    owner: str
    epoch: int
    expires_at: float | None  # on the journal's clock; None: never leased


class _Node(NamedTuple):
    heartbeat_at: float
    expires_at: float


# What an append may set a workflow's status to (pending only by an operator's retry).
_APPENDABLE_STATUSES: Final = frozenset(
    {"running", "waiting", "parked", "completed", "failed", "cancelled"}
)


def _check_run(run: RunFence | None, row: WorkflowRow | None) -> None:
    """The run fence: `run` holds the workflow, or may claim it from `previous`."""
    if run is None:
        return
    if row is not None and (row.run_id == run.run_id or (
            row.run_id == run.previous and row.status not in FINISHED_STATUSES)):
        return
    holder = "none" if row is None or row.run_id is None else row.run_id
    status = "missing" if row is None else row.status
    raise StaleRunError(
        run.workflow_id,
        f"workflow {run.workflow_id} is held by another run ({holder}; status {status})",
    )


def _is_timer(step: StepRecord) -> bool:
    """A durable timer: a wait not yet ended, or a step backing off."""
    return (step.kind == "wait" and step.status == "started") or step.status == "backoff"


def _moves_forward(stored: StepRecord, new: StepRecord, run_id: str | None) -> bool:
    """The step guard: may `new` (written by `run_id`) replace `stored`?"""
    if stored.run_id == run_id and (stored.status, stored.attempt) == (new.status, new.attempt):
        return True  # the same write again
    if stored.status in ("started", "retrying", "backoff") and new.attempt > stored.attempt:
        return True
    return (
        stored.status == "started" and new.attempt == stored.attempt
        and new.status in ("completed", "failed", "backoff")
        and (stored.run_id == run_id or stored.kind == "wait")
    )


class MemoryJournal(Journal):
    """A journal that lives in memory; everything is lost with the process.

    `clock` (seconds, default time.time) stands for the database clock of leases,
    node heartbeats and row timestamps. Several Runtimes in one process may share one instance:
    it is their PostgreSQL, wake-ups included.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, guards: bool = True) -> None:
        self._lock = anyio.Lock()
        self._clock = clock
        # Test-only switch: False drops the run fence and the step and status
        # guards (to show that the simulation catches what they stop).
        self._guards = guards
        self._leases = {p: _Lease("", 0, None) for p in range(PARTITION_COUNT)}
        self._nodes: dict[str, _Node] = {}
        self._attached: dict[str, list[Callable[[str], None]]] = {}
        self._workflows: dict[str, WorkflowRow] = {}
        self._by_idempotency_key: dict[str, str] = {}
        self._positions = itertools.count(1)
        self._steps: dict[str, dict[int, StepRecord]] = {}
        self._events: dict[str, dict[int, DomainEvent]] = {}
        self._documents: dict[tuple[str, str], Document] = {}
        self._workflow_events: dict[tuple[str, str], Any] = {}
        self._signals: dict[int, Signal] = {}
        self._signal_ids = itertools.count(1)
        self._dead_letters: dict[int, DeadLetter] = {}
        self._dead_letter_ids = itertools.count(1)

    async def aclose(self) -> None:
        """Nothing to release: the state goes with the instance."""

    async def ping(self) -> None:
        """A journal in memory is always there."""

    def _now(self) -> datetime:
        """Wall time on the journal's clock (PostgreSQL's now())."""
        return datetime.fromtimestamp(self._clock(), UTC)

    # -- scale-out: nodes, partition leases, wake-ups ------------------------

    async def heartbeat(self, node_id: str, ttl: float, *, stale_after: float) -> ClusterView:
        async with self._lock:
            now = self._clock()
            self._nodes[node_id] = _Node(now, now + ttl)
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
    def _expired(lease: _Lease, now: float) -> bool:
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
                    self._leases[partition] = _Lease(node_id, lease.epoch + 1, now + ttl)
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
                self._leases[partition] = _Lease("", self._leases[partition].epoch, now)

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

    async def runnable_workflows(
        self, partitions: Collection[int], signals_after: int
    ) -> tuple[list[WorkflowRow], int]:
        wanted = set(partitions)
        newest = max(self._signals, default=0)
        signalled = {s.workflow_id for s in self._signals.values()
                     if not s.consumed and signals_after < s.id}
        found = [
            r for r in self._workflows.values()
            if r.partition in wanted and r.status not in FINISHED_STATUSES
            and (r.status == "pending" or r.cancel_requested or r.id in signalled)
        ]
        return sorted(found, key=lambda r: r.position), newest

    # -- the write path ---------------------------------------------------

    async def append(self, batch: Batch) -> None:
        async with self._lock:
            self._check_lease(batch.partition, batch.epoch)
            if self._guards:
                _check_run(batch.run, self._workflows.get(batch.run.workflow_id)
                           if batch.run is not None else None)
                self._check_steps(batch)
                self._check_statuses(batch)
            self._check_integrity(batch)
            self._apply(batch)

    def _check_lease(self, partition: int, epoch: int | None) -> None:
        if epoch is not None and self._leases[partition].epoch != epoch:
            raise FencedError(partition, epoch)

    def _check_steps(self, batch: Batch) -> None:
        run_id = batch.run.run_id if batch.run is not None else None
        for step in batch.steps:
            stored = self._steps.get(step.workflow_id, {}).get(step.seq)
            if stored is not None and not _moves_forward(stored, step, run_id):
                raise StaleRunError(
                    step.workflow_id,
                    f"step {step.seq} of workflow {step.workflow_id} is {stored.status} "
                    f"(attempt {stored.attempt}): refusing {step.status} (attempt {step.attempt})",
                )

    def _check_statuses(self, batch: Batch) -> None:
        created = {wf.id for wf in batch.workflows}
        for change in batch.statuses:
            if change.workflow_id in created and change.workflow_id not in self._workflows:
                continue  # pending until this batch: any move is legal
            row = self._require(change.workflow_id)
            if change.status not in _APPENDABLE_STATUSES or (
                row.status in FINISHED_STATUSES and row.status != change.status
            ):
                raise StaleRunError(
                    row.id, f"workflow {row.id} is {row.status}: it cannot move to {change.status}"
                )

    def _is_stored(self, event: DomainEvent) -> bool:
        """The very event is in the log already (a batch appended again)."""
        stored = self._events.get(event.actor_key, {}).get(event.seq)
        return stored is not None and (stored.workflow_id, stored.type, stored.payload) == (
            event.workflow_id, event.type, event.payload
        )

    def _check_integrity(self, batch: Batch) -> None:
        appended: set[tuple[str, int]] = set()
        for event in batch.events:
            key = (event.actor_key, event.seq)
            if self._is_stored(event):
                continue
            if key in appended or event.seq in self._events.get(event.actor_key, {}):
                raise IntegrityError(
                    "events_pkey", f"event {event.seq} of {event.actor_key!r} already exists"
                )
            appended.add(key)
        claimed: dict[tuple[str, str], str] = {}
        for doc in batch.documents:
            if doc.unique_key is None:
                continue
            holder = claimed.get((doc.kind, doc.unique_key)) or self._unique_holder(doc)
            if holder is not None and holder != doc.id:
                raise IntegrityError(
                    "documents_unique_key",
                    f"{doc.kind} {doc.unique_key!r} already belongs to {holder!r}",
                )
            claimed[(doc.kind, doc.unique_key)] = doc.id
        for wf in batch.workflows:
            self._check_new_workflow(wf)
        created = {wf.id for wf in batch.workflows}
        for change in batch.statuses:
            if change.workflow_id not in created:
                self._require(change.workflow_id)

    def _unique_holder(self, doc: Document) -> str | None:
        for (kind, doc_id), existing in self._documents.items():
            if kind == doc.kind and existing.unique_key == doc.unique_key:
                return doc_id
        return None

    def _check_new_workflow(self, wf: NewWorkflow) -> None:
        key = wf.idempotency_key
        if key is not None and self._by_idempotency_key.get(key, wf.id) != wf.id:
            raise IntegrityError("workflows_idempotency_key", f"idempotency key {key!r} is taken")

    def _apply(self, batch: Batch) -> None:
        now = self._now()
        for wf in batch.workflows:
            self._insert_workflow(wf, now)
        run_id = batch.run.run_id if batch.run is not None else None
        if batch.run is not None:
            row = self._workflows[batch.run.workflow_id]
            self._workflows[row.id] = msgspec.structs.replace(row, run_id=run_id)
        for step in batch.steps:
            self._steps.setdefault(step.workflow_id, {})[step.seq] = msgspec.structs.replace(
                step, run_id=run_id
            )
        for change in batch.statuses:
            row = self._require(change.workflow_id)
            if row.status in FINISHED_STATUSES and self._guards:
                continue  # the same end again: a no-op
            self._workflows[row.id] = msgspec.structs.replace(
                row, status=change.status, result=change.result, error=change.error, updated_at=now
            )
        for event in batch.events:
            if self._is_stored(event):
                continue
            stamped = msgspec.structs.replace(event, created_at=now)
            self._events.setdefault(event.actor_key, {})[event.seq] = stamped
        for doc in batch.documents:
            self._documents[(doc.kind, doc.id)] = msgspec.structs.replace(doc, updated_at=now)
        for wf_event in batch.workflow_events:  # the first value stays
            self._workflow_events.setdefault((wf_event.workflow_id, wf_event.key), wf_event.value)
        for signal_id in batch.consumed_signals:
            if signal_id in self._signals:
                self._signals[signal_id] = msgspec.structs.replace(
                    self._signals[signal_id], consumed=True
                )

    def _insert_workflow(self, wf: NewWorkflow, now: datetime) -> WorkflowRow:
        if wf.id in self._workflows:
            return self._workflows[wf.id]
        row = WorkflowRow(
            id=wf.id,
            name=wf.name,
            actor_key=wf.actor_key,
            partition=wf.partition,
            status="pending",
            input=wf.input,
            idempotency_key=wf.idempotency_key,
            request_hash=wf.request_hash,
            parent_id=wf.parent_id,
            trace_id=wf.trace_id,
            created_at=now,
            updated_at=now,
            position=next(self._positions),
        )
        self._workflows[wf.id] = row
        if wf.idempotency_key is not None:
            self._by_idempotency_key[wf.idempotency_key] = wf.id
        return row

    async def create_workflow(self, workflow: NewWorkflow) -> tuple[WorkflowRow, bool]:
        async with self._lock:
            existing = self._workflows.get(workflow.id)
            if existing is None and workflow.idempotency_key is not None:
                existing_id = self._by_idempotency_key.get(workflow.idempotency_key)
                existing = self._workflows.get(existing_id) if existing_id else None
            if existing is not None:
                return existing, False
            return self._insert_workflow(workflow, self._now()), True

    # -- workflows --------------------------------------------------------

    def _require(self, workflow_id: str) -> WorkflowRow:
        row = self._workflows.get(workflow_id)
        if row is None:
            raise WorkflowNotFoundError(workflow_id)
        return row

    async def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        return self._workflows.get(workflow_id)

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
        before = int(cursor) if cursor else None
        rows = sorted(self._workflows.values(), key=lambda r: r.position, reverse=True)
        matching = [
            r
            for r in rows
            if (status is None or r.status == status)
            and (actor_key is None or r.actor_key == actor_key)
            and (name is None or r.name == name)
            and (before is None or r.position < before)
            and (created_since is None or r.created_at >= created_since)
            and (created_before is None or r.created_at < created_before)
        ]
        page = matching[:limit]
        more = len(matching) > limit
        return WorkflowPage(
            workflows=page, next_cursor=str(page[-1].position) if more and page else None
        )

    async def count_workflows_by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self._workflows.values():
            counts[row.status] = counts.get(row.status, 0) + 1
        return counts

    async def children(self, workflow_id: str) -> list[WorkflowRow]:
        found = [r for r in self._workflows.values() if r.parent_id == workflow_id]
        return sorted(found, key=lambda r: r.position)

    async def unfinished_workflows(
        self, partitions: Collection[int] | None = None, *, waiting: bool = True
    ) -> list[WorkflowRow]:
        wanted = None if partitions is None else set(partitions)
        found = [r for r in self._workflows.values() if r.status not in FINISHED_STATUSES
                 and (waiting or r.status != "waiting")
                 and (wanted is None or r.partition in wanted)]
        return sorted(found, key=lambda r: r.position)

    async def load_steps(self, workflow_id: str) -> list[StepRecord]:
        steps = self._steps.get(workflow_id, {})
        return [steps[seq] for seq in sorted(steps)]

    async def load_histories(self, workflow_ids: Sequence[str]) -> dict[str, list[StepRecord]]:
        return {workflow_id: await self.load_steps(workflow_id) for workflow_id in workflow_ids}

    async def waiting_steps(self, partitions: Collection[int] | None = None) -> list[WaitingStep]:
        wanted = None if partitions is None else set(partitions)
        waiting = []
        for workflow_id, steps in self._steps.items():
            row = self._workflows[workflow_id]
            if wanted is not None and row.partition not in wanted:
                continue
            for step in steps.values():
                if step.fire_at is not None and _is_timer(step):
                    waiting.append(
                        WaitingStep(
                            workflow_id=workflow_id,
                            seq=step.seq,
                            actor_key=row.actor_key,
                            fire_at=step.fire_at,
                        )
                    )
        return sorted(waiting, key=lambda w: w.fire_at)

    async def request_cancel(self, workflow_id: str) -> list[str]:
        async with self._lock:
            row = self._require(workflow_id)
            if row.status in FINISHED_STATUSES:
                raise InvalidTransitionError(workflow_id, row.status, "cancel")
            marked = []
            pending = [row]
            while pending:
                current = pending.pop()
                if current.status in FINISHED_STATUSES:
                    continue
                self._workflows[current.id] = msgspec.structs.replace(
                    current, cancel_requested=True, updated_at=self._now()
                )
                marked.append(current.id)
                pending.extend(r for r in self._workflows.values() if r.parent_id == current.id)
            return marked

    async def retry_workflow(self, workflow_id: str) -> None:
        async with self._lock:
            row = self._require(workflow_id)
            if row.status != "failed":
                raise InvalidTransitionError(workflow_id, row.status, "retry")
            steps = self._steps.get(workflow_id, {})
            for seq, step in steps.items():
                if step.status == "failed":
                    steps[seq] = msgspec.structs.replace(step, status="retrying")
            self._workflows[workflow_id] = msgspec.structs.replace(
                row, status="pending", error=None, updated_at=self._now()
            )

    # -- signals and workflow events ----------------------------------------

    async def send_signal(self, workflow_id: str, name: str, payload: Any) -> Signal:
        async with self._lock:
            self._require(workflow_id)
            signal = Signal(
                id=next(self._signal_ids),
                workflow_id=workflow_id,
                name=name,
                payload=payload,
                created_at=self._now(),
            )
            self._signals[signal.id] = signal
            return signal

    async def next_signal(self, workflow_id: str, name: str) -> Signal | None:
        for signal in self._signals.values():  # dicts keep insertion (id) order
            if signal.workflow_id == workflow_id and signal.name == name and not signal.consumed:
                return signal
        return None

    async def get_workflow_event(self, workflow_id: str, key: str) -> tuple[bool, Any]:
        if (workflow_id, key) in self._workflow_events:
            return True, self._workflow_events[(workflow_id, key)]
        return False, None

    # -- domain events and documents ----------------------------------------

    async def read_events(self, actor_key: str, after_seq: int = 0) -> list[DomainEvent]:
        events = self._events.get(actor_key, {})
        return [events[seq] for seq in sorted(events) if seq > after_seq]

    async def read_all_events(self) -> list[DomainEvent]:
        return [
            event
            for actor_key in sorted(self._events)
            for event in await self.read_events(actor_key)
        ]

    async def last_event_seq(self, actor_key: str) -> int:
        return max(self._events.get(actor_key, {}), default=0)

    async def get_document(self, kind: str, doc_id: str) -> Document | None:
        return self._documents.get((kind, doc_id))

    async def find_document(self, kind: str, unique_key: str) -> Document | None:
        for (doc_kind, _), doc in self._documents.items():
            if doc_kind == kind and doc.unique_key == unique_key:
                return doc
        return None

    async def list_documents(self, kind: str, owner: str | None = None) -> list[Document]:
        found = [
            doc
            for (doc_kind, _), doc in self._documents.items()
            if doc_kind == kind and (owner is None or doc.owner == owner)
        ]
        return sorted(found, key=lambda d: d.id)

    async def replace_documents(self, kind: str, documents: Sequence[Document]) -> None:
        async with self._lock:
            self._check_unique_keys(kind, documents)
            for key in [k for k in self._documents if k[0] == kind]:
                del self._documents[key]
            now = self._now()
            for doc in documents:
                self._documents[(kind, doc.id)] = msgspec.structs.replace(doc, updated_at=now)

    def _check_unique_keys(self, kind: str, documents: Sequence[Document]) -> None:
        holders: dict[str, str] = {}
        for doc in documents:
            if doc.unique_key is None:
                continue
            holder = holders.setdefault(doc.unique_key, doc.id)
            if holder != doc.id:
                raise IntegrityError(
                    "documents_unique_key",
                    f"{kind} {doc.unique_key!r} already belongs to {holder!r}",
                )

    # -- dead letters ---------------------------------------------------------

    async def add_dead_letter(self, actor_key: str, message: Any, error: str) -> DeadLetter:
        letter = DeadLetter(
            id=next(self._dead_letter_ids),
            actor_key=actor_key,
            message=message,
            error=error,
            created_at=self._now(),
        )
        self._dead_letters[letter.id] = letter
        return letter

    async def list_dead_letters(self, *, include_redelivered: bool = False) -> list[DeadLetter]:
        return [
            letter
            for letter in self._dead_letters.values()
            if include_redelivered or letter.redelivered_at is None
        ]

    async def take_dead_letter(self, letter_id: int) -> DeadLetter | None:
        letter = self._dead_letters.get(letter_id)
        if letter is None or letter.redelivered_at is not None:
            return None
        taken = msgspec.structs.replace(letter, redelivered_at=self._now())
        self._dead_letters[letter_id] = taken
        return taken
