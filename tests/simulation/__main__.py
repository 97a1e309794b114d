"""python -m tests.simulation --seed N | --seeds A:B [--shortcut] [--no-guards] [--json]

--seed N replays one seed verbosely: the end of its trace, its figures and its
violations. --seeds A:B runs seeds A..B-1 and prints one JSON line,
{"seeds", "violations", "seconds", "failing", "failures"[, "digests"]}; the
replay command of each failing seed goes to stderr as soon as it fails. Exit status 1 on
any violation, 2 if this build lacks a switch asked for.

Set order must not vary between runs, so the command re-executes itself with
PYTHONHASHSEED=0 when that is not already set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Final

from .world import Options, SeedResult, run_seed, switches_missing

_SHOWN_FAILURES: Final = 20


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--seed", type=int, help="replay one seed, verbosely")
    which.add_argument("--seeds", help="run seeds A..B-1 (A:B) and print a JSON summary")
    parser.add_argument("--shortcut", action="store_true",
                        help="every Runtime trusts stale in-memory rows (the old bug)")
    parser.add_argument("--no-guards", action="store_true",
                        help="the journal does not refuse a stale run's appends")
    parser.add_argument("--tail", type=int, default=80,
                        help="with --seed: print the last N lines of the trace (0: all)")
    parser.add_argument("--digests", action="store_true",
                        help="with --seeds: add each seed's trace digest to the summary")
    parser.add_argument("--stop-at-first", action="store_true",
                        help="with --seeds: stop at the first seed with a violation")
    return parser.parse_args(argv)


def _seed_range(text: str) -> range:
    first, _, last = text.partition(":")
    return range(int(first), int(last))


def _report(result: SeedResult) -> None:
    print(f"seed {result.seed}: digest {result.digest}, {result.stats}")
    print("--- trace tail ---")
    for line in result.tail:
        print(line)
    print(f"--- {len(result.violations)} violations ---")
    for violation in result.violations:
        print(violation)
    if result.violations:
        print(result.replay)


def _run_range(seeds: range, options: Options, stop_at_first: bool) -> dict[str, Any]:
    began = time.perf_counter()
    failures: list[SeedResult] = []
    digests: dict[int, str] = {}
    for seed in seeds:
        result = run_seed(seed, options)
        digests[seed] = result.digest
        if result.violations:
            failures.append(result)
            print(result.replay, file=sys.stderr, flush=True)
            if stop_at_first:
                break
    return {
        "seeds": len(digests),
        "violations": sum(len(f.violations) for f in failures),
        "seconds": round(time.perf_counter() - began, 2),
        "failing": [f.seed for f in failures],
        "failures": [{"seed": f.seed, "replay": f.replay, "violations": f.violations[:10]}
                     for f in failures[:_SHOWN_FAILURES]],
        "digests": digests,
    }


def main(argv: list[str]) -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "tests.simulation", *argv])
    args = _parse(argv)
    options = Options(shortcut=args.shortcut, guards=not args.no_guards)
    missing = switches_missing(options)
    if missing is not None:
        print(missing, file=sys.stderr)
        return 2
    if args.seed is not None:
        result = run_seed(args.seed, options, tail=args.tail)
        _report(result)
        return 1 if result.violations else 0
    summary = _run_range(_seed_range(args.seeds), options, args.stop_at_first)
    if not args.digests:
        del summary["digests"]
    print(json.dumps(summary), flush=True)
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
