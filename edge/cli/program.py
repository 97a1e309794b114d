"""The `retinue` command line: the parser, the registry of commands, dispatch.

A command group is a module with `register(commands: Commands)`; `GROUPS` lists
them. `Commands.add` makes one subcommand: its help with examples and the exit
codes, the common options (--json, and where to act), and its `run(args,
target) -> Output`. The program opens the target, runs the command, prints its
Output, and turns failures into exit codes (see errors.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final, TextIO

import anyio

from journal import InvalidTransitionError, JournalUnavailableError, WorkflowNotFoundError

from .errors import EXIT_CODES_HELP, CliError, Refused, Unreachable, UsageError
from .output import Output
from .target import Target, open_target

__all__ = ["Commands", "Run", "build_parser", "main", "run", "wants_cli"]

Run = Callable[[argparse.Namespace, Target], Awaitable[Output]]

_DESCRIPTION: Final = """\
Retinue: serve durable workflows over HTTP, and operate them.

With no command (or `serve`), it serves: `retinue --port 8080` is
`python server.py --port 8080` (see `retinue serve --help`). The other commands
act on the database (DATABASE_URL, else the embedded PostgreSQL in --data-dir,
default ./.retinue/pg) or, with --url, on a running server through its HTTP API.
They print tables, or one JSON document with --json."""

_EXAMPLES: Final = """\
examples:
  retinue --port 8080                      serve (the default command)
  retinue workflows list --status failed   failed workflows, newest first
  retinue workflows get 6f1c...            one workflow: steps, children, timings
  retinue workflows retry 6f1c...          resume a failed workflow
  retinue --help / retinue CMD --help      help, with examples, for each command
  retinue nodes --json                     live nodes and their partitions, as JSON
  retinue workflows cancel 6f1c... --url http://10.0.0.5:8080 --token $TOKEN
"""


class Commands:
    """Where command groups register their subcommands (see `add`)."""

    def __init__(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
                 environ: Mapping[str, str]) -> None:
        self._subparsers = subparsers
        self._environ = environ
        self._groups: dict[str, Commands] = {}

    @property
    def environ(self) -> Mapping[str, str]:
        """The environment the commands run in (settings a command reads, as a
        server would: RETINUE_IDEMPOTENCY_TTL, ...)."""
        return self._environ

    def group(self, name: str, help: str = "", examples: str = "") -> Commands:
        """A command with subcommands of its own (`retinue workflows list`). Asking
        again for a group made before returns it (its help stays the first one's):
        another module may add a subcommand to it (`workflows fork`)."""
        if name in self._groups:
            return self._groups[name]
        parser = self._subparsers.add_parser(
            name, help=help, description=help, epilog=_epilog(examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
        self._groups[name] = Commands(sub, self._environ)
        return self._groups[name]

    def add(self, name: str, run: Run, *, help: str, examples: str,
            description: str | None = None, server: bool = True) -> argparse.ArgumentParser:
        """A subcommand that runs `run`; `examples` go into its --help. With
        `server=False` it works on the database only (there is no route for it),
        and --url is refused. Add its own arguments to the parser returned."""
        parser = self._subparsers.add_parser(
            name, help=help, description=description or help, epilog=_epilog(examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(run=run, server=server, command=parser.prog)
        self._common_options(parser, server)
        return parser

    def _common_options(self, parser: argparse.ArgumentParser, server: bool) -> None:
        env = self._environ
        where = parser.add_argument_group("where it acts")
        where.add_argument("--json", action="store_true",
                           help="print one JSON document instead of text")
        where.add_argument("--data-dir", default="./.retinue/pg",
                           help="the embedded PostgreSQL's folder, when DATABASE_URL is not "
                           "set (default ./.retinue/pg); used as is if a server runs it")
        where.add_argument("--url", default=None,
                           help="act through the HTTP API of the server at this URL instead "
                           "of on the database" if server else argparse.SUPPRESS)
        if server:
            where.add_argument("--token", default=env.get("RETINUE_OPERATOR_TOKEN")
                               or env.get("RETINUE_API_TOKEN") or None,
                               help="bearer token for --url (default: $RETINUE_OPERATOR_TOKEN, "
                               "else $RETINUE_API_TOKEN)")


def _epilog(examples: str) -> str:
    return f"examples:\n{examples.rstrip()}\n\n{EXIT_CODES_HELP}"


def build_parser(
    groups: Sequence[Callable[[Commands], None]], environ: Mapping[str, str]
) -> argparse.ArgumentParser:
    """The parser of every command `groups` register (and `serve`, for its help)."""
    parser = argparse.ArgumentParser(
        prog="retinue", description=_DESCRIPTION,
        epilog=f"{_EXAMPLES}\n{EXIT_CODES_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    # Listed for --help only: `serve` never reaches this parser (see wants_cli).
    sub.add_parser("serve", help="serve over HTTP (the default; see `retinue serve --help`)")
    commands = Commands(sub, environ)
    for register in groups:
        register(commands)
    return parser


def wants_cli(argv: Sequence[str]) -> bool:
    """Whether `argv` names an operator command (or asks for the overall help),
    rather than serving: serving is the default, and `serve` names it."""
    if not argv:
        return False
    first = argv[0]
    return first in ("-h", "--help") or (not first.startswith("-") and first != "serve")


async def run(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str],
    out: TextIO | None = None,
) -> int:
    """Parse `argv`, run its command, print its output; the exit code. Usage errors
    and --help exit through argparse (SystemExit 2 and 0)."""
    args = parser.parse_args(argv)
    out = out or sys.stdout
    try:
        output = await _execute(args, environ)
    except CliError as exc:
        print(f"retinue: {exc}", file=sys.stderr)
        return exc.code
    print(output.render(args.json), file=out)
    return output.code


async def _execute(args: argparse.Namespace, environ: Mapping[str, str]) -> Output:
    if args.url and not args.server:
        raise UsageError(f"`{args.command}` has no HTTP route: it works on the database. "
                         "Drop --url; set DATABASE_URL, or --data-dir on the server's machine")
    async with open_target(url=args.url, token=getattr(args, "token", None),
                           database_url=environ.get("DATABASE_URL") or None,
                           data_dir=args.data_dir) as target:
        try:
            result: Output = await args.run(args, target)
            return result
        except (WorkflowNotFoundError, InvalidTransitionError) as exc:
            raise Refused(str(exc)) from exc
        except JournalUnavailableError as exc:
            raise Unreachable(f"lost the database: {exc}") from exc
        except ValueError as exc:  # a value the journal could not take (a cursor)
            raise UsageError(str(exc)) from exc


def main(
    argv: Sequence[str], groups: Sequence[Callable[[Commands], None]],
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run an operator command (blocking); its exit code."""
    env = os.environ if environ is None else environ
    parser = build_parser(groups, env)
    return anyio.run(run, parser, argv, env)
