"""What a node does with the journal when its share of the partitions changes."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Final

from journal import StepRecord, WorkflowRow, Workflows

from .actor import Run
from .cluster import ClusterHost
from .metrics import RuntimeMetrics
from .placement import Placement

__all__ = ["Recovery"]

# Recovery reads the histories of this many workflows per query.
_PRELOAD_CHUNK: Final = 1000
# A run that suspends on a timer due within this many seconds leaves its row and
# history for the next run (the timer's), which then reads neither; at most
# _KEPT_MAX of them are kept (a few kB each).
KEEP_WITHIN: Final = 60.0
_KEPT_MAX: Final = 50_000


class Recovery(ClusterHost):
    """The lease manager's host: recovers the partitions this node acquires
    (re-arms their timers, replays their unfinished workflows with histories
    read in bulk), stops those it loses, and catches up on lost wake-ups."""

    def __init__(self, journal: Workflows, placement: Placement, metrics: RuntimeMetrics) -> None:
        self._journal = journal
        self._placement = placement
        self._metrics = metrics
        # Rows and histories recovery read in bulk, for each workflow's next run;
        # what ran while recovery was reading is not preloaded (it would be stale).
        self._preloaded: dict[str, tuple[WorkflowRow, list[StepRecord], int]] = {}
        self._reads = 0
        self._ran_during_reads: set[str] = set()
        # Workflows with a run under way here: True while nothing changed them
        # from outside since it began (see `suspended`).
        self._untouched: dict[str, bool] = {}
        self._signals_seen = 0

    def owned(self) -> Mapping[int, int]:
        """{partition: epoch} of the partitions this node owns now."""
        return self._placement.epochs

    async def partitions_acquired(self, epochs: Mapping[int, int]) -> None:
        """Own `epochs` and recover them: re-arm their timers, replay every
        unfinished workflow that is not waiting, and the waiting ones that have
        an unconsumed signal (stored just before a crash, it may not have woken
        its workflow) or a cancel request. A waiting workflow stays out of
        memory until its timer fires or a signal comes."""
        self._placement.own(epochs)  # first: a wake-up that comes meanwhile is handled
        partitions = list(epochs)
        self._reads += 1
        try:
            await self._recover(epochs)
        except BaseException:
            # Not (wholly) recovered: owned they would stay idle, a running workflow
            # with them (catch-up looks for pending and signalled ones only). Dropped,
            # they are acquired and recovered again at the next heartbeat: the leases
            # are still ours. (Found by the simulation, seed 102.)
            self.stop_partitions(partitions)
            raise
        finally:
            self._reads -= 1
            if not self._reads:
                self._ran_during_reads.clear()

    async def _recover(self, epochs: Mapping[int, int]) -> None:
        partitions = list(epochs)
        waiting = await self._journal.waiting_steps(partitions)
        unfinished = await self._journal.unfinished_workflows(partitions, waiting=False)
        woken, _ = await self._journal.runnable_workflows(partitions, 0)
        unfinished += [row for row in woken if row.status == "waiting"]
        for timer in waiting:
            self._placement.timers.set(timer.workflow_id, timer.actor_key, timer.fire_at)
        # One with a Run here already is run again once that Run is done, from the
        # journal (what was read here may predate what that Run writes). That Run
        # may be a stopped actor's, unwinding after its partition was lost: then
        # it ends without writing, and only this brings the workflow back (found
        # by the simulation, soak seed 13346: a running workflow left idle).
        scheduled = self._placement.scheduled
        for row in [row for row in unfinished if row.id in scheduled]:
            self._placement.deliver(row.actor_key, Run(workflow_id=row.id))
        unfinished = [row for row in unfinished if row.id not in scheduled]
        for start in range(0, len(unfinished), _PRELOAD_CHUNK):
            await self._replay(unfinished[start:start + _PRELOAD_CHUNK], epochs)

    async def _replay(self, rows: list[WorkflowRow], epochs: Mapping[int, int]) -> None:
        """Queue `rows` for replay with their histories read in one query, not two
        reads each when they run."""
        histories = await self._journal.load_histories([row.id for row in rows])
        owned = self._placement.epochs
        for row in rows:
            # One that ran while we read has moved on: what we read is stale. So is
            # all of it if the partition was lost meanwhile (reads that stalled past
            # the lease): kept, it would be taken for news when the partition comes
            # back at a later epoch (the simulation found it, soak seed 14589).
            epoch = epochs[row.partition]
            if row.id not in self._ran_during_reads and owned.get(row.partition) == epoch:
                self._preloaded[row.id] = (row, histories[row.id], epoch)
            self._metrics.replays.inc()
            self._placement.deliver(row.actor_key, Run(workflow_id=row.id))

    def stop_partitions(self, partitions: Collection[int]) -> None:
        """Forget `partitions` and stop their actors now; queued messages are dropped
        (their workflows are the new owner's to resume), and so is what was read
        for them."""
        gone = set(partitions)
        for workflow_id in [w for w, (row, _, _) in self._preloaded.items()
                            if row.partition in gone]:
            del self._preloaded[workflow_id]
        self._placement.stop(gone)

    async def catch_up(self) -> None:
        """Queue the work of owned partitions that a lost wake-up may have hidden."""
        epochs = self._placement.epochs
        if not epochs:
            return
        rows, self._signals_seen = await self._journal.runnable_workflows(
            list(epochs), self._signals_seen
        )
        for row in rows:
            # Found signalled, cancelled or pending: changed since a run left it
            # (its wake-up lost), so what that run left is stale.
            self.drop_preloaded(row.id)
            if row.id not in self._placement.scheduled:
                self._placement.deliver(row.actor_key, Run(workflow_id=row.id))

    # -- what was read, for the next run ------------------------------------------------

    def take_preloaded(self, workflow_id: str) -> tuple[WorkflowRow, list[StepRecord]] | None:
        """The row and history read (or left by its last run) for `workflow_id`,
        once; None if there are none. A run of it begins: call `run_ended` after."""
        # What recovery read is good for the workflow's first run only: that run
        # writes, and nothing else writes for a workflow between (one owner, one
        # actor, one message at a time); an operator's retry drops it.
        if self._reads:
            self._ran_during_reads.add(workflow_id)
        self._untouched[workflow_id] = True
        preloaded = self._preloaded.pop(workflow_id, None)
        if preloaded is None:
            return None
        row, history, epoch = preloaded
        # Read under another lease on the partition: another owner may have run it.
        return (row, history) if self._placement.epochs.get(row.partition) == epoch else None

    def drop_preloaded(self, workflow_id: str) -> None:
        """Something changed the workflow (a command): what was read of it is stale."""
        self._preloaded.pop(workflow_id, None)
        if workflow_id in self._untouched:
            self._untouched[workflow_id] = False  # and what its run holds now

    def suspended(
        self, row: WorkflowRow, history: list[StepRecord], epoch: int
    ) -> None:
        """A run of `row` suspended on a timer due soon, leaving the row and history
        the journal holds (`WorkflowContext.resumable`), under lease `epoch`: the
        timer's run starts from them, as from what recovery read. Not if a command
        or another node's news changed the workflow while the run was under way
        (the run's copy predates it), nor past _KEPT_MAX."""
        if self._untouched.get(row.id) and len(self._preloaded) < _KEPT_MAX \
                and self._placement.epochs.get(row.partition) == epoch:
            self._preloaded[row.id] = (row, history, epoch)

    def run_ended(self, workflow_id: str) -> None:
        self._untouched.pop(workflow_id, None)
