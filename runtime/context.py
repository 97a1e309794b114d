"""The workflow context: journaled steps, durable waits, children and events.

A workflow is replayed from the start every time it runs. Each call below takes
the next sequence number; if the journal already holds a finished record at that
number, the recorded outcome is returned and nothing runs again. Otherwise the
step runs, preceded by a write-ahead "started" record when it has effects.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any, Final, NoReturn, Protocol, TypeVar, overload

import msgspec

from journal import (
    Batch,
    IntegrityError,
    Journal,
    JournalUnavailableError,
    NewWorkflow,
    RunFence,
    StatusChange,
    StepRecord,
    WorkflowEventRecord,
    WorkflowRow,
)

from .acceptance import Acceptance
from .clock import Clock
from .codec import decode_recorded, return_type_of, to_json_value
from .errors import NonDeterminismError, NonRetryableError, StepFailedError, WorkflowCancelledError
from .policy import DEFAULT_RETRY, RetryPolicy
from .store import Reader, WriteSet

__all__ = ["PATCH_KIND", "WorkflowContext", "StepInfo", "Wakeup", "current_step", "Suspended"]

T = TypeVar("T")

# The kind of the marker step `patched` journals (its name is the patch's).
PATCH_KIND: Final = "patch"


class StepInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The step being run; side effects pass `idempotency_key` on."""

    workflow_id: str
    seq: int
    name: str
    attempt: int

    @property
    def idempotency_key(self) -> str:
        return f"{self.workflow_id}:{self.seq}"


_current_step: ContextVar[StepInfo] = ContextVar("retinue_current_step")


def current_step() -> StepInfo:
    """The step whose function is running now. Raises LookupError outside a step."""
    return _current_step.get()


class Wakeup(msgspec.Struct, frozen=True, kw_only=True):
    """How a durable wait ended: a signal's payload, or the timer."""

    timed_out: bool
    payload: Any = None


class Suspended(BaseException):  # noqa: N818 - control flow, like trio's Cancelled
    """Raised inside a workflow that must wait; its actor moves on. Never catch it."""


class RunHost(Protocol):
    """What a context needs from the runtime hosting it."""

    journal: Journal
    clock: Clock
    # The application version this node runs (runtime/versions.py): stamped on
    # every step record and child workflow it writes.
    app_version: str

    async def commit(self, batch: Batch) -> None: ...
    def epoch_of(self, partition: int) -> int: ...
    def cancel_requested(self, workflow_id: str) -> bool: ...
    async def next_event_seq(self, actor_key: str) -> int: ...
    def events_committed(self, actor_key: str, count: int) -> None: ...
    def child_started(self, child: NewWorkflow) -> None: ...
    def timer_set(self, workflow_id: str, actor_key: str, fire_at: datetime) -> None: ...
    def event_published(self, workflow_id: str, key: str, value: Any) -> None: ...
    def step_finished(self, workflow: str, step: str, outcome: str, seconds: float) -> None: ...
    def partition_of(self, actor_key: str) -> int: ...


def _try(
    attempt: int, first: int, began: datetime, finished: datetime, error: str | None
) -> dict[str, Any]:
    """One try of a step, as kept in its record's history; `first` is the attempt
    its round of the retry policy began with (an operator's retry starts one)."""
    return {"attempt": attempt, "first": first, "started_at": began.isoformat(),
            "finished_at": finished.isoformat(), "error": error}


def _round_start(recorded: StepRecord | None, attempt: int) -> int:
    """The attempt the current round of retries began with."""
    if recorded is None:
        return 1
    if recorded.status == "retrying":
        return attempt
    tries = recorded.history or []
    return int(tries[-1].get("first", 1)) if tries else 1


class WorkflowContext:
    """Handed to a workflow function; every method is a durable step. Cancellable."""

    def __init__(
        self, host: RunHost, row: WorkflowRow, history: dict[int, StepRecord], run_id: str,
        *, acceptance: Acceptance | None = None,
    ) -> None:
        self._host = host
        self._row = row
        # A workflow started eagerly is inserted by this run's first commit.
        self._acceptance = acceptance
        # Every batch of this run carries its fence: the first claims the workflow
        # from the run that held it when it was loaded, the next ones hold it.
        self._run = RunFence(workflow_id=row.id, run_id=run_id, previous=row.run_id)
        self._history = history
        self._seq = 0
        self._status = row.status
        self._deferred: list[StepRecord] = []
        self._deferred_children: list[NewWorkflow] = []
        self._deferred_events: list[WorkflowEventRecord] = []
        self._now = host.clock.now
        self._suspended_until: datetime | None = None
        self.reader = Reader(host.journal, host.clock)

    @property
    def workflow_id(self) -> str:
        return self._row.id

    @property
    def actor_key(self) -> str:
        return self._row.actor_key

    # -- steps -------------------------------------------------------------

    @overload
    async def step(
        self, name: str, fn: Callable[..., Awaitable[T]], *args: Any,
        retry: RetryPolicy = ..., effect: bool = ...,
    ) -> T: ...

    @overload
    async def step(
        self, name: str, fn: Callable[..., T], *args: Any,
        retry: RetryPolicy = ..., effect: bool = ...,
    ) -> T: ...

    async def step(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        retry: RetryPolicy = DEFAULT_RETRY,
        effect: bool = True,
    ) -> Any:
        """Run `fn(*args)` once, durably; return its (recorded) result.

        With `effect=True` a "started" record is committed before `fn` runs, so a
        crash mid-step re-runs it with the same `current_step().idempotency_key`.
        A pure or read-only step passes `effect=False` and saves that write.
        Raises StepFailedError when `retry` is used up.
        """
        seq, recorded = self._next("step", name)
        if recorded is not None and recorded.status == "completed":
            return self._recorded_output(recorded, fn)
        if recorded is not None and recorded.status == "failed":
            raise StepFailedError(self.workflow_id, seq, name, recorded.error or "")
        self._check_cancelled()
        if recorded is not None and recorded.status == "backoff":
            await self._await_backoff(recorded)
        # Attempts only go up (the journal refuses a lower one): a crash mid-step
        # spends one; an operator's retry starts a new round of the policy's tries.
        attempt = 1 if recorded is None else recorded.attempt + 1
        return await self._attempt(seq, name, fn, args, retry, effect, attempt, recorded)

    def _recorded_output(self, recorded: StepRecord, fn: Callable[..., Any]) -> Any:
        """A replayed step's output as `fn` declares it today (older code may have
        recorded it in another shape); raises PayloadDecodeError if it no longer fits."""
        return decode_recorded(
            recorded.output, return_type_of(fn), workflow_id=self.workflow_id,
            where=f"the output of step {recorded.name!r} (seq {recorded.seq})",
        )

    async def _await_backoff(self, recorded: StepRecord) -> None:
        """A step backing off: suspend until its next attempt is due (a durable
        timer, so the actor handles other messages meanwhile)."""
        assert recorded.fire_at is not None
        if self._now() < recorded.fire_at:
            await self._wait_again(recorded.fire_at)

    async def _attempt(
        self,
        seq: int,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        retry: RetryPolicy,
        effect: bool,
        attempt: int,
        recorded: StepRecord | None,
    ) -> Any:
        """One attempt of a step; a failure the policy retries backs off durably."""
        attempt_began = self._now()
        started_at = recorded.started_at if recorded is not None else attempt_began
        last_error = recorded.error if recorded is not None else None
        first = _round_start(recorded, attempt)
        # Every failed attempt, so a timeline can draw each try (kept on the record).
        history: list[dict[str, Any]] = list(recorded.history or []) if recorded else []
        if effect:
            await self._write_step(seq, name, "started", attempt, started_at,
                                   error=last_error, history=history or None)
        began = time.perf_counter()
        try:
            result = await self._call(fn, args, StepInfo(
                workflow_id=self.workflow_id, seq=seq, name=name, attempt=attempt
            ))
        except JournalUnavailableError:
            # The database is away, not the step at fault: spending its retries
            # would fail the workflow. The actor's supervisor waits the outage out.
            raise
        except Exception as exc:  # noqa: BLE001 - a step's failure is data, journaled below
            last_error = f"{type(exc).__name__}: {exc}"
            self._host.step_finished(self._row.name, name, "error", time.perf_counter() - began)
            history.append(_try(attempt, first, attempt_began, self._now(), last_error))
            tries = attempt - first + 1
            if isinstance(exc, NonRetryableError) or not retry.should_retry(exc, tries):
                await self._write_step(seq, name, "failed", attempt, started_at,
                                       error=last_error, finished=True, history=history)
                raise StepFailedError(self.workflow_id, seq, name, last_error) from exc
            fire_at = self._now() + timedelta(seconds=retry.backoff(tries))
            await self._commit(self._record(
                seq, name, "step", "backoff", attempt, started_at, error=last_error,
                fire_at=fire_at, history=history,
            ), status="waiting")
            self._suspend(fire_at)
        self._host.step_finished(self._row.name, name, "ok", time.perf_counter() - began)
        if history:
            history.append(_try(attempt, first, attempt_began, self._now(), None))
        self._defer(self._record(
            seq, name, "step", "completed", attempt, started_at,
            output=to_json_value(result), error=last_error, finished=True,
            history=history or None,
        ))
        return result

    @staticmethod
    async def _call(fn: Callable[..., Any], args: tuple[Any, ...], info: StepInfo) -> Any:
        token = _current_step.set(info)
        try:
            result = fn(*args)
            if isinstance(result, Awaitable):
                result = await result
            return result
        finally:
            _current_step.reset(token)

    async def write(
        self, name: str, fn: Callable[..., T], *args: Any, publish: tuple[str, Any] | None = None
    ) -> T:
        """Run `fn(write_set, *args)` and commit its documents and events in ONE
        batch with the step's completion. It either happened whole or not at all,
        so it needs no write-ahead record. journal.IntegrityError propagates (the
        step is then recorded failed, and replay raises StepFailedError).

        `publish=(key, value)` publishes a workflow event in that same commit, as
        `set_event(key, value)` would after it, but without waiting for the next
        commit: callers waiting on the event hear of it as soon as the write is
        durable (the invite's 200 waits one commit, not two). It takes no seq of
        its own, so moving a `set_event` into a write changes the history's shape:
        do it behind `patched()`. A write that fails publishes nothing."""
        seq, recorded = self._next("write", name)
        if recorded is not None and recorded.status == "completed":
            return self._recorded_output(recorded, fn)  # type: ignore[no-any-return]
        if recorded is not None and recorded.status == "failed":
            raise StepFailedError(self.workflow_id, seq, name, recorded.error or "")
        self._check_cancelled()
        writes = WriteSet(self.actor_key)
        result = fn(writes, *args)
        first_seq = await self._host.next_event_seq(self.actor_key)
        events = writes.domain_events(first_seq, self.workflow_id)
        attempt = 1 if recorded is None else recorded.attempt + 1  # retrying: a new attempt
        record = self._record(
            seq, name, "write", "completed", attempt, self._now(), output=to_json_value(result),
            finished=True,
        )
        published = () if publish is None else (WorkflowEventRecord(
            workflow_id=self.workflow_id, key=publish[0], value=to_json_value(publish[1])),)
        try:
            await self._commit(record, documents=tuple(writes.documents), events=events,
                               workflow_events=published)
        except IntegrityError as exc:
            # The write's own fault, so it is recorded. Anything else (a lost lease)
            # says nothing about the write, and a failed record would not commit either.
            failed = self._record(
                seq, name, "write", "failed", attempt, record.started_at,
                error=f"{type(exc).__name__}: {exc}", finished=True,
            )
            await self._commit(failed)
            raise
        self._host.events_committed(self.actor_key, len(events))
        for event in published:
            self._host.event_published(event.workflow_id, event.key, event.value)
        return result

    async def now(self) -> datetime:
        """The current time, journaled so a replay sees the same instant."""
        return await self.step("now", self._now, effect=False)

    # -- patches: changing a workflow that has runs in flight ------------------

    async def patched(self, name: str) -> bool:
        """True if this run takes the new code path of patch `name`. Not cancellable
        (it may only defer a record, committed with the next write).

        At the live edge of the history, a marker step (kind "patch") is journaled
        and True returned; on replay, True if the marker is the next record (it is
        consumed), False if anything else is: that history passed this point under
        code without the patch, and it goes on along the old path (the seq is
        not consumed). Once no history without the marker is left, replace the
        call by `deprecate_patch(name)` and drop the old path."""
        at_patch = self._at_patch(name)
        if at_patch is False:
            return False
        seq, recorded = self._next(PATCH_KIND, name)
        if recorded is None:
            self._defer(self._record(seq, name, PATCH_KIND, "completed", 1, self._now(),
                                     finished=True))
        return True

    async def deprecate_patch(self, name: str) -> None:
        """Step over the marker of patch `name` if the history holds it next;
        journal nothing otherwise. Histories written while `patched(name)` was in
        the code replay; new ones no longer carry the marker. Once none with the
        marker is left, delete the call."""
        if self._at_patch(name):
            self._seq += 1

    # -- children and events -------------------------------------------------

    async def start_child(self, workflow: str, input: Any, *, actor_key: str | None = None) -> str:
        """Start a child workflow without waiting for it; return its id.

        Its id is derived from this step, so a replay never starts it twice."""
        seq, recorded = self._next("child", workflow)
        if recorded is not None and recorded.status == "completed":
            return str(recorded.output)
        self._check_cancelled()
        child_key = actor_key or self.actor_key
        child = NewWorkflow(
            id=f"{self.workflow_id}:{seq}",
            name=workflow,
            actor_key=child_key,
            partition=self._host.partition_of(child_key),
            input=to_json_value(input),
            parent_id=self.workflow_id,
            trace_id=self._row.trace_id,
            app_version=self._host.app_version,
        )
        record = self._record(seq, workflow, "child", "completed", 1, self._now(), output=child.id,
                              finished=True)
        # Deferred like a completion: the child row commits with the next write,
        # and the child is queued only after that commit.
        self._defer(record)
        self._deferred_children.append(child)
        return child.id

    async def set_event(self, key: str, value: Any) -> None:
        """Publish `value` under `key` for callers waiting on this workflow."""
        seq, recorded = self._next("event", key)
        if recorded is not None and recorded.status == "completed":
            return
        value = to_json_value(value)
        record = self._record(seq, key, "event", "completed", 1, self._now(), output=value,
                              finished=True)
        # Deferred like a completion: callers hear of it once the next write commits.
        self._defer(record)
        self._deferred_events.append(
            WorkflowEventRecord(workflow_id=self.workflow_id, key=key, value=value)
        )

    # -- durable waits ---------------------------------------------------------

    async def wait_for_signal(
        self, name: str, *, timeout: float | None = None, payload_type: Any = None
    ) -> Wakeup:
        """Wait durably for the signal `name`, or for `timeout` seconds.

        The actor handles other messages meanwhile; the wait and its timer
        survive restarts; each signal is consumed exactly once. With
        `payload_type`, the payload comes decoded as that type (a Struct: fields
        it does not know are ignored, missing ones take their defaults); one that
        does not decode fails the workflow with PayloadDecodeError naming the signal."""
        wakeup = await self._wait(f"signal:{name}", name, timeout)
        if payload_type is None or wakeup.timed_out:
            return wakeup
        payload = decode_recorded(
            wakeup.payload, payload_type, workflow_id=self.workflow_id,
            where=f"the payload of signal {name!r} (seq {self._seq})",
        )
        return msgspec.structs.replace(wakeup, payload=payload)

    async def sleep(self, seconds: float) -> None:
        """A durable timer: sleep `seconds`, across restarts if need be."""
        await self._wait("sleep", None, seconds)

    async def _wait(self, step_name: str, signal: str | None, timeout: float | None) -> Wakeup:
        seq, recorded = self._next("wait", step_name)
        if recorded is not None and recorded.status == "completed":
            return msgspec.convert(recorded.output, Wakeup)
        self._check_cancelled()
        started_at = recorded.started_at if recorded is not None else self._now()
        fire_at = recorded.fire_at if recorded is not None else None
        if recorded is None and timeout is not None:
            fire_at = started_at + timedelta(seconds=timeout)
        if signal is not None:
            found = await self._host.journal.next_signal(self.workflow_id, signal)
            # A signal sent after the timer was due is late, even if the timer's own
            # wake-up has not been handled yet: the deadline is the journaled fire_at.
            late = found is not None and fire_at is not None and found.created_at is not None \
                and found.created_at >= fire_at
            if found is not None and not late:
                return await self._wake(
                    seq, step_name, started_at, fire_at, found.payload, found.id
                )
        if fire_at is not None and self._now() >= fire_at:
            return await self._wake(seq, step_name, started_at, fire_at, None, None)
        if recorded is None:
            record = self._record(seq, step_name, "wait", "started", 1, started_at,
                                  fire_at=fire_at, input=signal)
            await self._commit(record, status="waiting")
            self._suspend(fire_at)
        await self._wait_again(fire_at)

    async def _wait_again(self, until: datetime | None) -> NoReturn:
        """Suspend at a wait (or backoff) the journal already holds. A workflow that
        came back to it from `parked` (a fixed deploy) or `pending` (an operator's
        retry) is `waiting` again: said so in the journal, else it would look
        parked, or catch-up would take it for new work at every heartbeat."""
        if self._status != "waiting":
            await self._commit(None, status="waiting")
        self._suspend(until)

    def _suspend(self, until: datetime | None) -> NoReturn:
        """Leave the actor until `until` (a durable timer, armed here; None: until
        a signal) or until something else wakes the workflow."""
        self._suspended_until = until
        if until is not None:
            self._host.timer_set(self.workflow_id, self.actor_key, until)
        raise Suspended

    async def _wake(
        self, seq: int, name: str, started_at: datetime, fire_at: datetime | None,
        payload: Any, signal_id: int | None,
    ) -> Wakeup:
        wakeup = Wakeup(timed_out=signal_id is None, payload=payload)
        record = self._record(seq, name, "wait", "completed", 1, started_at, fire_at=fire_at,
                              output=to_json_value(wakeup), finished=True)
        if signal_id is None:
            # A timer that came due is deferred like a step's completion: a crash
            # before the next commit finds the wait started and its timer past,
            # and wakes it the same way. A signal's wake commits at once: until
            # its signal is marked consumed, the next wait would find it again.
            self._defer(record)
            return wakeup
        await self._commit(record, consumed_signals=(signal_id,))
        return wakeup

    def resumable(self, within: float) -> tuple[WorkflowRow, list[StepRecord]] | None:
        """After this run suspended on a timer due within `within` seconds: the row
        and history exactly as the journal holds them (nothing is deferred), for
        the next run to start from without reading them; else None."""
        until = self._suspended_until
        if until is None or (until - self._now()).total_seconds() > within:
            return None
        if self._deferred or self._deferred_children or self._deferred_events:
            return None
        # The journal's holder is the run's fence `previous`: this run once it
        # committed, else the one it was loaded under.
        row = msgspec.structs.replace(self._row, status=self._status, parked=None,
                                      run_id=self._run.previous)
        return row, list(self._history.values())

    # -- plumbing --------------------------------------------------------------

    def _next(self, kind: str, name: str) -> tuple[int, StepRecord | None]:
        """Take the next seq and check the journal holds the same step there."""
        self._seq += 1
        recorded = self._history.get(self._seq)
        if recorded is not None and (recorded.kind != kind or recorded.name != name):
            raise NonDeterminismError(
                self.workflow_id, self._seq, f"{kind} {name}", f"{recorded.kind} {recorded.name}",
                found_version=recorded.app_version,
            )
        return self._seq, recorded

    def _at_patch(self, name: str) -> bool | None:
        """What the journal holds at the next seq: None (nothing: the live edge),
        True (the marker of patch `name`), False (anything else)."""
        recorded = self._history.get(self._seq + 1)
        if recorded is None:
            return None
        return recorded.kind == PATCH_KIND and recorded.name == name

    def _check_cancelled(self) -> None:
        if self._host.cancel_requested(self.workflow_id):
            raise WorkflowCancelledError(self.workflow_id)

    def _record(
        self, seq: int, name: str, kind: str, status: str, attempt: int, started_at: datetime,
        *, input: Any = None, output: Any = None, error: str | None = None,
        finished: bool = False, fire_at: datetime | None = None, history: Any = None,
    ) -> StepRecord:
        return StepRecord(
            workflow_id=self.workflow_id, seq=seq, name=name, kind=kind, status=status,
            attempt=attempt, input=input, output=output, error=error, started_at=started_at,
            finished_at=self._now() if finished else None, fire_at=fire_at, history=history,
            app_version=self._host.app_version,
        )

    async def _write_step(
        self, seq: int, name: str, status: str, attempt: int, started_at: datetime,
        *, output: Any = None, error: str | None = None, finished: bool = False,
        history: Any = None,
    ) -> None:
        record = self._record(seq, name, "step", status, attempt, started_at,
                              output=output, error=error, finished=finished, history=history)
        await self._commit(record)

    def _defer(self, record: StepRecord) -> None:
        """Hold a record (a completion, a child's start, a published event) until
        the next commit, which carries it.

        Safe because nothing leaves the workflow without a commit: the next step
        with effects commits its write-ahead record, and writes, waits and the end
        all commit too. Children are queued and callers told of events only after
        that commit. A crash before it re-runs the step (with the same idempotency
        key) as a crash during its own commit would. It halves a workflow's commits.
        """
        self._deferred.append(record)
        self._history[record.seq] = record

    async def _commit(
        self, record: StepRecord | None, *, status: str = "running", **parts: Any
    ) -> None:
        """Commit the deferred records and `record` (plus `parts`), moving the
        workflow to `status` in the same batch when it is not there yet."""
        statuses: tuple[StatusChange, ...] = ()
        if self._status != status:
            statuses = (StatusChange(workflow_id=self.workflow_id, status=status),)
        await self._commit_batch(record, statuses, parts)
        self._status = status

    async def _commit_batch(
        self, record: StepRecord | None, statuses: tuple[StatusChange, ...], parts: dict[str, Any]
    ) -> None:
        steps = (*self._deferred, record) if record is not None else tuple(self._deferred)
        children, events = tuple(self._deferred_children), tuple(self._deferred_events)
        partition = self._row.partition
        accepting = self._acceptance
        batch = Batch(
            partition=partition, epoch=self._host.epoch_of(partition), run=self._run,
            steps=steps, statuses=statuses,
            workflows=(*(accepting.riding() if accepting is not None else ()),
                       *parts.pop("workflows", ()), *children),
            workflow_events=(*parts.pop("workflow_events", ()), *events),
            **parts,
        )
        await self._host.commit(batch)
        if accepting is not None:
            accepting.land()
            self._acceptance = None
        if self._run.previous != self._run.run_id:
            self._run = msgspec.structs.replace(self._run, previous=self._run.run_id)
        self._deferred.clear()
        self._deferred_children.clear()
        self._deferred_events.clear()
        if record is not None:
            self._history[record.seq] = record
        for child in children:
            self._host.child_started(child)
        for event in events:
            self._host.event_published(event.workflow_id, event.key, event.value)

    async def finish(
        self, status: str, *, result: Any = None, error: str | None = None, parked: Any = None
    ) -> None:
        """Record the workflow's end, or that it is parked with the mismatch
        `parked` (the runtime calls this, not workflow code)."""
        change = StatusChange(workflow_id=self.workflow_id, status=status,
                              result=result, error=error, parked=parked)
        await self._commit_batch(None, (change,), {})
        self._status = status
