"""The operator's commands (cancel, retry, redeliver; fork, in forks.py): one code
path for a node and for a tool that hosts nothing.

Each command writes what it means to the journal, then asks for a Run of each
workflow it reaches. Where that Run goes is the `Router`'s business: a Runtime
queues it on its actor if it owns the partition, else wakes the owner (see
Placement.deliver); an `Operator` (the CLI) owns nothing, so it always wakes the
owner, with the very wake-up another node would send. A wake-up that is lost
costs a poll, never the command: the owner's catch-up finds cancel-requested
and pending workflows in the journal (Recovery.catch_up), and a node that starts
recovers every unfinished one.
"""

from __future__ import annotations

from typing import Protocol

from journal import DeadLetter, Journal, WorkflowRow

from .cluster import wake_payload
from .forks import fork_workflow

__all__ = ["Operator", "Router", "cancel", "redeliver", "retry"]


class Router(Protocol):
    """Where the Run a command asks for goes, and what a node forgets or marks
    on the way (a tool that hosts nothing does neither)."""

    def owns(self, actor_key: str) -> bool: ...

    def drop_preloaded(self, workflow_id: str) -> None:
        """What was read of the workflow (by recovery) is stale now."""

    def mark_cancelling(self, workflow_id: str) -> None:
        """The workflow, run here, stops at its next step boundary."""

    def deliver_command(self, actor_key: str, workflow_id: str) -> None:
        """Queue a Run of the workflow here, or wake its partition's owner."""


async def cancel(journal: Journal, router: Router, workflow_id: str) -> list[str]:
    """Mark the workflow and its unfinished descendants cancel-requested, and run
    each so it stops at its next step boundary; their ids. Raises
    WorkflowNotFoundError, InvalidTransitionError if it has finished."""
    ids = await journal.request_cancel(workflow_id)
    for cancelled_id in ids:
        router.drop_preloaded(cancelled_id)
    for cancelled_id in ids:
        row = await journal.get_workflow(cancelled_id)
        if row is not None:
            if router.owns(row.actor_key):  # else its owner reads the flag
                router.mark_cancelling(cancelled_id)
            router.deliver_command(row.actor_key, cancelled_id)
    return ids


async def retry(journal: Journal, router: Router, workflow_id: str) -> None:
    """Put a failed or parked workflow back to pending (its failed steps run again,
    earlier ones are not; a parked one replays with the code deployed now) and run
    it. Raises WorkflowNotFoundError, InvalidTransitionError unless failed or parked."""
    await journal.retry_workflow(workflow_id)
    router.drop_preloaded(workflow_id)
    row = await journal.get_workflow(workflow_id)
    assert row is not None  # workflows are never deleted while retried
    router.deliver_command(row.actor_key, workflow_id)


async def redeliver(journal: Journal, router: Router, letter_id: int) -> DeadLetter | None:
    """Take a dead letter and send its message to its actor again (its workflow,
    if it failed, is retried); None if unknown or already taken."""
    letter = await journal.take_dead_letter(letter_id)
    if letter is None:
        return None
    workflow_id = letter.message["workflow_id"]
    row = await journal.get_workflow(workflow_id)
    if row is not None and row.status == "failed":
        await journal.retry_workflow(workflow_id)
    router.deliver_command(letter.actor_key, workflow_id)
    return letter


class _Remote:
    """The Router of a process that owns no partition: every Run is a wake-up for
    the owner, collected here and sent by `send`."""

    def __init__(self) -> None:
        self.wakes: list[str] = []

    def owns(self, actor_key: str) -> bool:
        return False

    def drop_preloaded(self, workflow_id: str) -> None:
        pass  # nothing preloaded here

    def mark_cancelling(self, workflow_id: str) -> None:
        pass  # never called: this router owns nothing

    def deliver_command(self, actor_key: str, workflow_id: str) -> None:
        # watched=False: nobody here waits for news of it.
        self.wakes.append(wake_payload(actor_key, workflow_id, watched=False))

    async def send(self, journal: Journal) -> None:
        await journal.wake(self.wakes)


class Operator:
    """The operator's commands from a process that hosts nothing (the CLI on the
    database): the same journal writes as a Runtime's, then the same wake-ups a
    node that does not own the partition sends. Each method may be cancelled;
    the journal write is then done or not, as with any journal call."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    async def cancel(self, workflow_id: str) -> list[str]:
        """See `cancel`; the ids of the workflows cancel-requested."""
        router = _Remote()
        ids = await cancel(self._journal, router, workflow_id)
        await router.send(self._journal)
        return ids

    async def retry(self, workflow_id: str) -> None:
        """See `retry`."""
        router = _Remote()
        await retry(self._journal, router, workflow_id)
        await router.send(self._journal)

    async def redeliver(self, letter_id: int) -> DeadLetter | None:
        """See `redeliver`."""
        router = _Remote()
        letter = await redeliver(self._journal, router, letter_id)
        await router.send(self._journal)
        return letter

    async def fork(
        self, workflow_id: str, from_seq: int, *, idempotency_key: str | None = None
    ) -> tuple[WorkflowRow, bool]:
        """See `runtime.fork_workflow`: the fork is accepted in the journal and its
        partition's owner woken; (row, created)."""
        return await fork_workflow(self._journal, workflow_id, from_seq,
                                   idempotency_key=idempotency_key)
