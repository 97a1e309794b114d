"""`retinue nodes`: the live nodes, the partitions each holds, and their epochs
(the fencing tokens), read from the database (there is no HTTP route for it)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Final

import msgspec

from journal import PartitionLease
from runtime import ClusterSettings

from .output import Output, table
from .program import Commands
from .target import Target

__all__ = ["NodeReply", "NodesReply", "register"]

_EXAMPLES: Final = """\
  retinue nodes
  retinue nodes --json | jq '.nodes[] | {node, count: (.partitions | length)}'
  DATABASE_URL=postgresql://db/retinue retinue nodes"""


class NodeReply(msgspec.Struct, frozen=True, kw_only=True):
    """A node that holds leases or is live; its partitions with their epochs."""

    node: str
    live: bool
    partitions: list[int]
    epochs: dict[int, int]


class NodesReply(msgspec.Struct, frozen=True, kw_only=True):
    nodes: list[NodeReply]
    # Partitions no live node holds a running lease on: free, expired, or a dead
    # node's (a live node takes them at its next heartbeat).
    unowned: list[int]


def register(commands: Commands) -> None:
    commands.add("nodes", _nodes, help="live nodes, their partitions and epochs",
                 description="Live nodes (heartbeating, and attached or heard from lately), "
                 "the partitions whose leases each holds, and the epochs of those leases.",
                 examples=_EXAMPLES, server=False)


async def _nodes(args: argparse.Namespace, target: Target) -> Output:
    settings = ClusterSettings.from_env()
    view = await target.database().cluster_view(stale_after=settings.stale_after)
    reply = _reply(view.live_nodes, view.leases)
    rows = [(n.node, "yes" if n.live else "no", len(n.partitions), _ranges(n.partitions),
             _ranges(sorted(set(n.epochs.values())))) for n in reply.nodes]
    text = table(("NODE", "LIVE", "COUNT", "PARTITIONS", "EPOCHS"), rows)
    text += (f"\n{len(view.live_nodes)} live node(s); {len(reply.unowned)} of "
             f"{len(view.leases)} partitions unowned")
    return Output(reply, text)


def _reply(live: Sequence[str], leases: Sequence[PartitionLease]) -> NodesReply:
    held: dict[str, dict[int, int]] = {node: {} for node in live}
    unowned = []
    for lease in leases:
        if lease.owner and not lease.expired:
            held.setdefault(lease.owner, {})[lease.partition] = lease.epoch
        if not lease.owner or lease.expired or lease.owner not in live:
            unowned.append(lease.partition)
    nodes = [NodeReply(node=node, live=node in live, partitions=sorted(epochs), epochs=epochs)
             for node, epochs in sorted(held.items())]
    return NodesReply(nodes=nodes, unowned=unowned)


def _ranges(numbers: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans) or "-"
