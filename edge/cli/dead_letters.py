"""`retinue dead-letters list|redeliver`: messages that crashed their actor too
often, and sending one to its actor again (on the database: runtime.Operator,
the runtime's own redeliver, then a wake-up for the owning node)."""

from __future__ import annotations

import argparse
from typing import Final

from edge.routes.dead_letters import dead_letter_reply
from edge.schemas import DeadLettersReply, RedeliverReply
from runtime import Operator

from .errors import Refused
from .output import Output, table
from .program import Commands
from .target import Target

__all__ = ["register"]

_LIST_EXAMPLES: Final = """\
  retinue dead-letters list
  retinue dead-letters list --json
  retinue dead-letters list --url http://127.0.0.1:8080"""
_REDELIVER_EXAMPLES: Final = """\
  retinue dead-letters redeliver 12                 its workflow is retried
  retinue dead-letters redeliver 12 --url http://127.0.0.1:8080"""


def register(commands: Commands) -> None:
    group = commands.group("dead-letters", "list and redeliver dead letters",
                           f"{_LIST_EXAMPLES}\n{_REDELIVER_EXAMPLES}")
    group.add("list", _list, help="dead letters not yet redelivered, oldest first",
              examples=_LIST_EXAMPLES)
    redeliver = group.add("redeliver", _redeliver, help="send a dead letter to its actor again",
                          examples=_REDELIVER_EXAMPLES)
    redeliver.add_argument("id", type=int, help="the dead letter's id (see `list`)")


async def _list(args: argparse.Namespace, target: Target) -> Output:
    if target.api is not None:
        reply = await target.api.get("/dead-letters", DeadLettersReply)
    else:
        letters = await target.database().list_dead_letters()
        reply = DeadLettersReply(dead_letters=[dead_letter_reply(dl) for dl in letters])
    rows = [(d.id, d.actor_key, _workflow_of(d.message), d.created_at, d.error)
            for d in reply.dead_letters]
    text = table(("ID", "ACTOR", "WORKFLOW", "CREATED", "ERROR"), rows)
    return Output(reply, f"{text}\n{len(rows)} dead letter(s)")


def _workflow_of(message: object) -> str:
    return str(message.get("workflow_id", "")) if isinstance(message, dict) else ""


async def _redeliver(args: argparse.Namespace, target: Target) -> Output:
    if target.api is not None:
        reply = await target.api.post(f"/dead-letters/{args.id}/redeliver", RedeliverReply)
    else:
        letter = await Operator(target.database()).redeliver(args.id)
        if letter is None:
            raise Refused(f"no dead letter {args.id} waits for redelivery (unknown, or "
                          "redelivered already); see `retinue dead-letters list`")
        workflow_id = _workflow_of(letter.message)
        reply = RedeliverReply(id=args.id, workflow_id=workflow_id,
                               status_url=f"/workflows/{workflow_id}")
    return Output(reply, f"redelivered dead letter {reply.id} to workflow {reply.workflow_id}")
