"""Retention: what a node removes from the journal once nobody needs it.

A finished workflow keeps its steps, signals and published events for
`retention` seconds after it finished (the timeline an operator looks at, the
answer a caller polls for); then the pruner removes them and marks the row
pruned. The workflow row, the event log and the documents are the business
record and stay. An idempotency key answers retries for `idempotency_ttl`
seconds after its command was accepted; then it is free, and a workflow that
still holds one is kept whole until it expires (its published events are the
stored answer).

Each node prunes only the partitions it owns, at the epochs it holds them (the
journal checks them in each transaction, as it does for appends), every
`interval` seconds on the runtime's clock, in batches of `batch` workflows,
each its own short transaction. `prune_journal` is the same work for an
operator, over the whole database (`retinue prune --older-than`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Final

import anyio
import msgspec
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, Counter

from journal import JournalUnavailableError, Retention

from .clock import Clock

__all__ = [
    "DEFAULT_IDEMPOTENCY_TTL",
    "DEFAULT_RETENTION",
    "PruneCounts",
    "Pruner",
    "RetentionSettings",
    "prune_journal",
]

_log = logging.getLogger("retinue.retention")

DEFAULT_RETENTION: Final = 7 * 86400.0
DEFAULT_IDEMPOTENCY_TTL: Final = 86400.0


class RetentionSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How long finished workflows and idempotency keys are kept (seconds; 0
    keeps them for ever), and how often and in what batches the pruner runs."""

    retention: float = DEFAULT_RETENTION
    idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL
    interval: float = 60.0
    batch: int = 500

    def __post_init__(self) -> None:
        if not (self.retention >= 0 and self.idempotency_ttl >= 0):
            raise ValueError(
                f"retention ({self.retention:g} s) and idempotency_ttl "
                f"({self.idempotency_ttl:g} s) must be 0 (keep for ever) or more"
            )
        if not (self.interval > 0 and self.batch >= 1):
            raise ValueError(f"the prune interval ({self.interval:g} s) must be positive and "
                             f"the batch ({self.batch}) at least 1")

    def finished_before(self, now: datetime) -> datetime | None:
        """Workflows that finished before this are pruned; None: none are."""
        return now - timedelta(seconds=self.retention) if self.retention else None

    def key_expired_before(self, now: datetime) -> datetime | None:
        """Keys of commands accepted before this have expired; None: none have."""
        return now - timedelta(seconds=self.idempotency_ttl) if self.idempotency_ttl else None


class PruneCounts(msgspec.Struct, frozen=True, kw_only=True):
    """What a prune did: workflows pruned, idempotency keys freed."""

    workflows: int = 0
    idempotency_keys: int = 0


async def prune_journal(
    journal: Retention,
    *,
    finished_before: datetime | None,
    keys_issued_before: datetime | None,
    leases: Mapping[int, int] | None = None,
    batch: int = 500,
    progress: Callable[[PruneCounts], None] = lambda counts: None,
) -> PruneCounts:
    """Free the idempotency keys of commands accepted before `keys_issued_before`,
    then prune the workflows that finished before `finished_before` (None skips
    either), `batch` at a time, each batch its own short transaction, until none
    are left. `leases` ({partition: epoch}) limits it to those partitions held
    at those epochs; None is the whole database (an operator's `prune`, safe
    while servers run: busy rows are skipped, finished rows never change).
    `progress` hears each batch's counts. Cancellable between batches; a
    cancelled batch happened whole or not at all."""
    keys = workflows = 0
    if keys_issued_before is not None:
        while True:
            freed = await journal.expire_idempotency_keys(
                keys_issued_before, leases=leases, limit=batch)
            keys += freed
            progress(PruneCounts(idempotency_keys=freed))
            if freed < batch:
                break
    if finished_before is not None:
        while True:
            pruned = await journal.prune_finished(finished_before, leases=leases, limit=batch)
            workflows += pruned
            progress(PruneCounts(workflows=pruned))
            if pruned < batch:
                break
    return PruneCounts(workflows=workflows, idempotency_keys=keys)


class Pruner:
    """Prunes the partitions this node owns every `interval` seconds on `clock`.

    `owned()` is {partition: epoch} now; a node that owns nothing asks the
    journal nothing. A jump of the clock (a test's VirtualClock) wakes it to
    look again. An outage skips a pass; the next one catches up."""

    def __init__(
        self, journal: Retention, settings: RetentionSettings, clock: Clock,
        owned: Callable[[], Mapping[int, int]], registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self._journal = journal
        self._clock = clock
        self._owned = owned
        self._jumped = anyio.Event()
        clock.on_jump(self._look_again)
        self._pruned = Counter(
            "retinue_pruned_workflows",
            "Finished workflows whose steps, signals and published events this node "
            "removed after the retention period (their rows stay, marked pruned).",
            registry=registry,
        )
        self._expired = Counter(
            "retinue_expired_idempotency_keys",
            "Idempotency keys this node freed after their time to live.", registry=registry,
        )

    def _look_again(self) -> None:
        self._jumped.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Prune once per interval (the first after one interval), until cancelled."""
        task_status.started()
        if not (self.settings.retention or self.settings.idempotency_ttl):
            return
        due = self._clock.monotonic() + self.settings.interval
        while True:
            wait = due - self._clock.monotonic()
            if wait > 0:
                self._jumped = anyio.Event()
                with anyio.move_on_after(wait):
                    await self._jumped.wait()
                continue
            # From the pass's start: a clock that jumped meanwhile is due again.
            due = self._clock.monotonic() + self.settings.interval
            await self.prune_once()

    async def prune_once(self) -> PruneCounts:
        """One pass over the partitions owned now, as of the clock's now."""
        leases = dict(self._owned())
        if not leases:
            return PruneCounts()
        now = self._clock.now()
        try:
            return await prune_journal(
                self._journal, finished_before=self.settings.finished_before(now),
                keys_issued_before=self.settings.key_expired_before(now), leases=leases,
                batch=self.settings.batch, progress=self._count,
            )
        except JournalUnavailableError as exc:
            _log.warning("pruning skipped a pass: %s", exc)
            return PruneCounts()

    def _count(self, counts: PruneCounts) -> None:
        self._pruned.inc(counts.workflows)
        self._expired.inc(counts.idempotency_keys)
