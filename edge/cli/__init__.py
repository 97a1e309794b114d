"""The operator CLI: `retinue CMD` (= `python server.py CMD`); serving is the
default command and lives in server.py.

One module per command group; each has `register(commands)`. To add a command:
write its module (a `register` that calls `commands.add(name, run, help=...,
examples=...)`, or `commands.group("workflows").add(...)` to join a group made
by another module, and `async def run(args, target) -> Output`), then add its
`register` to GROUPS below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final, TextIO

from . import dead_letters, history, nodes, projections, prune, replay_check, workflows
from .errors import EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE
from .output import Output
from .program import Commands, build_parser, wants_cli
from .program import main as _main
from .program import run as _run
from .target import Target

__all__ = [
    "EXIT_OK", "EXIT_REFUSED", "EXIT_UNREACHABLE", "EXIT_USAGE", "GROUPS", "Commands",
    "Output", "Target", "main", "run", "wants_cli",
]

GROUPS: Final[tuple[Callable[[Commands], None], ...]] = (
    workflows.register,
    history.register,
    dead_letters.register,
    nodes.register,
    projections.register,
    replay_check.register,
    prune.register,
)


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Run the operator command `argv` (blocking); its exit code. Bad usage and
    --help exit through argparse's SystemExit (2 and 0)."""
    return _main(argv, GROUPS, environ)


async def run(argv: Sequence[str], environ: Mapping[str, str], out: TextIO | None = None) -> int:
    """`main` inside a running event loop (the tests)."""
    return await _run(build_parser(GROUPS, environ), argv, environ, out)
