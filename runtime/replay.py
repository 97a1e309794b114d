"""The replay check: does today's workflow code still replay the stored histories?

Before a deploy, `replay_check` runs each selected workflow's registered function
against its journaled history with NO side effects and NO writes: every recorded
step returns its recorded outcome, and the replay stops at the first point where
the code would do something new (nothing recorded at that seq, a step or wait
not finished, anything to commit). A mismatch is the runtime's own determinism
check (`NonDeterminismError`: the code asks for another step than the journal
holds), or a history longer than what the code now asks for.

It only reads (the journal's read methods), so it may run against a database
that servers are using. `export_history` writes one workflow's history as JSON;
`check_history_replays` replays such an export with no database at all, so a
test can keep a real history and assert that the code still replays it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final, NoReturn

import anyio
import msgspec

from journal import (
    FINISHED_STATUSES,
    Batch,
    Journal,
    MemoryJournal,
    NewWorkflow,
    Signal,
    StepRecord,
    WorkflowNotFoundError,
    WorkflowRow,
)

from .clock import SYSTEM_CLOCK, Clock
from .codec import from_json_value, input_type_of
from .context import Suspended, WorkflowContext
from .errors import NonDeterminismError, StepFailedError, WorkflowCancelledError
from .execution import WorkflowFn
from .partitions import partition_of
from .versions import app_version

__all__ = [
    "HISTORY_FORMAT",
    "ReplayReport",
    "ReplayResult",
    "check_history_replays",
    "export_history",
    "load_history",
    "replay_check",
]

HISTORY_FORMAT: Final = "retinue.history/1"

# Histories are read this many workflows at a time (one query each).
_CHUNK: Final = 200
# A replay serves recorded outcomes only, so it takes no time unless the code
# awaits something that is not a step; past this it is reported, not waited for.
DEFAULT_TIMEOUT: Final = 10.0
# Outcomes, and those that fail the check.
REPLAYS, MISMATCH, ERROR, UNKNOWN, MISSING = "replays", "mismatch", "error", "unknown", "missing"


class ReplayResult(msgspec.Struct, frozen=True, kw_only=True):
    """How one workflow replayed.

    outcome: "replays" (cleanly, up to `seq` where the code would do something
    new, or to its end when `seq` is None), "mismatch" (at `seq` the code asks
    for `expected`, the journal holds `found`), "error" (the code raised
    something else: `detail`), "unknown" (no workflow of that name is
    registered), "missing" (no workflow has that id). `version` is the app
    version the workflow was started under, where the journal keeps one.
    """

    workflow_id: str
    name: str
    status: str
    outcome: str
    ok: bool
    version: str | None = None
    seq: int | None = None
    expected: str | None = None
    found: str | None = None
    detail: str = ""


class ReplayReport(msgspec.Struct, frozen=True, kw_only=True):
    """Every workflow's result, how many had each outcome, and whether all are ok."""

    results: list[ReplayResult]
    summary: dict[str, int]
    ok: bool

    @classmethod
    def of(cls, results: list[ReplayResult]) -> ReplayReport:
        summary: dict[str, int] = {}
        for result in results:
            summary[result.outcome] = summary.get(result.outcome, 0) + 1
        return cls(results=results, summary=summary, ok=all(r.ok for r in results))

    @property
    def problems(self) -> list[ReplayResult]:
        """The results that fail the check."""
        return [r for r in self.results if not r.ok]

    def describe(self) -> str:
        """A few lines for a person: the count, then one line per problem."""
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(self.summary.items()))
        lines = [f"replay check: {len(self.results)} workflows ({counts or 'none'}): "
                 + ("ok" if self.ok else "PROBLEMS")]
        lines += [f"  {r.workflow_id} ({r.name}): {r.detail}" for r in self.problems]
        return "\n".join(lines)


# -- the replay -------------------------------------------------------------------------------


class _Stop(BaseException):  # noqa: N818 - control flow: the replay reached new work
    """Raised inside the replayed code where it would do something new. A
    BaseException, like Suspended, so workflow code cannot catch it."""

    def __init__(self, seq: int, asked: str, why: str) -> None:
        super().__init__(why)
        self.seq = seq
        self.asked = asked
        self.why = why


def _refuse() -> NoReturn:
    raise _Stop(0, "a write", "the replay reached a write")


class _ReplayHost:
    """A RunHost that serves nothing new: a commit or a child's start would be a
    write, so it stops the replay (the context stops before any of them)."""

    def __init__(self, journal: Journal, clock: Clock, version: str) -> None:
        self.journal = journal
        self.clock = clock
        self.app_version = version  # the code replayed: what a mismatch names as running

    async def commit(self, batch: Batch) -> None:
        _refuse()

    def epoch_of(self, partition: int) -> int:
        return 0

    def cancel_requested(self, workflow_id: str) -> bool:
        return False

    async def next_event_seq(self, actor_key: str) -> int:
        _refuse()

    def events_committed(self, actor_key: str, count: int) -> None:
        _refuse()

    def child_started(self, child: NewWorkflow) -> None:
        _refuse()

    def timer_set(self, workflow_id: str, actor_key: str, fire_at: datetime) -> None:
        """A suspended wait: the replay stops there (Suspended)."""

    def event_published(self, workflow_id: str, key: str, value: Any) -> None:
        _refuse()

    def step_finished(self, workflow: str, step: str, outcome: str, seconds: float) -> None:
        """Nothing is measured in a replay."""

    def partition_of(self, actor_key: str) -> int:
        return partition_of(actor_key)


class _ReplayContext(WorkflowContext):
    """A WorkflowContext that returns recorded outcomes only: where the journal
    holds nothing finished at the next seq, the replay stops."""

    asked = 0  # the last seq the code asked for

    def _next(self, kind: str, name: str) -> tuple[int, StepRecord | None]:
        seq, recorded = super()._next(kind, name)
        self.asked = seq
        if recorded is None:
            raise _Stop(seq, f"{kind} {name}", "nothing is recorded there: it would run now")
        if recorded.status not in ("completed", "failed"):
            raise _Stop(seq, f"{kind} {name}", f"it is {recorded.status}: the workflow waits "
                        "there or would run it again")
        return seq, recorded


def _result(row: WorkflowRow, outcome: str, detail: str, **fields: Any) -> ReplayResult:
    ok = outcome == REPLAYS or (outcome == ERROR and row.status == "failed")
    return ReplayResult(workflow_id=row.id, name=row.name, status=row.status, outcome=outcome,
                        ok=ok, version=getattr(row, "app_version", None), detail=detail,
                        **fields)


async def _replay_one(
    row: WorkflowRow, steps: Sequence[StepRecord], workflows: Mapping[str, WorkflowFn],
    host: _ReplayHost, timeout: float = DEFAULT_TIMEOUT,
) -> ReplayResult:
    """Replay one workflow's history (`steps`) against its registered code, with
    no side effects and no writes, for at most `timeout` seconds. Cancellable."""
    with anyio.move_on_after(timeout) as scope:
        return await _replay(row, steps, workflows, host)
    assert scope.cancelled_caught
    return _result(row, ERROR, f"the replay did not end within {timeout:g} s: the code awaits "
                   "something outside its steps (make it a step)")


async def _replay(
    row: WorkflowRow, steps: Sequence[StepRecord], workflows: Mapping[str, WorkflowFn],
    host: _ReplayHost,
) -> ReplayResult:
    fn = workflows.get(row.name)
    if fn is None:
        return _result(row, UNKNOWN, f"no workflow named {row.name!r} is registered: "
                       "register it, or this workflow cannot run after the deploy")
    history = {step.seq: step for step in steps}
    ctx = _ReplayContext(host, row, dict(history), run_id="replay")
    try:
        await fn(ctx, from_json_value(row.input, input_type_of(fn)))
    except _Stop as stop:
        return _result(row, REPLAYS, f"replays cleanly up to seq {stop.seq} ({stop.asked}: "
                       f"{stop.why})", seq=stop.seq, expected=stop.asked)
    except Suspended:  # pragma: no cover - the context stops before any suspension
        return _result(row, REPLAYS, "replays cleanly up to a wait", seq=ctx.asked)
    except NonDeterminismError as exc:
        return _result(row, MISMATCH, str(exc), seq=exc.seq, expected=exc.expected,
                       found=exc.found)
    except (StepFailedError, WorkflowCancelledError):
        pass  # a recorded failure, raised again: the code ends as the history did
    except Exception as exc:  # noqa: BLE001 - the code's own error is the finding
        return _result(row, ERROR, f"the code raised {type(exc).__name__}: {exc}",
                       seq=ctx.asked or None)
    return _ended(row, history, ctx.asked)


def _ended(row: WorkflowRow, history: Mapping[int, StepRecord], asked: int) -> ReplayResult:
    """The code ran to its end: the history must not hold steps it no longer asks for."""
    extra = sorted(seq for seq in history if seq > asked)
    if not extra:
        return _result(row, REPLAYS, f"replays cleanly to its end ({asked} steps)")
    left = history[extra[0]]
    found = f"{left.kind} {left.name}"
    return _result(row, MISMATCH, (
        f"the code ends after seq {asked}, but the journal holds {found!r} at seq {extra[0]} "
        f"({len(extra)} steps the code no longer asks for)"),
        seq=extra[0], expected="the end of the workflow", found=found)


# -- choosing the workflows ---------------------------------------------------------------------


async def replay_check(
    journal: Journal, registry: Mapping[str, WorkflowFn], *, ids: Sequence[str] | None = None,
    workflow: str | None = None, finished: int = 0, timeout: float = DEFAULT_TIMEOUT,
    clock: Clock = SYSTEM_CLOCK,
) -> ReplayReport:
    """Replay stored histories against the code in `registry` (name -> workflow
    function, e.g. `Runtime.workflows`), reading only: every unfinished workflow
    plus the `finished` most recently finished ones, or just `ids`; only those
    named `workflow` when given. A replay that takes over `timeout` seconds is an
    "error" (its code awaits something outside its steps). Safe while servers
    run. Cancellable."""
    rows = await _select(journal, ids, workflow, finished)
    found = [row for row in rows if isinstance(row, WorkflowRow)]
    replayed: dict[str, ReplayResult] = {}
    # One host for every replay: the version hashes the registry's source once.
    host = _ReplayHost(journal, clock, app_version(registry))
    for start in range(0, len(found), _CHUNK):
        chunk = found[start:start + _CHUNK]
        histories = await journal.load_histories([row.id for row in chunk])
        for row in chunk:
            replayed[row.id] = await _replay_one(row, histories[row.id], registry, host,
                                                 timeout)
    return ReplayReport.of([
        replayed[row.id] if isinstance(row, WorkflowRow) else _missing(row) for row in rows
    ])


def _missing(workflow_id: str) -> ReplayResult:
    return ReplayResult(workflow_id=workflow_id, name="", status="", outcome=MISSING, ok=False,
                        detail="no workflow has this id; check it")


async def _select(
    journal: Journal, ids: Sequence[str] | None, workflow: str | None, finished: int
) -> list[WorkflowRow | str]:
    """The rows to replay (an id alone where no workflow has it), oldest first."""
    if ids is not None:
        rows: list[WorkflowRow | str] = []
        for wf_id in ids:
            row = await journal.get_workflow(wf_id)
            if row is None or workflow is None or row.name == workflow:
                rows.append(wf_id if row is None else row)
        return rows
    unfinished = [r for r in await journal.unfinished_workflows()
                  if workflow is None or r.name == workflow]
    return [*unfinished, *await _recently_finished(journal, workflow, finished)]


async def _recently_finished(
    journal: Journal, workflow: str | None, count: int
) -> list[WorkflowRow]:
    if count <= 0:
        return []
    rows: list[WorkflowRow] = []
    for status in sorted(FINISHED_STATUSES):
        page = await journal.list_workflows(status=status, name=workflow, limit=count)
        rows.extend(page.workflows)
    rows.sort(key=lambda r: (r.updated_at, r.position), reverse=True)
    return sorted(rows[:count], key=lambda r: r.position)


# -- exported histories -------------------------------------------------------------------------


class _Export(msgspec.Struct, frozen=True, kw_only=True):
    format: str
    workflow: WorkflowRow
    steps: list[StepRecord] = []
    signals: list[Signal] = []


async def export_history(journal: Journal, workflow_id: str) -> dict[str, Any]:
    """One workflow's history as plain JSON values: {"format", "workflow" (its
    row), "steps", "signals"}. Raises WorkflowNotFoundError. Cancellable."""
    row = await journal.get_workflow(workflow_id)
    if row is None:
        raise WorkflowNotFoundError(workflow_id)
    export = _Export(format=HISTORY_FORMAT, workflow=row,
                     steps=await journal.load_steps(workflow_id),
                     signals=await journal.workflow_signals(workflow_id))
    encoded: dict[str, Any] = msgspec.to_builtins(export)
    return encoded


def load_history(exported: Mapping[str, Any] | bytes | str) -> tuple[WorkflowRow, list[StepRecord]]:
    """The row and steps of an `export_history` document (as JSON, or decoded).
    Raises ValueError, saying what is wrong, for anything else."""
    try:
        if isinstance(exported, (bytes, str)):
            export = msgspec.json.decode(exported, type=_Export)
        else:
            export = msgspec.convert(exported, _Export, strict=False)
    except msgspec.MsgspecError as exc:
        raise ValueError(f"not an exported workflow history ({exc}); export one with "
                         "export_history or GET /workflows/{id}/export") from exc
    if export.format != HISTORY_FORMAT:
        raise ValueError(f"exported history format {export.format!r} is not "
                         f"{HISTORY_FORMAT!r}; export it again with this version")
    return export.workflow, export.steps


async def check_history_replays(
    exported: Mapping[str, Any] | bytes | str, registry: Mapping[str, WorkflowFn]
) -> ReplayResult:
    """Replay an exported history against the code in `registry`, with no
    database: reads the code makes outside its steps see an empty journal."""
    row, steps = load_history(exported)
    host = _ReplayHost(MemoryJournal(), SYSTEM_CLOCK, app_version(registry))
    return await _replay_one(row, steps, registry, host)
