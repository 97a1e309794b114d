"""`retinue rebuild-projections`: every projection folded afresh from the event log.

Safe while servers run: the swap is one transaction that holds a lock every
write of projection rows also takes (journal.rebuild_documents). Writes under way
finish first and are folded in; later ones wait the few moments the swap takes,
then land on the rebuilt rows. So nothing written meanwhile is lost, and no node
has to stop. (Refusing while nodes are live was the other choice; it would make
an operator stop the service for a repair that does not need it.)"""

from __future__ import annotations

import argparse
from typing import Final

import msgspec

from actors import rebuild_projections

from .output import Output
from .program import Commands
from .target import Target

__all__ = ["RebuildReply", "register"]

_EXAMPLES: Final = """\
  retinue rebuild-projections
  retinue rebuild-projections --data-dir /var/lib/retinue/pg --json
  DATABASE_URL=postgresql://db/retinue retinue rebuild-projections"""


class RebuildReply(msgspec.Struct, frozen=True, kw_only=True):
    rebuilt: dict[str, int]  # {kind: rows now}


def register(commands: Commands) -> None:
    commands.add(
        "rebuild-projections", _rebuild, help="rebuild every projection from the event log",
        description="Fold the whole event log into fresh projection rows (customers, "
        "messages) and swap them in, in one transaction. Safe while servers run: writes "
        "wait for the swap, and none is lost.",
        examples=_EXAMPLES, server=False)


async def _rebuild(args: argparse.Namespace, target: Target) -> Output:
    counts = await rebuild_projections(target.database())
    text = "rebuilt from the event log: " + ", ".join(f"{n} {k}" for k, n in counts.items())
    return Output(RebuildReply(rebuilt=counts), text)
