"""What the simulation saw of the journal: a trace (with its digest) and a ledger.

`Trace` keeps every journal call, with its outcome, as one line: the digest of
all lines proves a seed replays exactly; the last lines are printed when a
seed fails. Lines leave out what is random by design and changes nothing
(invitation tokens come from `secrets`): ids, seqs, statuses and attempts are
in, payloads are not.

`Ledger` watches every batch that committed and every workflow row read, and
notes each time a journal row went backwards (invariant 2).
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any, Final

from journal import (
    FINISHED_STATUSES,
    Batch,
    ClusterView,
    Document,
    DomainEvent,
    NewWorkflow,
    Signal,
    StepRecord,
    WaitingStep,
    WorkflowRow,
)

__all__ = ["Ledger", "Trace", "summarize"]

_TAIL: Final = 80
_LIST_MAX: Final = 12


def _step(r: StepRecord) -> str:
    return f"{r.workflow_id}:{r.seq}/{r.kind}/{r.name}/{r.status}#{r.attempt}"


def _batch(b: Batch) -> str:
    parts = [f"p{b.partition}@{b.epoch}"]
    parts += [f"new {w.id}" for w in b.workflows]
    parts += [_step(s) for s in b.steps]
    parts += [f"{c.workflow_id}->{c.status}" for c in b.statuses]
    parts += [f"ev {e.actor_key}:{e.seq}/{e.type}" for e in b.events]
    parts += [f"doc {d.kind}:{d.id}" for d in b.documents]
    parts += [f"sig {s}" for s in b.consumed_signals]
    return "{" + " ".join(parts) + "}"


def summarize(value: Any) -> str:
    """A short, deterministic text for a journal call's argument or answer."""
    if isinstance(value, Batch):
        return _batch(value)
    if isinstance(value, WorkflowRow):
        return f"row {value.id}/{value.status}{'/cancel' if value.cancel_requested else ''}"
    if isinstance(value, StepRecord):
        return _step(value)
    if isinstance(value, NewWorkflow):
        return f"new {value.id}"
    if isinstance(value, Signal):
        return f"signal {value.id}/{value.workflow_id}/{value.name}/{value.consumed}"
    if isinstance(value, DomainEvent):
        return f"ev {value.actor_key}:{value.seq}/{value.type}"
    if isinstance(value, Document):
        return f"doc {value.kind}:{value.id}"
    if isinstance(value, WaitingStep):
        return f"timer {value.workflow_id}:{value.seq}@{value.fire_at.isoformat()}"
    if isinstance(value, ClusterView):
        owners = sum(1 for lease in value.leases if lease.owner)
        epochs = sum(lease.epoch for lease in value.leases)
        return f"view {','.join(value.live_nodes)} owned={owners} epochs={epochs}"
    if isinstance(value, dict):
        if len(value) > _LIST_MAX:
            return f"dict[{len(value)}]"
        # A verification's token is random (secrets), and the signal carries it.
        return "{" + ",".join(f"{k}:{'*' if k == 'token' else summarize(v)}"
                              for k, v in value.items()) + "}"
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else value
        return _seq(items, len(value))
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value[:80])
    return type(value).__name__


def _seq(items: Iterable[Any], size: int) -> str:
    shown = [summarize(v) for _, v in zip(range(_LIST_MAX), items, strict=False)]
    more = f" +{size - len(shown)}" if size > len(shown) else ""
    return "[" + ", ".join(shown) + more + "]"


class Trace:
    """Every journal call of one seed, as lines; their digest and the last
    `tail` lines (0: all of them)."""

    def __init__(self, tail: int = _TAIL) -> None:
        self._hash = hashlib.sha256()
        self.tail: deque[str] = deque(maxlen=tail or None)
        self.calls = 0
        self.faults: Counter[str] = Counter()  # what struck, by kind: the seed's figures

    def add(self, now: float, node: str, line: str, *, fault: str | None = None) -> None:
        """A line in the digest (a journal call and its outcome, or an event
        of the simulation; `fault` counts it under that kind)."""
        if fault is not None:
            self.faults[fault] += 1
        text = f"{now:11.6f} {node:>7} {line}"
        self._hash.update(text.encode())
        self._hash.update(b"\n")
        self.tail.append(text)
        self.calls += 1

    def note(self, now: float, node: str, line: str) -> None:
        """A line for the reader only (a log record), not in the digest."""
        self.tail.append(f"{now:11.6f} {node:>7} # {line}")

    def digest(self) -> str:
        return self._hash.hexdigest()[:16]


class Ledger:
    """Every step record and end that committed, in commit order; `violations`
    says where a row moved backwards (invariant 2: no journal row is rewritten)."""

    def __init__(self) -> None:
        self.steps: dict[tuple[str, int], StepRecord] = {}
        self.ends: dict[str, tuple[str, Any, str | None]] = {}
        self.violations: list[str] = []

    def committed(self, batch: Batch, node: str, now: float) -> None:
        for record in batch.steps:
            self._step(record, node, now)
        for change in batch.statuses:
            self._status(change.workflow_id, (change.status, change.result, change.error),
                         f"a batch of {node} at {now:.6f}")

    def seen(self, row: WorkflowRow, where: str) -> None:
        """A workflow row as read from the journal: a finished one never changes."""
        self._status(row.id, (row.status, row.result, row.error), where, first=False)

    def _step(self, new: StepRecord, node: str, now: float) -> None:
        key = (new.workflow_id, new.seq)
        old = self.steps.get(key)
        self.steps[key] = new
        if old is None or old == new:
            return  # the first record, or the same one again (a retried commit)
        where = f"by {node} at {now:.6f}"
        if old.status in ("completed", "failed"):
            self.violations.append(
                f"[rows-never-rewritten] step {new.workflow_id}:{new.seq} ({old.name}) was "
                f"{old.status} at attempt {old.attempt}, then rewritten {new.status} at "
                f"attempt {new.attempt} (name {new.name}) {where}")
        elif new.attempt < old.attempt:
            self.violations.append(
                f"[rows-never-rewritten] step {new.workflow_id}:{new.seq} ({new.name}) was "
                f"{old.status} at attempt {old.attempt}, then {new.status} at attempt "
                f"{new.attempt} {where}")

    def _status(self, workflow_id: str, end: tuple[str, Any, str | None], where: str,
                *, first: bool = True) -> None:
        known = self.ends.get(workflow_id)
        if known is None:
            if first and end[0] in FINISHED_STATUSES:
                self.ends[workflow_id] = end
            return
        if end != known:
            self.violations.append(
                f"[rows-never-rewritten] workflow {workflow_id} finished {known[0]} "
                f"(result {known[1]!r}, error {known[2]!r}), then became {end[0]} "
                f"(result {end[1]!r}, error {end[2]!r}) in {where}")
