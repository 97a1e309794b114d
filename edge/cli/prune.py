"""`retinue prune --older-than AGE`: what each node's pruner does for the
partitions it owns, once, over the whole database (runtime.prune_journal).

Finished workflows older than AGE lose their steps, signals and published
events (their rows, the event log and the documents stay); idempotency keys
older than RETINUE_IDEMPOTENCY_TTL (as the servers have it) are freed. Safe
while servers run: it goes in short batches, and skips rows that are busy.
"""

from __future__ import annotations

import argparse
import functools
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec

from edge.environment import env_seconds
from runtime import DEFAULT_IDEMPOTENCY_TTL, RetentionSettings, prune_journal

from .errors import UsageError
from .output import Output
from .program import Commands
from .target import Target

__all__ = ["register"]

_EXAMPLES: Final = """\
  retinue prune --older-than 7d                     finished more than 7 days ago
  retinue prune --older-than 12h --json
  retinue prune --older-than 3600                   seconds, as RETINUE_RETENTION
  RETINUE_IDEMPOTENCY_TTL=0 retinue prune --older-than 30d   keep every key"""

_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_AGE: Final = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")


class PruneReply(msgspec.Struct, frozen=True, kw_only=True):
    """What `prune` did, and the cut-offs it used (None: that part was skipped)."""

    workflows_pruned: int
    idempotency_keys_expired: int
    finished_before: datetime
    keys_issued_before: datetime | None


def register(commands: Commands) -> None:
    prune = commands.add(
        "prune", functools.partial(_prune, environ=commands.environ), server=False,
        examples=_EXAMPLES,
        help="remove the steps of long-finished workflows, free expired idempotency keys",
        description="Prune the journal now, as every node's pruner does for its partitions: "
        "workflows that finished more than --older-than ago lose their steps, signals and "
        "published events (their rows, the event log and the documents stay; a pruned "
        "workflow can be forked from seq 1 only); idempotency keys older than "
        "RETINUE_IDEMPOTENCY_TTL (seconds, default 1 day, 0 keeps them) are freed. Safe "
        "while servers run.")
    prune.add_argument("--older-than", type=_age, required=True, metavar="AGE",
                       help="seconds, or with a unit: 45s, 30m, 12h, 7d")


def _age(text: str) -> float:
    match = _AGE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age: give seconds (3600) or a number with s, m, h or d "
            "(45s, 30m, 12h, 7d)")
    return float(match[1]) * _UNITS[match[2]]


def _idempotency_ttl(environ: Mapping[str, str]) -> float:
    """RETINUE_IDEMPOTENCY_TTL as the servers read it (seconds; 0: keys never expire)."""
    try:
        return env_seconds(environ, "RETINUE_IDEMPOTENCY_TTL", DEFAULT_IDEMPOTENCY_TTL,
                           forever=True)
    except ValueError as exc:
        raise UsageError(f"{exc}; set it as the servers have it") from exc


async def _prune(args: argparse.Namespace, target: Target, *, environ: Mapping[str, str]
                 ) -> Output:
    settings = RetentionSettings(idempotency_ttl=_idempotency_ttl(environ))
    now = datetime.now(UTC)
    reply = PruneReply(workflows_pruned=0, idempotency_keys_expired=0,
                       finished_before=now - timedelta(seconds=args.older_than),
                       keys_issued_before=settings.key_expired_before(now))
    counts = await prune_journal(target.database(), finished_before=reply.finished_before,
                                 keys_issued_before=reply.keys_issued_before)
    reply = msgspec.structs.replace(reply, workflows_pruned=counts.workflows,
                                    idempotency_keys_expired=counts.idempotency_keys)
    keys = ("kept (RETINUE_IDEMPOTENCY_TTL=0)" if reply.keys_issued_before is None
            else f"issued before {reply.keys_issued_before:%Y-%m-%d %H:%M:%S} UTC")
    return Output(reply, (
        f"pruned {reply.workflows_pruned} workflow(s) finished before "
        f"{reply.finished_before:%Y-%m-%d %H:%M:%S} UTC (steps, signals and published "
        f"events removed; rows and the event log kept)\n"
        f"expired {reply.idempotency_keys_expired} idempotency key(s) {keys}"))
