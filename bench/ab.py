"""python -m bench.ab BASE [--rounds 3] [--env NAME=VALUE ...] -- <bench> [args]: one
benchmark, interleaved, on revision BASE and on this working tree.

BASE is checked out into a temporary git worktree, given this tree's bench/ (so both
sides measure the same way), and the two run turn about, `--rounds` times each, so
that whatever else the machine does falls on both alike. Each run's JSON line is
printed; then, per side, the figures that survive a busy machine (server CPU per
request, SQL transactions per request) and the ones that do not (throughput, p99).
`--env` sets a variable for the second side only, e.g. `--env RETINUE_EVENT_LOOP=asyncio`
with BASE=HEAD compares the two event loops. Nothing is filed in bench/results.
Example: python -m bench.ab 2fda597 -- http --invites 2000 --concurrency 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("server_cpu_ms_per_request", "server_cpu_ms_per_request_less_idle",
           "sql_transactions_per_request", "client_cpu_ms_per_request",
           "postgres_cpu_ms_per_request", "requests_per_s", "workflows_per_s", "p50_ms",
           "p99_ms", "seconds_to_ready", "seconds_to_all_finished")


def _run(tree: Path, bench: list[str], env: dict[str, str]) -> dict[str, Any]:
    # One bench PostgreSQL for both sides (the base tree is deleted after).
    environment = {"RETINUE_BENCH_DATA_DIR": str(ROOT / ".retinue" / "bench-pg"),
                   **os.environ, "PYTHONPATH": str(tree), **env}
    environment.pop("RETINUE_BENCH_RESULTS", None)
    done = subprocess.run([sys.executable, "-m", "bench", *bench], cwd=tree, env=environment,
                          capture_output=True, text=True, check=True)
    line = done.stdout.strip().splitlines()[-1]
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    result: dict[str, Any] = msgspec.json.decode(line)
    return result


def _summary(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per run level (client, concurrency): the mean of each figure over the rounds."""
    levels: dict[str, dict[str, list[float]]] = {}
    for result in results:
        # A benchmark of one run (recovery) keeps its figures at the top.
        for run in result.get("runs", [result]):
            level = f"{run.get('client', '')} c={run.get('concurrency', '-')}".strip()
            for name in FIGURES:
                if isinstance(run.get(name), int | float):
                    levels.setdefault(level, {}).setdefault(name, []).append(run[name])
    return {level: {name: round(mean(v), 3) for name, v in figures.items()}
            for level, figures in levels.items()}


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        raise SystemExit("usage: python -m bench.ab BASE [--rounds N] [--env K=V] -- <bench> "
                         "[args]")
    split = args.index("--")
    parser = argparse.ArgumentParser(prog="python -m bench.ab")
    parser.add_argument("base", help="the revision to compare this working tree with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="set for this tree's runs only")
    options = parser.parse_args(args[:split])
    bench = args[split + 1:]
    env = dict(item.split("=", 1) for item in options.env)
    scratch = Path(tempfile.mkdtemp(prefix="retinue-ab-"))
    base_tree = scratch / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), options.base],
                   cwd=ROOT, check=True, capture_output=True)
    try:
        shutil.rmtree(base_tree / "bench")
        shutil.copytree(ROOT / "bench", base_tree / "bench",
                        ignore=shutil.ignore_patterns("results", "__pycache__"))
        sides: dict[str, list[dict[str, Any]]] = {"base": [], "this": []}
        for _ in range(options.rounds):
            sides["base"].append(_run(base_tree, bench, {}))
            sides["this"].append(_run(ROOT, bench, env))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT,
                       check=False, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    sys.stdout.write(msgspec.json.encode({
        "bench": "ab", "base": options.base, "this": "working tree", "env": env,
        "rounds": options.rounds, "command": bench,
        "means": {side: _summary(results) for side, results in sides.items()},
    }).decode() + "\n")


if __name__ == "__main__":
    main()
