"""python -m bench [name ...]: run the named benchmarks (default: all), one JSON line each."""

from __future__ import annotations

import importlib
import sys

BENCHES = ["floor", "workflow", "http", "recovery", "memory"]
# Run only when named: several server processes each, or minutes long.
ON_DEMAND = ["nodes", "exactly_once", "retention"]


USAGE = f"""usage: python -m bench [NAME [OPTIONS]]

Runs one benchmark (NAME OPTIONS; `python -m bench NAME --help` lists its
options), or with no NAME all of {", ".join(BENCHES)}; each prints one JSON line.
Run only when named: {", ".join(ON_DEMAND)}."""


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] in BENCHES + ON_DEMAND:
        importlib.import_module(f"bench.{args[0]}").main(args[1:])
        return
    if args:
        # Not a benchmark's name (a typo, or --help): say what is, run nothing.
        asked = args[0] in ("-h", "--help")
        print(USAGE, file=sys.stdout if asked else sys.stderr)
        sys.exit(0 if asked else 2)
    for name in BENCHES:
        importlib.import_module(f"bench.{name}").main([])


if __name__ == "__main__":
    main()
