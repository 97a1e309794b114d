"""The invariants checked after every seed, each a named checker.

A checker takes the `Snapshot` (the journal at the end, the outside world's
effects, what clients were told, the runtimes' counters) and returns one
message per breach, starting with its name in brackets and naming the ids.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from actors import ALREADY_INVITED, INVITE_WORKFLOW
from journal import (
    FINISHED_STATUSES,
    DomainEvent,
    MemoryJournal,
    StepRecord,
    WaitingStep,
    WorkflowRow,
)
from runtime import Runtime

from .ledger import Ledger
from .workload import Effects

__all__ = ["CHECKS", "Snapshot", "collect", "duplicate_runs"]


@dataclass
class Snapshot:
    """Everything the checkers look at, taken once the cluster has stopped."""

    now: datetime
    rows: list[WorkflowRow]
    steps: dict[str, list[StepRecord]]
    events: dict[str, list[DomainEvent]]  # invited customers' logs, by actor key
    open_signals: dict[str, set[str]]  # unfinished workflow -> unconsumed signal names
    timers: list[WaitingStep]  # durable timers not fired: waits, and steps backing off
    dead_letters: int
    effects: Effects
    ledger: Ledger
    accepted: dict[str, str]  # workflow ids clients were given -> what for
    right_tokens: set[str]  # customers who were sent their right token
    duplicate_runs: dict[str, float]  # runtime (node name #n) -> counter


def duplicate_runs(runtime: Runtime) -> float:
    """retinue_duplicate_runs_total of `runtime`; 0 in a build without it."""
    counter = getattr(runtime.metrics, "duplicate_runs", None)
    if counter is None:
        return 0.0
    return float(sum(sample.value for metric in counter.collect() for sample in metric.samples
                     if sample.name.endswith("_total")))


async def collect(journal: MemoryJournal, now: datetime, effects: Effects, ledger: Ledger,
                  accepted: dict[str, str], right_tokens: set[str],
                  runtimes: list[Runtime]) -> Snapshot:
    rows = (await journal.list_workflows(limit=10**9)).workflows
    steps = await journal.load_histories([row.id for row in rows])
    events = {row.actor_key: await journal.read_events(row.actor_key)
              for row in rows if row.name == INVITE_WORKFLOW}
    open_signals: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        for step in steps[row.id]:
            if row.status not in FINISHED_STATUSES and step.kind == "wait" \
                    and step.status == "started" and step.input is not None \
                    and await journal.next_signal(row.id, step.input) is not None:
                open_signals[row.id].add(step.input)
    counts = {f"{r.node_id}#{i}": duplicate_runs(r) for i, r in enumerate(runtimes)}
    return Snapshot(now, rows, steps, events, open_signals, await journal.waiting_steps(),
                    len(await journal.list_dead_letters(include_redelivered=True)),
                    effects, ledger, accepted, right_tokens, counts)


def effects_once(s: Snapshot) -> list[str]:
    """1. An effect step ran at most once per (idempotency key, attempt), and
    never with an attempt past the one its completed record holds."""
    found = []
    runs = Counter((e.workflow_id, e.seq, e.attempt) for e in s.effects.executions)
    for (workflow_id, seq, attempt), n in runs.items():
        if n > 1:
            nodes = [e.node for e in s.effects.executions
                     if (e.workflow_id, e.seq, e.attempt) == (workflow_id, seq, attempt)]
            found.append(f"[effects-once] step {workflow_id}:{seq} ran {n} times at attempt "
                         f"{attempt} (on {', '.join(nodes)})")
    final = {(r.workflow_id, r.seq): r for records in s.steps.values() for r in records}
    late = {}
    for e in s.effects.executions:
        record = final.get((e.workflow_id, e.seq))
        if record is not None and record.status == "completed" and e.attempt > record.attempt:
            late[(e.workflow_id, e.seq)] = (e, record)
    for (workflow_id, seq), (e, record) in late.items():
        found.append(f"[effects-once] step {workflow_id}:{seq} ({e.step}) completed at attempt "
                     f"{record.attempt} but ran at attempt {e.attempt} on {e.node}")
    return found


def rows_never_rewritten(s: Snapshot) -> list[str]:
    """2. Step records only move forward; a finished workflow never changes."""
    found = list(s.ledger.violations)
    for row in s.rows:
        end = s.ledger.ends.get(row.id)
        if end is not None and end != (row.status, row.result, row.error):
            found.append(f"[rows-never-rewritten] workflow {row.id} finished {end[0]} "
                         f"(result {end[1]!r}) but ends as {row.status} (result {row.result!r})")
    return found


def one_invite_outcome(s: Snapshot) -> list[str]:
    """3. One CustomerInvited per invited customer; every invite workflow has
    exactly one outcome, and only another workflow may fail 'already invited'."""
    found = []
    invites: dict[str, list[WorkflowRow]] = defaultdict(list)
    for row in s.rows:
        if row.name == INVITE_WORKFLOW:
            invites[row.actor_key].append(row)
    for key, rows in invites.items():
        outcomes = [e for e in s.events.get(key, [])
                    if e.type in ("CustomerInvited", "CustomerInviteFailed")]
        invited = [str(e.workflow_id) for e in outcomes if e.type == "CustomerInvited"]
        if len(invited) != 1:
            found.append(f"[one-invite-outcome] {key} has {len(invited)} CustomerInvited "
                         f"events (workflows {invited})")
        per_workflow = Counter(e.workflow_id for e in outcomes)
        for row in rows:
            types = [e.type for e in outcomes if e.workflow_id == row.id]
            if len(types) > 1 or (not types and row.status in FINISHED_STATUSES):
                found.append(f"[one-invite-outcome] invite workflow {row.id} of {key} "
                             f"({row.status}) logged {types or 'no outcome'}")
            found += _invite_answer(key, row, invited)
        strays = set(per_workflow) - {row.id for row in rows}
        if strays:
            found.append(f"[one-invite-outcome] {key} has outcomes of unknown workflows {strays}")
    return found


def _invite_answer(key: str, row: WorkflowRow, invited: list[str]) -> list[str]:
    if row.status != "completed" or not isinstance(row.result, dict):
        return []
    expected = row.id in invited
    if row.result.get("invited") != expected or (
            not expected and row.result.get("error") != ALREADY_INVITED):
        return [f"[one-invite-outcome] invite workflow {row.id} of {key} answered "
                f"{row.result!r}; the CustomerInvited event is from {invited}"]
    return []


def all_settled(s: Snapshot) -> list[str]:
    """4. Every accepted workflow is in the journal, and finished, or waiting
    for a signal it has not received with its timer not due."""
    found = []
    known = {row.id for row in s.rows}
    for workflow_id, what in s.accepted.items():
        if workflow_id not in known:
            found.append(f"[all-settled] workflow {workflow_id} ({what}) was accepted but is "
                         "not in the journal")
    for row in s.rows:
        if row.status in FINISHED_STATUSES:
            continue
        waits = [st for st in s.steps[row.id] if _open_wait(st)]
        if row.status != "waiting" or not waits:
            found.append(f"[all-settled] workflow {row.id} ({row.name}) is {row.status} with "
                         f"{len(s.steps[row.id])} steps and no open wait: it never finished")
        if s.open_signals.get(row.id):
            found.append(f"[all-settled] workflow {row.id} ({row.name}) waits with an "
                         f"unconsumed signal {sorted(s.open_signals[row.id])}")
    found += [f"[all-settled] the timer of step {timer.workflow_id}:{timer.seq} was due at "
              f"{timer.fire_at} and never fired" for timer in s.timers if timer.fire_at <= s.now]
    return found


def _open_wait(step: StepRecord) -> bool:
    """A wait not yet ended, or a step backing off before its next attempt."""
    return (step.kind == "wait" and step.status == "started") or step.status == "backoff"


def _customers(s: Snapshot, event_type: str) -> dict[str, dict[str, Any]]:
    """{customer id: payload} of the first `event_type` event of each invited customer."""
    found: dict[str, dict[str, Any]] = {}
    for log in s.events.values():
        for e in log:
            if e.type == event_type and isinstance(e.payload, dict):
                found.setdefault(str(e.payload["customer_id"]), e.payload)
    return found


def messages_consistent(s: Snapshot) -> list[str]:
    """5. One delivery key per message and one message per key; every invited
    customer got an invitation (with the logged token), every verified one a welcome."""
    found = []
    messages_of: dict[str, set[tuple[str, str]]] = defaultdict(set)
    keys_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    for d in s.effects.deliveries:
        messages_of[d.key].add((d.customer_id, d.type))
        keys_of[(d.customer_id, d.type)].add(d.key)
    found += [f"[messages] delivery key {key} carried {sorted(m)}"
              for key, m in messages_of.items() if len(m) > 1]
    found += [f"[messages] {kind} of customer {cid} went out under keys {sorted(keys)}"
              for (cid, kind), keys in keys_of.items() if len(keys) > 1]
    for cid, invited in _customers(s, "CustomerInvited").items():
        if not keys_of.get((cid, "invitation")):
            found.append(f"[messages] customer {cid} was invited but got no invitation")
        elif s.effects.tokens.get(cid) != invited["token"]:
            found.append(f"[messages] customer {cid} got another token than the one logged")
    for cid in _customers(s, "CustomerVerified"):
        if not keys_of.get((cid, "welcome")):
            found.append(f"[messages] customer {cid} was verified but got no welcome")
    return found


def no_duplicate_runs(s: Snapshot) -> list[str]:
    """6. retinue_duplicate_runs_total, over every runtime that ran, is 0."""
    counted = {node: n for node, n in s.duplicate_runs.items() if n}
    if not counted:
        return []
    return [f"[no-duplicate-runs] retinue_duplicate_runs_total is {sum(counted.values()):g} "
            f"({', '.join(f'{node}: {n:g}' for node, n in counted.items())}): a second Run "
            "of a workflow reached the journal"]


def verification_outcome(s: Snapshot) -> list[str]:
    """Each invited customer is verified or expired, once; verified only with its token."""
    found = []
    verified = _count(s, "CustomerVerified")
    expired = _count(s, "CustomerVerificationExpired")
    for cid in _customers(s, "CustomerInvited"):
        if verified[cid] + expired[cid] != 1:
            found.append(f"[verification-outcome] customer {cid} was verified {verified[cid]} "
                         f"and expired {expired[cid]} times")
        if verified[cid] and cid not in s.right_tokens:
            found.append(f"[verification-outcome] customer {cid} was verified, but nobody "
                         "sent its token")
    return found


def _count(s: Snapshot, event_type: str) -> Counter[str]:
    return Counter(str(e.payload["customer_id"]) for log in s.events.values() for e in log
                   if e.type == event_type)


def nothing_failed(s: Snapshot) -> list[str]:
    """Chaos alone never fails, parks or dead-letters a workflow: every fault is
    retried, and the code never changes (a parked one would mean replay saw
    another history than the one written)."""
    found = [f"[nothing-failed] workflow {row.id} ({row.name}) {row.status}: {row.error}"
             for row in s.rows if row.status in ("failed", "cancelled", "parked")]
    if s.dead_letters:
        found.append(f"[nothing-failed] {s.dead_letters} dead letters")
    return found


CHECKS: tuple[Callable[[Snapshot], list[str]], ...] = (
    effects_once, rows_never_rewritten, one_invite_outcome, all_settled,
    messages_consistent, no_duplicate_runs, verification_outcome, nothing_failed,
)
