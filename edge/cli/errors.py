"""The CLI's exit codes, and the errors that carry them.

    0  done
    1  refused or failed: not found, a conflict (e.g. cancel a finished workflow),
       the server said no (auth, busy)
    2  bad usage: an unknown command or option, a bad value (argparse's own code)
    3  cannot reach the database or the server
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "EXIT_CODES_HELP", "EXIT_OK", "EXIT_REFUSED", "EXIT_UNREACHABLE", "EXIT_USAGE",
    "CliError", "Refused", "Unreachable", "UsageError",
]

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3

EXIT_CODES_HELP: Final = """\
exit codes:
  0  done
  1  refused or failed (not found, a conflict, the server said no)
  2  bad usage (unknown command or option, bad value)
  3  cannot reach the database or the server"""


class CliError(Exception):
    """A command did not do what was asked: the message says why and what to do;
    `code` is the exit code."""

    code: int = EXIT_REFUSED


class Refused(CliError):
    code = EXIT_REFUSED


class UsageError(CliError):
    code = EXIT_USAGE


class Unreachable(CliError):
    code = EXIT_UNREACHABLE
