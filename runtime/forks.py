"""Forking a workflow from a process that hosts no Runtime (the operator's CLI).

A server forks with `Runtime.fork`, which queues the fork on its actor when it
owns the partition. A process without a Runtime owns nothing: it accepts the
fork in the journal, as any node accepts a command, and wakes the partition's
owner, which runs it. A lost wake-up costs only time: the owner's catch-up
finds every pending workflow at its next heartbeat.
"""

from __future__ import annotations

from collections.abc import Callable

from journal import Journal, JournalUnavailableError, WorkflowRow

from .clock import new_id
from .cluster import wake_payload

__all__ = ["fork_workflow"]


async def fork_workflow(
    journal: Journal, workflow_id: str, from_seq: int, *, idempotency_key: str | None = None,
    request_hash: str | None = None, new_id: Callable[[], str] = new_id,
) -> tuple[WorkflowRow, bool]:
    """Accept a fork of `workflow_id` from `from_seq` in the journal (see
    `Journal.fork_workflow`) and wake its partition's owner; (row, created).
    Raises WorkflowNotFoundError, InvalidTransitionError (running or waiting:
    cancel it first), InvalidForkError (from_seq outside 1..last seq + 1).
    Cancellable; a cancelled call forked whole or not at all."""
    row, created = await journal.fork_workflow(
        workflow_id, from_seq, new_id(), idempotency_key=idempotency_key,
        request_hash=request_hash, trace_id=new_id(),
    )
    if row.status == "pending":
        try:
            await journal.wake([wake_payload(row.actor_key, row.id)])
        except JournalUnavailableError:
            pass  # the owner's catch-up finds it pending
    return row, created
