"""Running a workflow's Run on its actor (the ActorHost): load, replay, finish."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Final

import msgspec

from journal import (
    FINISHED_STATUSES,
    PARKED,
    Batch,
    StaleRunError,
    StatusChange,
    StepRecord,
    WorkflowRow,
)

from .acceptance import Acceptance
from .actor import Actor, ActorHost, Run
from .cluster import PartitionLost
from .codec import decode_recorded, input_type_of, to_json_value
from .commits import Committer
from .context import Suspended, WorkflowContext
from .errors import (
    NonDeterminismError,
    PayloadDecodeError,
    RunSuperseded,
    StepFailedError,
    UnknownWorkflowTypeError,
    WorkflowCancelledError,
)
from .metrics import RuntimeMetrics
from .placement import Placement
from .policy import RestartPolicy
from .recovery import KEEP_WITHIN, Recovery
from .waiters import Waiters

__all__ = ["Executor", "WorkflowFn"]

_log = logging.getLogger("retinue.runtime")

WorkflowFn = Callable[[WorkflowContext, Any], Awaitable[Any]]

# A run the journal refused (another run moved the workflow on) reloads and goes
# on from the journal; this many times in one message at most, then it crashes
# (the supervisor's backoff, then the dead letters: something is badly wrong).
_RELOADS: Final = 3


class Executor(ActorHost):
    """The host of every actor: handles a Run by replaying its workflow (from
    what recovery read, the row it came with, or the journal) against the
    Committer, records how it ended, and fails a dead-lettered one. Finished
    and dropped messages go back to Placement."""

    def __init__(
        self,
        committer: Committer,
        placement: Placement,
        recovery: Recovery,
        waiters: Waiters,
        workflows: Mapping[str, WorkflowFn],
        new_id: Callable[[], str],
        restart: RestartPolicy,
        metrics: RuntimeMetrics,
    ) -> None:
        self._committer = committer
        self._journal = committer.journal
        self._clock = committer.clock
        self._placement = placement
        self._recovery = recovery
        self._waiters = waiters
        self._workflows = workflows
        self._new_id = new_id
        self._restart = restart
        self._metrics = metrics

    async def execute(self, actor: Actor, message: Run) -> None:
        with self._committer.acting_as(actor) as current:
            if current:
                await self._execute(message)

    async def _execute(self, message: Run) -> None:
        try:
            await self._run_and_reload(message)
        finally:
            # The journal row carries a cancel request; the mark in memory serves
            # one Run (a row handed in may predate the request), so it never piles up.
            self._committer.clear_cancelling(message.workflow_id)
            self._recovery.run_ended(message.workflow_id)

    async def _run_and_reload(self, message: Run) -> None:
        preloaded = self._recovery.take_preloaded(message.workflow_id)
        row: WorkflowRow | None
        if preloaded is not None:
            row, steps = preloaded
        else:
            row, steps = await self._load(message)
        for _ in range(_RELOADS):
            if row is None or row.status in FINISHED_STATUSES:
                return
            if row.cancel_requested:
                self._committer.mark_cancelling(row.id)
            try:
                await self._run_workflow(row, {step.seq: step for step in steps},
                                         message.acceptance)
                return
            except RunSuperseded:
                # The journal refused this run: it was behind. Nothing it did was
                # written past that point; go on from what the journal holds.
                self._metrics.duplicate_runs.inc()
                _log.warning("workflow %s: a stale run was refused by the journal; "
                             "reloading it", message.workflow_id)
                row, steps = await self._load(Run(workflow_id=message.workflow_id))
                if row is not None and message.acceptance is not None:
                    message.acceptance.land()  # the journal holds it: it landed before
        raise RuntimeError(
            f"workflow {message.workflow_id!r} was refused by the journal {_RELOADS} times "
            "in a row: another run keeps moving it on; look for two nodes running it"
        )

    async def _load(self, message: Run) -> tuple[WorkflowRow | None, list[StepRecord]]:
        if message.row is not None and message.row.status not in FINISHED_STATUSES:
            return message.row, []  # just written here, never run: no history
        row = await self._journal.get_workflow(message.workflow_id)
        if row is None or row.status in FINISHED_STATUSES:
            return row, []
        return row, await self._journal.load_steps(row.id)

    async def _run_workflow(
        self, row: WorkflowRow, history: dict[int, Any], acceptance: Acceptance | None
    ) -> None:
        fn = self._workflows.get(row.name)
        if fn is None:
            raise UnknownWorkflowTypeError(row.name, list(self._workflows))
        ctx = WorkflowContext(self._committer, row, history, self._new_id(),
                              acceptance=acceptance)
        try:
            workflow_input = decode_recorded(row.input, input_type_of(fn), workflow_id=row.id,
                                             where="its input")
            result = await fn(ctx, workflow_input)
        except Suspended:
            self._keep_for_next_run(ctx, row)
            return
        except WorkflowCancelledError as exc:
            await self._finish(ctx, row, "cancelled", error=str(exc))
        except NonDeterminismError as exc:
            await self._park_or_cancel(ctx, row, exc)
        except (StepFailedError, PayloadDecodeError) as exc:
            # A step gave up, or a stored value no longer decodes: the workflow
            # fails with a message that says what to deploy, and the actor goes on.
            await self._finish(ctx, row, "failed", error=str(exc))
        else:
            await self._finish(ctx, row, "completed", result=to_json_value(result))

    def _keep_for_next_run(self, ctx: WorkflowContext, row: WorkflowRow) -> None:
        """A run that waits for a timer due soon leaves its row and history to the
        timer's run, which then reads neither (2 reads per wake-up). Not with a
        cancel pending: the next run must read the request."""
        state = ctx.resumable(within=KEEP_WITHIN)
        if state is None or self._committer.cancel_requested(row.id):
            return
        try:
            epoch = self._committer.epoch_of(row.partition)
        except PartitionLost:
            return
        self._recovery.suspended(*state, epoch)

    async def _park_or_cancel(
        self, ctx: WorkflowContext, row: WorkflowRow, exc: NonDeterminismError
    ) -> None:
        """The code deployed disagrees with the journal: the workflow is parked,
        with the mismatch, and nothing more of it runs until a deploy or an
        operator moves it on (every start of a runtime tries it again). A cancel
        request wins: it needs no code to agree."""
        if self._committer.cancel_requested(row.id):
            await self._finish(ctx, row, "cancelled", error=f"cancelled while parked: {exc}")
            return
        running = self._committer.app_version
        await ctx.finish(PARKED, error=str(exc), parked=exc.mismatch(running))
        _log.warning("workflow %s parked (version %s): %s", row.id, running, exc)

    async def _finish(
        self, ctx: WorkflowContext, row: WorkflowRow, outcome: str, *,
        result: Any = None, error: str | None = None,
    ) -> None:
        await ctx.finish(outcome, result=result, error=error)
        self._metrics.workflows_finished.labels(row.name, outcome).inc()
        elapsed = (self._clock.now() - row.created_at).total_seconds()
        self._metrics.workflow_duration.labels(row.name).observe(max(elapsed, 0.0))
        self._waiters.finished(msgspec.structs.replace(
            row, status=outcome, result=result, error=error, parked=None,
            updated_at=self._clock.now(),
        ))

    # -- crashes --------------------------------------------------------------------

    async def dead_letter(self, actor: Actor, message: Run, error: BaseException) -> None:
        # The workflow is failed first, so that a redelivery of the letter always
        # finds it failed and can retry it.
        text = f"{type(error).__name__}: {error}"
        with self._committer.acting_as(actor) as current:
            if not current:
                return  # its partition moved: the new owner replays the message
            if message.acceptance is not None and not message.acceptance.landed:
                await self._land(message.acceptance)  # so that it exists to be failed
            await self._fail_dead_lettered(message, text)
            await self._committer.outlast(lambda: self._journal.add_dead_letter(
                actor.key, {"workflow_id": message.workflow_id}, text
            ))
            self._metrics.dead_letters.inc()

    async def _land(self, acceptance: Acceptance) -> None:
        """Accept an eagerly started workflow with a commit of its own."""
        partition = acceptance.workflow.partition
        await self._committer.commit(
            Batch(partition=partition, epoch=self._committer.epoch_of(partition),
                  workflows=acceptance.riding())
        )
        acceptance.land()

    async def _fail_dead_lettered(self, message: Run, text: str) -> None:
        row = await self._committer.outlast(
            lambda: self._journal.get_workflow(message.workflow_id)
        )
        if row is not None and row.status not in FINISHED_STATUSES:
            change = StatusChange(
                workflow_id=row.id, status="failed",
                error=f"dead-lettered after {self._restart.max_crashes} crashes: {text}",
            )
            try:
                await self._committer.commit(
                    Batch(partition=row.partition, epoch=self._committer.epoch_of(row.partition),
                          statuses=(change,))
                )
            except StaleRunError:
                return  # it finished meanwhile: nothing to fail
            self._waiters.finished(
                msgspec.structs.replace(row, status="failed", error=change.error)
            )

    def actor_restarted(self, actor: Actor) -> None:
        self._metrics.actor_restarts.inc()

    # -- the actor's life -------------------------------------------------------------

    def message_done(self, actor: Actor, message: Run) -> None:
        self._placement.message_done(actor, message)

    def spawn(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._placement.spawn(run)

    def monotonic(self) -> float:
        return self._clock.monotonic()
