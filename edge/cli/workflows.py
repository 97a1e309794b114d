"""`retinue workflows list|get|cancel|retry`: what GET /workflows, GET
/workflows/{id} and the operator's POSTs do, on the database or through --url.

On the database, cancel and retry are the runtime's own commands
(runtime.Operator): the same journal writes, then a wake-up for the node that
owns the workflow's partition, which runs it (or, if none is live, the next node
to start recovers it)."""

from __future__ import annotations

import argparse
import uuid
from datetime import datetime
from typing import Final

import msgspec

from actors import customer_actor_key, customer_id_for
from edge.routes.workflows import workflow_detail, workflow_summary
from edge.schemas import WORKFLOW_STATUSES, ActionReply, WorkflowReply, WorkflowsReply
from runtime import Operator

from .errors import UsageError
from .output import Output, cell, table, took
from .program import Commands
from .target import Target

__all__ = ["register"]

_LIST_EXAMPLES: Final = """\
  retinue workflows list                            the newest 50
  retinue workflows list --status failed --json     failed ones, as JSON
  retinue workflows list --customer ada@example.com --since 2026-01-01T00:00:00Z
  retinue workflows list --limit 20 --cursor 1234   the next page (its cursor is printed)
  retinue workflows list --url http://127.0.0.1:8080 --token $RETINUE_OPERATOR_TOKEN"""


def register(commands: Commands) -> None:
    group = commands.group("workflows", "list, read, cancel, retry, fork and export workflows",
                           _LIST_EXAMPLES)
    listing = group.add("list", _list, help="workflows, newest first, with filters",
                        examples=_LIST_EXAMPLES)
    listing.add_argument("--status", choices=WORKFLOW_STATUSES)
    listing.add_argument("--name", help="the workflow type, e.g. invite_customer")
    listing.add_argument("--actor", help="an actor key, e.g. customer:<id>")
    listing.add_argument("--customer", help="a customer's email or id: their actor's workflows")
    listing.add_argument("--since", type=_time, help="created at or after (RFC 3339)")
    listing.add_argument("--until", type=_time, help="created before (RFC 3339)")
    listing.add_argument("--limit", type=_limit, default=50, help="1 to 500 (default 50)")
    listing.add_argument("--cursor", help="the next-page cursor the previous page printed")
    get = group.add("get", _get, help="one workflow: its steps, children and timings",
                    examples="  retinue workflows get 0b6f...\n"
                    "  retinue workflows get 0b6f... --json | jq '.steps[].status'")
    get.add_argument("id")
    cancel = group.add(
        "cancel", _cancel, help="cancel a workflow and its children at their next step",
        examples="  retinue workflows cancel 0b6f...\n"
        "  retinue workflows cancel 0b6f... --url http://127.0.0.1:8080")
    cancel.add_argument("id")
    retry = group.add("retry", _retry, help="resume a failed workflow from its failed step, "
                      "or run a parked one again with the code deployed now",
                      examples="  retinue workflows retry 0b6f...\n"
                      "  retinue workflows retry 0b6f... --json")
    retry.add_argument("id")


def _time(text: str) -> datetime:
    try:
        moment = msgspec.json.decode(msgspec.json.encode(text), type=datetime)
    except msgspec.ValidationError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an RFC 3339 time with an offset, e.g. 2026-01-31T09:00:00Z")
    return moment


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 500:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to 500")
    return int(text)


# -- list -------------------------------------------------------------------------------


async def _list(args: argparse.Namespace, target: Target) -> Output:
    if args.actor and args.customer:
        raise UsageError("give --actor or --customer, not both")
    if target.api is not None:
        reply = await target.api.get("/workflows", WorkflowsReply, _query(args))
    else:
        actor = _customer_actor(args.customer) if args.customer else args.actor
        page = await target.database().list_workflows(
            status=args.status, actor_key=actor, name=args.name, limit=args.limit,
            cursor=args.cursor, created_since=args.since, created_before=args.until)
        reply = WorkflowsReply(workflows=[workflow_summary(row) for row in page.workflows],
                               next_cursor=page.next_cursor)
    rows = [(w.id, w.name, w.status, w.actor_key, w.created_at, w.updated_at)
            for w in reply.workflows]
    text = table(("ID", "NAME", "STATUS", "ACTOR", "CREATED", "UPDATED"), rows)
    text += f"\n{len(rows)} workflow(s)"
    if reply.next_cursor:
        text += f"; more with --cursor {reply.next_cursor}"
    return Output(reply, text)


def _query(args: argparse.Namespace) -> dict[str, str]:
    query = {"status": args.status, "name": args.name, "actor": args.actor,
             "customer": args.customer, "cursor": args.cursor,
             "since": args.since and args.since.isoformat(),
             "until": args.until and args.until.isoformat()}
    return {"limit": str(args.limit), **{k: v for k, v in query.items() if v}}


def _customer_actor(customer: str) -> str:
    """The actor of a customer given by email or id (as GET /workflows?customer=)."""
    if "@" in customer:
        return customer_actor_key(customer_id_for(customer))  # InvalidEmailError: usage
    try:
        return customer_actor_key(str(uuid.UUID(customer)))
    except ValueError:
        raise UsageError(f"--customer {customer!r} is neither an email nor a customer id "
                         "(a UUID)") from None


# -- get --------------------------------------------------------------------------------


async def _get(args: argparse.Namespace, target: Target) -> Output:
    if target.api is not None:
        reply = await target.api.get(f"/workflows/{args.id}", WorkflowReply)
    else:
        reply = await _read(target, args.id)
    return Output(reply, _describe(reply))


async def _read(target: Target, workflow_id: str) -> WorkflowReply:
    return await workflow_detail(target.database(), workflow_id)


def _describe(w: WorkflowReply) -> str:
    facts = [("id", w.id), ("name", w.name), ("status", w.status), ("actor", w.actor_key),
             ("parent", w.parent_id), ("created", w.created_at), ("updated", w.updated_at),
             ("took", took(w.created_at, w.updated_at)),
             ("cancel requested", w.cancel_requested), ("version", w.app_version),
             ("parked", w.parked), ("error", w.error), ("trace", w.trace_id)]
    lines = [f"{name + ':':<18}{cell(value, 100)}" for name, value in facts]
    steps = [(s.seq, s.name, s.kind, s.status, s.attempt, s.started_at,
              took(s.started_at, s.finished_at), s.error) for s in w.steps]
    lines += ["", f"steps ({len(steps)}):",
              table(("SEQ", "NAME", "KIND", "STATUS", "ATTEMPT", "STARTED", "TOOK", "ERROR"),
                    steps)]
    children = [(c.id, c.name, c.status, took(c.created_at, c.updated_at)) for c in w.children]
    lines += ["", f"children ({len(children)}):",
              table(("ID", "NAME", "STATUS", "TOOK"), children)]
    return "\n".join(lines)


# -- cancel and retry --------------------------------------------------------------------


async def _cancel(args: argparse.Namespace, target: Target) -> Output:
    if target.api is not None:
        reply = await target.api.post(f"/workflows/{args.id}/cancel", ActionReply)
    else:
        ids = await Operator(target.database()).cancel(args.id)
        reply = _action(args.id, "cancel", ids)
    return Output(reply, f"cancel requested for {len(reply.workflows)} workflow(s): "
                  + ", ".join(reply.workflows))


async def _retry(args: argparse.Namespace, target: Target) -> Output:
    if target.api is not None:
        reply = await target.api.post(f"/workflows/{args.id}/retry", ActionReply)
    else:
        await Operator(target.database()).retry(args.id)
        reply = _action(args.id, "retry", [args.id])
    return Output(reply, f"retry recorded for {args.id}: it resumes from its failed step "
                  "(a parked one runs again with the code deployed now)")


def _action(workflow_id: str, action: str, ids: list[str]) -> ActionReply:
    return ActionReply(workflow_id=workflow_id, action=action, workflows=ids,
                       status_url=f"/workflows/{workflow_id}")
