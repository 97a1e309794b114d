"""Errors raised by journals. Each names the ids involved and what to do."""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "JournalError",
    "JournalUnavailableError",
    "IntegrityError",
    "FencedError",
    "StaleRunError",
    "WorkflowNotFoundError",
    "InvalidTransitionError",
    "InvalidForkError",
    "EmbeddedPostgresError",
]


class JournalError(Exception):
    """Base class of every error the journal raises."""


class JournalUnavailableError(JournalError):
    """The database could not be reached, or did not answer in time. A write may or
    may not have landed (its answer may be what was lost): sending the very same
    batch again is safe, the journal finds it there and does nothing."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the journal database is unavailable ({detail}); the call may not have "
            "taken effect: retry it (with the same Idempotency-Key, for a command) once "
            "PostgreSQL answers again"
        )


class IntegrityError(JournalError):
    """A write broke a uniqueness or referential rule; nothing of its batch was written."""

    def __init__(self, constraint: str, detail: str) -> None:
        self.constraint = constraint
        super().__init__(f"integrity check {constraint!r} failed: {detail}")


class FencedError(JournalError):
    """The writer no longer owns the partition at the epoch it wrote with."""

    def __init__(self, partition: int, epoch: int | None) -> None:
        self.partition = partition
        self.epoch = epoch
        super().__init__(
            f"partition {partition} is no longer owned at epoch {epoch}; another node took it "
            "over, so this node must stop its actors for that partition"
        )


class StaleRunError(JournalError):
    """The journal refused a batch that would rewrite a workflow's history: another
    run holds the workflow, a step record it carries is behind the stored one, or
    the workflow has finished. Nothing of the batch was written."""

    def __init__(self, workflow_id: str, detail: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(
            f"{detail}. Workflow {workflow_id!r} has moved on without this run (another "
            "run holds it, or it has finished), so this run must stop and the workflow "
            "continue from what the journal holds"
        )


class WorkflowNotFoundError(JournalError):
    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"no workflow with id {workflow_id!r}; check the id")


class InvalidTransitionError(JournalError):
    def __init__(self, workflow_id: str, status: str, action: str) -> None:
        self.workflow_id = workflow_id
        self.status = status
        super().__init__(f"cannot {action} workflow {workflow_id!r}: its status is {status!r}")


class InvalidForkError(JournalError):
    """A fork asked for a seq the original cannot be forked at."""

    def __init__(self, workflow_id: str, from_seq: int, last_seq: int, *,
                 pruned_at: datetime | None = None) -> None:
        self.workflow_id = workflow_id
        self.from_seq = from_seq
        self.last_seq = last_seq
        self.pruned_at = pruned_at
        if pruned_at is not None:
            super().__init__(
                f"cannot fork workflow {workflow_id!r} from seq {from_seq}: it was pruned on "
                f"{pruned_at.isoformat(timespec='seconds')} (its steps are gone after the "
                "retention period), so only from seq 1 is possible: the fork runs it again "
                "from the start"
            )
            return
        super().__init__(
            f"cannot fork workflow {workflow_id!r} from seq {from_seq}: choose a seq from 1 "
            f"to {last_seq + 1} (its last step is seq {last_seq}; steps before the seq are "
            "kept, the rest run again)"
        )


class EmbeddedPostgresError(JournalError):
    def __init__(self, data_dir: str, detail: str) -> None:
        super().__init__(
            f"could not start the embedded PostgreSQL in {data_dir}: {detail}. "
            f"See the server log at {data_dir}/log, or set DATABASE_URL to use another server."
        )
