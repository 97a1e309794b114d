"""`retinue workflows fork|export`: start a finished (or parked) workflow again
from one of its steps, and write one workflow's history as JSON (what POST
/workflows/{id}/fork and GET /workflows/{id}/export do), on the database or
through --url.

On the database, a fork is the runtime's own (runtime.Operator.fork): accepted
in the journal, then a wake-up for the node that owns the workflow's partition,
which runs it. An export is tokens-redacted on either target, as the route's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final

import anyio
import msgspec

from edge.redaction import redact
from edge.schemas import ForkReply, HistoryExport
from journal import InvalidForkError, InvalidTransitionError, WorkflowNotFoundError
from runtime import Operator, export_history

from .errors import Refused
from .output import Output
from .program import Commands
from .target import Target

__all__ = ["register"]

_FORK_EXAMPLES: Final = """\
  retinue workflows fork 0b6f... --from-seq 4      keep steps 1-3, run the rest again
  retinue workflows fork 0b6f... --from-seq 1      run it again from the start
  retinue workflows fork 0b6f... --from-seq 4 --json | jq -r .workflow_id
  retinue workflows fork 0b6f... --from-seq 4 --url http://127.0.0.1:8080"""
_EXPORT_EXAMPLES: Final = """\
  retinue workflows export 0b6f...                  the history as JSON, on stdout
  retinue workflows export 0b6f... -o tests/histories/invite.json
  retinue workflows export 0b6f... --url http://127.0.0.1:8080 -o invite.json"""


def register(commands: Commands) -> None:
    group = commands.group("workflows")
    fork = group.add(
        "fork", _fork, examples=_FORK_EXAMPLES,
        help="start a finished or parked workflow again from one of its steps",
        description="Start a finished or parked workflow again as a new workflow: its "
        "completed steps before --from-seq are kept (not run again), the rest run with "
        "today's code. Prints the new workflow's id. A running or waiting workflow must be "
        "cancelled first; a pruned one (its steps are gone) forks from seq 1 only.")
    fork.add_argument("id", help="the workflow to fork")
    fork.add_argument("--from-seq", type=_seq, required=True, metavar="N",
                      help="the first step to run again (1 to its last seq + 1; see "
                      "`retinue workflows get ID`)")
    export = group.add(
        "export", _export, examples=_EXPORT_EXAMPLES,
        help="one workflow's history as JSON (format retinue.history/1)",
        description="One workflow's history (its row, steps and signals; tokens redacted) "
        "as JSON, format retinue.history/1: keep it beside the tests, and "
        "runtime.testing.assert_replays checks that the code still replays it.")
    export.add_argument("id", help="the workflow to export")
    export.add_argument("-o", "--output", metavar="FILE",
                        help="write the JSON to FILE (default: stdout)")


def _seq(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a step's seq (1 or more)")
    return int(text)


# -- fork -------------------------------------------------------------------------------


async def _fork(args: argparse.Namespace, target: Target) -> Output:
    if target.api is not None:
        # 409 (not forkable) and 422 (no such seq) are refusals, as on the database.
        reply = await target.api.post(f"/workflows/{args.id}/fork", ForkReply,
                                      {"from_seq": args.from_seq}, refusals=(422,))
    else:
        reply = await _fork_on_database(target, args.id, args.from_seq)
    return Output(reply, f"{reply.workflow_id}\n"
                  f"forked {reply.forked_from} from seq {reply.from_seq}: the new workflow "
                  f"above runs from there; see `retinue workflows get {reply.workflow_id}`")


async def _fork_on_database(target: Target, workflow_id: str, from_seq: int) -> ForkReply:
    try:
        row, _ = await Operator(target.database()).fork(workflow_id, from_seq)
    except WorkflowNotFoundError as exc:
        raise Refused(f"no such workflow: {workflow_id!r}; see `retinue workflows list`"
                      ) from exc
    except InvalidTransitionError as exc:
        raise Refused(f"{exc}: only a finished or parked workflow can be forked; cancel it "
                      f"first (`retinue workflows cancel {workflow_id}`), then fork it"
                      ) from exc
    except InvalidForkError as exc:
        raise Refused(str(exc)) from exc
    return ForkReply(workflow_id=row.id, forked_from=row.forked_from or workflow_id,
                     from_seq=row.forked_at_seq or from_seq,
                     status_url=f"/workflows/{row.id}")


# -- export -----------------------------------------------------------------------------


async def _export(args: argparse.Namespace, target: Target) -> Output:
    if target.api is not None:
        reply = await target.api.get(f"/workflows/{args.id}/export", HistoryExport)
        exported: dict[str, Any] = msgspec.to_builtins(reply)
    else:
        exported = redact(await export_history(target.database(), args.id))
    text = msgspec.json.format(msgspec.json.encode(exported).decode(), indent=2)
    if args.output is None:
        return Output(exported, text)
    await _write(args.output, text + "\n")
    written = {"workflow_id": args.id, "file": args.output, "format": exported["format"],
               "steps": len(exported["steps"]), "signals": len(exported["signals"])}
    return Output(written, f"wrote the history of {args.id} ({written['steps']} steps, "
                  f"{written['signals']} signals) to {args.output}")


async def _write(path: str, text: str) -> None:
    try:
        await anyio.Path(Path(path)).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise Refused(f"cannot write {path}: {exc.strerror or exc}; choose another -o FILE"
                      ) from exc
