"""python -m bench [name ...]: run the named benchmarks (default: all), one JSON line each."""

from __future__ import annotations

import importlib
import sys

BENCHES = ["floor", "workflow", "http", "recovery", "memory"]
# Run only when named: several server processes each, or minutes long.
ON_DEMAND = ["nodes", "exactly_once", "retention"]


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] in BENCHES + ON_DEMAND:
        importlib.import_module(f"bench.{args[0]}").main(args[1:])
        return
    for name in BENCHES:
        importlib.import_module(f"bench.{name}").main([])


if __name__ == "__main__":
    main()
