"""Errors the runtime raises. Each message says what happened, with the ids, and what to do."""

from __future__ import annotations

from typing import Any

__all__ = [
    "RetinueError",
    "NonDeterminismError",
    "StepFailedError",
    "NonRetryableError",
    "WorkflowCancelledError",
    "OverloadedError",
    "UnknownWorkflowTypeError",
    "WorkflowFailedError",
    "PayloadDecodeError",
    "SimulatedCrash",
    "RunSuperseded",
]


class RetinueError(Exception):
    """Base class of the runtime's errors."""


class NonDeterminismError(RetinueError):
    """Replayed code asked for a different step than the journal holds."""

    def __init__(
        self, workflow_id: str, seq: int, expected: str, found: str, *, found_version: str = ""
    ) -> None:
        self.workflow_id = workflow_id
        self.seq = seq
        self.expected = expected  # what the code asked for
        self.found = found  # what the journal holds at seq
        # The application version whose code wrote the record found ("" if unknown).
        self.found_version = found_version
        written = f" (written by version {found_version!r})" if found_version else ""
        super().__init__(
            f"workflow {workflow_id!r} at seq {seq} asked for step {expected!r}, but the journal "
            f"holds {found!r} there{written}. If a deploy changed the workflow, put the change "
            "behind `await ctx.patched(name)` (or deploy the code that wrote it) and the "
            "parked workflow resumes; else check that your workflow is deterministic: the "
            "same input must ask for the same steps in the same order."
        )

    def mismatch(self, running_version: str) -> dict[str, Any]:
        """The mismatch as the journal keeps it on a parked workflow."""
        return {"seq": self.seq, "expected": self.expected, "found": self.found,
                "found_version": self.found_version, "running_version": running_version}


class StepFailedError(RetinueError):
    """A step failed for good: its retry policy is used up or it raised NonRetryableError."""

    def __init__(self, workflow_id: str, seq: int, name: str, error: str) -> None:
        self.workflow_id = workflow_id
        self.seq = seq
        self.step_name = name
        self.error = error
        super().__init__(
            f"step {name!r} (seq {seq}) of workflow {workflow_id!r} failed: {error}. "
            f"Fix the cause, then POST /workflows/{workflow_id}/retry to resume from this step."
        )


class PayloadDecodeError(RetinueError):
    """A value the journal holds (a step's output, a workflow's input) no longer
    decodes as the type the deployed code declares for it."""

    def __init__(self, workflow_id: str, where: str, type_name: str, detail: str) -> None:
        self.workflow_id = workflow_id
        self.where = where
        self.detail = detail
        super().__init__(
            f"workflow {workflow_id!r}: {where} was recorded in a shape that no longer decodes "
            f"as {type_name}: {detail}. A field's type changed, or a field without a default "
            "was added, while this workflow was in flight. Deploy code that reads the recorded "
            "shape (keep the old field and add a new one with a default), then "
            f"POST /workflows/{workflow_id}/retry."
        )


class NonRetryableError(RetinueError):
    """Raise from a step to fail it at once, without further attempts."""


class WorkflowCancelledError(RetinueError):
    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"workflow {workflow_id!r} was cancelled by an operator")


class OverloadedError(RetinueError):
    """A bound was reached; nothing was accepted. Retry after `retry_after` seconds."""

    def __init__(self, what: str, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(f"{what}; nothing was accepted, retry in {retry_after:g} s")


class UnknownWorkflowTypeError(RetinueError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"no workflow named {name!r} is registered (known: {', '.join(sorted(known))}); "
            "register it with Runtime.register before the runtime opens (recovery may "
            "need it at once)"
        )


class WorkflowFailedError(RetinueError):
    def __init__(self, workflow_id: str, error: str | None) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"workflow {workflow_id!r} failed: {error}")


class RunSuperseded(BaseException):  # noqa: N818 - control flow, like Suspended
    """Raised inside a workflow run whose append the journal refused: another run
    has moved the workflow on (or it has finished). A BaseException so no workflow
    code catches it on the way; the runtime reloads the workflow from the journal."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"another run has moved workflow {workflow_id!r} on")


class SimulatedCrash(BaseException):  # noqa: N818 - it is not an error, it stands for kill -9
    """Injected by tests to stand for a process death right after a journal write.

    A BaseException so no supervisor catches it: it tears the runtime down, as a
    kill would.
    """
