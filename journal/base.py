"""The journal contract, kept by `PostgresJournal` and `MemoryJournal` alike.

One write path: `append(batch)` writes a `Batch` atomically, only while the
writer's partition lease (partition, epoch) is current. Everything else is a
read or an operator action. The same contract tests run against both journals.

The contract is five narrow protocols, one concept each, and `Journal` is all of
them: `Cluster` (nodes, partition leases, wake-ups), `Writer` (the write path),
`Workflows` (workflows, steps, signals, operator actions), `Projections` (domain
events and documents), `DeadLetters` and `Retention` (pruning finished
workflows, expiring idempotency keys). Each backend keeps each protocol in a
module of its own (`_pg_*.py`, `_mem_*.py`). A collaborator that needs one
concept may ask for that protocol only. Every method is abstract, so a backend
that misses or misnames one fails mypy and cannot be instantiated.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

import anyio
from anyio.abc import TaskStatus

from .records import (
    Batch,
    DeadLetter,
    Document,
    DomainEvent,
    NewWorkflow,
    Signal,
    StepRecord,
    WorkflowPage,
    WorkflowRow,
)

__all__ = [
    "Cluster",
    "ClusterView",
    "DeadLetters",
    "Journal",
    "PartitionLease",
    "Projections",
    "Retention",
    "WaitingStep",
    "Workflows",
    "Writer",
]

import msgspec


class WaitingStep(msgspec.Struct, frozen=True, kw_only=True):
    """A durable timer: a wait step that started and has not finished, or a step
    backing off before its next attempt."""

    workflow_id: str
    seq: int
    actor_key: str
    fire_at: Any  # datetime


class PartitionLease(msgspec.Struct, frozen=True, kw_only=True):
    """One partition's lease row: its owner ("" when free), its epoch (the fencing
    token, bumped on every change of owner), and whether the lease has run out on
    the journal's clock."""

    partition: int
    owner: str
    epoch: int
    expired: bool


class ClusterView(msgspec.Struct, frozen=True, kw_only=True):
    """What a node sees at one heartbeat: the live nodes (sorted) and every lease."""

    live_nodes: tuple[str, ...]
    leases: tuple[PartitionLease, ...]


class Cluster(Protocol):
    """Nodes, partition leases and wake-ups: who may write which partition.

    A node is live while its heartbeat lease runs (`heartbeat`, every second or
    so) and it is attached (`serve_node` runs: with PostgreSQL, a session that
    holds an advisory lock, so a killed process is seen at once) or was heard
    from within `stale_after` seconds (so a session being re-established is not
    taken for a death). Leases live on the journal's clock, never the node's."""

    @abc.abstractmethod
    async def heartbeat(self, node_id: str, ttl: float, *, stale_after: float) -> ClusterView:
        """Keep `node_id` live for `ttl` more seconds; return the live nodes and
        every partition's lease, as of now."""

    @abc.abstractmethod
    async def cluster_view(self, *, stale_after: float) -> ClusterView:
        """The live nodes and every partition's lease, as of now, as `heartbeat`
        sees them but without heartbeating: what an operator looks at."""

    @abc.abstractmethod
    async def leave(self, node_id: str) -> None:
        """Forget `node_id` (a graceful shutdown): it is no longer live."""

    @abc.abstractmethod
    async def acquire_leases(
        self, node_id: str, partitions: Collection[int], ttl: float, *, stale_after: float
    ) -> dict[int, int]:
        """Take every partition of `partitions` that is free, expired, already
        `node_id`'s, or held by a node that is not live, for `ttl` seconds; bump
        each one's epoch. Return {partition: new epoch} of those taken."""

    @abc.abstractmethod
    async def renew_leases(
        self, node_id: str, held: Mapping[int, int], ttl: float
    ) -> dict[int, int]:
        """Extend by `ttl` seconds the leases `node_id` still holds at the epochs in
        `held` ({partition: epoch}); return those. A partition missing from the
        answer was lost: another node took it, and appends at that epoch fail."""

    @abc.abstractmethod
    async def release_leases(self, node_id: str, held: Mapping[int, int]) -> None:
        """Give up the leases `node_id` holds at the epochs in `held`: they are free
        at once for another node to acquire (with a new epoch)."""

    @abc.abstractmethod
    async def serve_node(
        self,
        node_id: str,
        on_wake: Callable[[str], None],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Attach `node_id` until cancelled, calling `on_wake(payload)` for every
        `wake` payload sent by any node (LISTEN/NOTIFY with PostgreSQL). Started
        once attached; a lost session is re-established in the background."""

    @abc.abstractmethod
    async def wake(self, payloads: Sequence[str]) -> None:
        """Send each payload to every attached node (at most once, best effort)."""


class Writer(Protocol):
    """The write path: every durable change a running workflow makes, and the
    acceptance of a command."""

    @abc.abstractmethod
    async def append(self, batch: Batch) -> None:
        """Write `batch` atomically. Raises FencedError if the lease is stale and
        IntegrityError if a document's unique_key or an event's (actor_key, seq)
        or a workflow's idempotency key collides; nothing of the batch is written then."""

    @abc.abstractmethod
    async def create_workflow(
        self, workflow: NewWorkflow, *, key_expired_before: datetime | None = None
    ) -> tuple[WorkflowRow, bool]:
        """Accept a command durably. Returns (row, created). If a workflow with the
        same id or the same idempotency key exists, returns it with created=False
        and writes nothing.

        A key first used (its workflow accepted) before `key_expired_before` has
        expired: in the same transaction its old workflow lets go of it and this
        one takes it, so of two requests racing with one expired key exactly one
        starts a workflow."""


class Workflows(Protocol):
    """Workflows and their steps, signals and published events: the reads of
    replay and recovery, and the operator's actions (cancel, retry)."""

    @abc.abstractmethod
    async def get_workflow(self, workflow_id: str) -> WorkflowRow | None: ...

    @abc.abstractmethod
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
        """Newest first. `cursor` is the `next_cursor` of the previous page;
        `created_since` (inclusive) and `created_before` (exclusive) bound the
        creation time."""

    @abc.abstractmethod
    async def count_workflows_by_status(self) -> dict[str, int]: ...

    @abc.abstractmethod
    async def count_parked(self) -> dict[str, int]:
        """How many workflows are parked, by workflow name (names with none left out)."""

    @abc.abstractmethod
    async def children(self, workflow_id: str) -> list[WorkflowRow]: ...

    @abc.abstractmethod
    async def unfinished_workflows(
        self, partitions: Collection[int] | None = None, *, waiting: bool = True
    ) -> list[WorkflowRow]:
        """Every workflow whose status is not finished (of `partitions` when
        given; without the waiting ones unless `waiting`), oldest first."""

    @abc.abstractmethod
    async def load_steps(self, workflow_id: str) -> list[StepRecord]:
        """The workflow's step records, by seq."""

    @abc.abstractmethod
    async def load_histories(self, workflow_ids: Sequence[str]) -> dict[str, list[StepRecord]]:
        """The step records of many workflows at once, by seq: {id: records},
        with an empty list for a workflow that has none (recovery's bulk read)."""

    @abc.abstractmethod
    async def waiting_steps(self, partitions: Collection[int] | None = None) -> list[WaitingStep]:
        """Every durable timer not yet fired (wait steps started with a fire_at,
        steps backing off), of the workflows of `partitions` when given."""

    @abc.abstractmethod
    async def request_cancel(self, workflow_id: str) -> list[str]:
        """Mark the workflow and its unfinished descendants cancel-requested;
        return their ids. Raises WorkflowNotFoundError, InvalidTransitionError
        if it has finished."""

    @abc.abstractmethod
    async def retry_workflow(self, workflow_id: str) -> None:
        """A failed or parked workflow goes back to pending (a parked one forgets
        its mismatch and runs again with the code deployed now); failed steps
        become 'retrying' so replay runs them again. Earlier completed steps stay.
        Raises WorkflowNotFoundError, InvalidTransitionError unless failed or parked."""

    @abc.abstractmethod
    async def fork_workflow(
        self, workflow_id: str, from_seq: int, new_id: str, *,
        idempotency_key: str | None = None, request_hash: str | None = None, trace_id: str = "",
    ) -> tuple[WorkflowRow, bool]:
        """Accept workflow `new_id` as a fork of `workflow_id`, in one transaction:
        the same name, input and actor key, pending, with copies of the original's
        completed steps of seq < `from_seq` (their recorded outputs, so they do
        not run again; a published event's value too) and `forked_from` /
        `forked_at_seq` set. Returns (row, created); with an `idempotency_key`
        already used, that workflow with created=False, and nothing is written.
        Raises WorkflowNotFoundError; InvalidTransitionError unless the original
        is finished or parked (FORKABLE_STATUSES); InvalidForkError unless
        1 <= from_seq <= its last seq + 1, and unless from_seq is 1 when the
        original was pruned (its steps are gone: a fork runs it again from the
        start, or not at all)."""

    @abc.abstractmethod
    async def forks(self, workflow_id: str) -> list[WorkflowRow]:
        """The workflows forked from `workflow_id`, oldest first."""

    @abc.abstractmethod
    async def workflow_signals(self, workflow_id: str) -> list[Signal]:
        """Every signal sent to the workflow, consumed or not, oldest first."""

    @abc.abstractmethod
    async def runnable_workflows(
        self, partitions: Collection[int], signals_after: int
    ) -> tuple[list[WorkflowRow], int]:
        """Unfinished workflows of `partitions` that may have work a lost wake-up
        did not announce: pending ones, cancel-requested ones, and those with an
        unconsumed signal newer than `signals_after`; and the newest signal id
        (pass it as `signals_after` next time). Oldest first."""

    # -- signals and workflow events ----------------------------------------

    @abc.abstractmethod
    async def send_signal(self, workflow_id: str, name: str, payload: Any) -> Signal:
        """Store a signal durably until a wait consumes it. Raises WorkflowNotFoundError."""

    @abc.abstractmethod
    async def next_signal(self, workflow_id: str, name: str) -> Signal | None:
        """The oldest unconsumed signal of that name, or None."""

    @abc.abstractmethod
    async def get_workflow_event(self, workflow_id: str, key: str) -> tuple[bool, Any]:
        """(found, value) of a published workflow event."""


class Projections(Protocol):
    """Domain events (each actor's log) and the documents projected from them."""

    @abc.abstractmethod
    async def read_events(self, actor_key: str, after_seq: int = 0) -> list[DomainEvent]: ...

    @abc.abstractmethod
    async def read_all_events(self) -> list[DomainEvent]:
        """Every actor's events, by (actor_key, seq): the input of a rebuild."""

    @abc.abstractmethod
    async def last_event_seq(self, actor_key: str) -> int: ...

    @abc.abstractmethod
    async def get_document(self, kind: str, doc_id: str) -> Document | None: ...

    @abc.abstractmethod
    async def find_document(self, kind: str, unique_key: str) -> Document | None: ...

    @abc.abstractmethod
    async def list_documents(self, kind: str, owner: str | None = None) -> list[Document]: ...

    @abc.abstractmethod
    async def replace_documents(self, kind: str, documents: Sequence[Document]) -> None:
        """Atomically replace every document of `kind` (projection rebuild)."""

    @abc.abstractmethod
    async def rebuild_documents(
        self, kinds: Collection[str], fold: Callable[[list[DomainEvent]], Sequence[Document]]
    ) -> dict[str, int]:
        """Replace every document of `kinds` with `fold(every event, by (actor_key,
        seq))` in ONE transaction that no write of documents interleaves with:
        writes under way are waited for and their events folded in, later ones
        wait until the swap is done (then their rows land on the rebuilt ones).
        So a rebuild never loses a row written while it runs, and servers may run
        meanwhile. `fold` is pure and must return only documents of `kinds`
        (ValueError otherwise). Returns how many documents of each kind."""


class DeadLetters(Protocol):
    """Messages that crashed their actor too often, kept for an operator."""

    @abc.abstractmethod
    async def add_dead_letter(self, actor_key: str, message: Any, error: str) -> DeadLetter: ...

    @abc.abstractmethod
    async def list_dead_letters(self, *, include_redelivered: bool = False) -> list[DeadLetter]: ...

    @abc.abstractmethod
    async def take_dead_letter(self, letter_id: int) -> DeadLetter | None:
        """Mark a dead letter redelivered and return it; None if unknown or taken."""


class Retention(Protocol):
    """What finished workflows no longer need: their steps, signals and published
    events (the event log and the documents are the business record and stay),
    and idempotency keys past their time to live. Each call is one short
    transaction over at most `limit` workflows; call again while it returns
    `limit`. Rows another transaction holds are skipped, not waited for.

    `leases` ({partition: epoch}) fences an owner: only partitions still held at
    those epochs (checked in the transaction, as an append is) are touched.
    None touches every partition: an operator's pass, safe while servers run."""

    @abc.abstractmethod
    async def prune_finished(
        self, finished_before: datetime, *, leases: Mapping[int, int] | None = None,
        limit: int = 500,
    ) -> int:
        """Prune up to `limit` workflows that finished (completed, failed,
        cancelled) before `finished_before`, are not pruned yet and hold no
        idempotency key: delete their steps, signals and workflow events and
        stamp their row's `pruned_at`. Returns how many were pruned."""

    @abc.abstractmethod
    async def expire_idempotency_keys(
        self, issued_before: datetime, *, leases: Mapping[int, int] | None = None,
        limit: int = 500,
    ) -> int:
        """Free the idempotency keys of up to `limit` workflows accepted before
        `issued_before` (the key is cleared from the row; the row stays).
        Returns how many were freed."""


class Journal(Cluster, Writer, Workflows, Projections, DeadLetters, Retention, Protocol):
    """Durable state of the runtime: the whole contract. Every method may be
    cancelled; a cancelled append either committed whole or not at all."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections. Idempotent."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return if the database answers; raise JournalUnavailableError if not."""


def count_by_kind(kinds: Sequence[str], documents: Sequence[Document]) -> dict[str, int]:
    """{kind: how many of `documents`}; ValueError for a document of another kind."""
    counts = dict.fromkeys(kinds, 0)
    for doc in documents:
        if doc.kind not in counts:
            raise ValueError(f"the fold returned a {doc.kind!r} document; a rebuild of "
                             f"{', '.join(kinds)} may only replace those kinds")
        counts[doc.kind] += 1
    return counts
