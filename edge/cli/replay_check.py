"""`retinue replay-check`: would the code this deployment serves still replay
the stored histories? Run it before a deploy, with the new code installed.

It replays (runtime.replay_check: reads only, no side effects, safe while
servers run) against the workflows `edge.served_workflows` registers, the very
registrations server.py serves with, however the code is chosen (the default,
or RETINUE_WORKFLOWS=module:attr, read from the environment as the server
reads it: set it as the servers will have it after the deploy). It needs the
code, so it works on the database only, never through --url.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Mapping
from typing import Final

import msgspec

from edge.workflow_code import served_workflows
from runtime import ReplayReport, ReplayResult, replay_check

from .errors import EXIT_OK, EXIT_REFUSED
from .output import Output
from .program import Commands
from .target import Target

__all__ = ["register"]

_EXAMPLES: Final = """\
  retinue replay-check                              every unfinished workflow
  retinue replay-check --finished 500               and the 500 most recently finished
  retinue replay-check --workflow invite_customer --json
  retinue replay-check --id 0b6f... --id 7c2a...    just these
  DATABASE_URL=postgresql://... retinue replay-check || echo 'do not deploy'"""


def register(commands: Commands) -> None:
    run = functools.partial(_check, environ=commands.environ)
    check = commands.add(
        "replay-check", run, server=False, examples=_EXAMPLES,
        help="replay stored histories against the code installed here, before a deploy",
        description="Replay stored workflow histories against the workflow code installed "
        "here (what `retinue serve` would register with the same environment, "
        "RETINUE_WORKFLOWS included), with no "
        "side effects and no writes: safe while servers run. Prints one line per workflow "
        "the code would not replay, then a summary; exits 1 if there is any (deploying "
        "this code would park them), 0 otherwise.")
    check.add_argument("--finished", type=_count, default=0, metavar="N",
                       help="also the N most recently finished workflows (default 0: only "
                       "unfinished ones)")
    check.add_argument("--workflow", metavar="NAME",
                       help="only workflows of this type, e.g. invite_customer")
    check.add_argument("--id", action="append", dest="ids", metavar="ID",
                       help="only this workflow (repeat for more); replaces the selection")
    check.add_argument("--timeout", type=_seconds, default=10.0, metavar="SECONDS",
                       help="the longest one replay may take (default 10)")


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0 or more)")
    return int(text)


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


async def _check(args: argparse.Namespace, target: Target, *, environ: Mapping[str, str]
                 ) -> Output:
    journal = target.database()
    report = await replay_check(journal, served_workflows(journal, environ), ids=args.ids,
                                workflow=args.workflow, finished=args.finished,
                                timeout=args.timeout)
    text = "\n".join([*map(_problem, report.problems), _summary(report)])
    return Output(msgspec.to_builtins(report), text,
                  EXIT_OK if report.ok else EXIT_REFUSED)


def _problem(result: ReplayResult) -> str:
    """One line: which workflow, under which version, where, and what differs."""
    where = (f"{result.outcome.upper()} {result.workflow_id} {result.name or '-'} "
             f"version={result.version or '-'} seq={result.seq or '-'}")
    if result.expected is not None and result.found is not None:
        return (f"{where}: the code asks for {result.expected!r}, the journal holds "
                f"{result.found!r}")
    return f"{where}: {result.detail}"


def _summary(report: ReplayReport) -> str:
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(report.summary.items()))
    verdict = ("ok: this code replays them all" if report.ok else
               f"{len(report.problems)} would not replay: deploying this code parks them")
    return f"replay check: {len(report.results)} workflow(s) ({counts or 'none'}): {verdict}"
