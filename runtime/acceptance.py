"""Eager start: a new workflow's acceptance rides with its run's first commit.

A workflow started on this node with a fresh id (no id or idempotency key from the
caller, so no other start can name it), on a partition this node owns, for an actor
with nothing to do, gets no commit of its own to accept it. Its Run is queued at once
with the row (a new workflow has no history) and an `Acceptance`, and the run's first
commit inserts the workflow along with its claim, `running` and first record
(`retinue_append` inserts before it claims). `start_workflow` returns when that commit
lands, so accepted still means durable; and nothing of a workflow leaves the node
before a commit (what deferred records already rely on), so a run that never lands
did nothing anyone can see. One commit fewer per workflow: 6 -> 5 for four effect
steps, and the invite's 200 waits for one commit instead of two.

The caller waits `ACCEPTANCE_PATIENCE` at most. A run that has not landed by then
(code slow before its first commit, or the database away) leaves the caller to
accept the workflow with a commit of its own, as without eager start, with the same
answers (a 503 if the database is away: it may still start); the run's first commit
then claims the row that commit inserted. A Run that ends, or leaves this node,
without landing it (its partition moved, the runtime stopped) abandons it: the caller
accepts it the plain way at once (an insert that is a no-op if a cancelled commit
landed after all).

A crash before the first commit is retried with the row kept (nothing of the
workflow is journaled: `Run.for_retry`), and a run that is dead-lettered lands the
acceptance first, so that the workflow exists to be failed.
"""

from __future__ import annotations

from typing import Final, Literal

import anyio

from journal import NewWorkflow

__all__ = ["ACCEPTANCE_PATIENCE", "Acceptance"]

# How long a caller waits for the run's first commit before it accepts the
# workflow itself (one commit more, the plain path's). Far above a commit's
# time under load, so that only slow code or an outage reaches it.
ACCEPTANCE_PATIENCE: Final = 0.1


class Acceptance:
    """A new workflow waiting for its run's first commit to accept it; the caller
    of `start_workflow` waits on `answer`. The first answer is the caller's."""

    __slots__ = ("workflow", "landed", "_answered", "_outcome")

    def __init__(self, workflow: NewWorkflow) -> None:
        self.workflow = workflow
        self.landed = False
        self._answered = anyio.Event()
        self._outcome: Literal["landed", "abandoned"] | None = None

    def riding(self) -> tuple[NewWorkflow, ...]:
        """What the next commit must insert: the workflow, until it has landed."""
        return () if self.landed else (self.workflow,)

    def land(self) -> None:
        """A commit that inserted the workflow landed (or the journal shows it did)."""
        self.landed = True
        self._answer("landed")

    def abandon(self) -> None:
        """The Run ended, or left this node, without landing the acceptance."""
        self._answer("abandoned")

    @property
    def abandoned(self) -> bool:
        """The Run left without landing it (and expects the caller to)."""
        return self._outcome == "abandoned"

    def _answer(self, outcome: Literal["landed", "abandoned"]) -> None:
        if self._outcome is None:
            self._outcome = outcome
            self._answered.set()

    async def answer(self) -> bool:
        """Wait for the first answer: True if the workflow landed, False if the
        run abandoned it."""
        await self._answered.wait()
        return self._outcome == "landed"
