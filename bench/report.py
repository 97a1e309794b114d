"""python -m bench.report [--write | --check]: the README's performance table, made from
the newest result of each benchmark in bench/results/.

Without a flag it prints the table. `--write` puts it into README.md between the
marker comments (`make bench` ends with it); `--check` exits 1 when the README's
table is not the one the results make (tests/test_bench_report.py runs the same
comparison, so a figure typed by hand, or a result filed without regenerating the
table, fails CI). Every row names the revision it was measured at and its file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
BEGIN = "<!-- bench:table:begin (python -m bench.report --write; do not edit by hand) -->"
END = "<!-- bench:table:end -->"

# The rows, in order: benchmark, its target (issue 14's, on this 2-core machine).
TARGETS = {
    "floor": "the ceiling",
    "workflow": "c=64 ≥ 3,000 wf/s, p99 ≤ 40 ms; c=1 p50 ≤ 3 ms",
    "http": "c=64 ≥ 1,000 req/s, p99 ≤ 100 ms; c=1 p50 ≤ 4 ms; server CPU ≤ 0.8 ms per invite",
    "recovery": "≤ 5 s to all finished",
    "memory": "≤ 5 KiB; 0",
}


def load(folder: Path = RESULTS) -> list[dict[str, Any]]:
    """Every result filed in `folder`: one per .json file, one per line of a .jsonl
    file (older, unstamped results); each remembers its file name in `_file`."""
    results: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.json*")):
        text = path.read_text()
        chunks = text.splitlines() if path.suffix == ".jsonl" else [text]
        for chunk in chunks:
            if chunk.strip():
                result = msgspec.json.decode(chunk)
                result["_file"] = path.name
                results.append(result)
    return results


def latest(results: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest result of each benchmark by `measured_at` (ISO UTC, so it sorts as
    text); an unstamped result counts as older than any stamped one."""
    newest: dict[str, dict[str, Any]] = {}
    for result in results:
        name = result.get("bench")
        if not isinstance(name, str):
            continue
        held = newest.get(name)
        if held is None or result.get("measured_at", "") >= held.get("measured_at", ""):
            newest[name] = result
    return newest


def _n(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:g}"


def _floor(r: dict[str, Any]) -> str:
    return (f"raw asyncpg inserts, {r['concurrency']} connections: "
            f"**{_n(r['single_row_rows_per_s'])} rows/s** one row per transaction; "
            f"**{_n(r['batched_rows_per_s'])} rows/s** batched {r['batch_size']} per "
            f"transaction ({_n(r['batched_4_connections_rows_per_s'])} with 4 connections)")


def _workflow(r: dict[str, Any]) -> str:
    parts = []
    for run in r["runs"]:
        parts.append(f"c={run['concurrency']}: **{_n(run['workflows_per_s'])} wf/s**, "
                     f"p50 {run['p50_ms']:g} ms, p99 {run['p99_ms']:g} ms")
    return (f"{r['steps_per_workflow']} steps with effects, in-process; "
            + "; ".join(parts)
            + f"; {r['journal_appends_per_workflow']:g} journal appends per workflow")


def _http_run(run: dict[str, Any]) -> str:
    text = (f"c={run['concurrency']}: **{_n(run['requests_per_s'])} req/s**, "
            f"p50 {run['p50_ms']:g} ms, p99 {run['p99_ms']:g} ms, "
            f"server CPU {run['server_cpu_ms_per_request']:g} ms/invite")
    if "client_cpu_ms_per_request" in run:
        text += f", client CPU {run['client_cpu_ms_per_request']:g} ms/invite"
    if "sql_transactions_per_request" in run:
        text += f", {run['sql_transactions_per_request']:g} SQL transactions/invite"
    return text


def _http(r: dict[str, Any]) -> str:
    by_client: dict[str, list[str]] = {}
    for run in r["runs"]:
        by_client.setdefault(run.get("client", "aiohttp"), []).append(_http_run(run))
    text = "the invite (workflow + its communication child) from a separate server process; "
    text += "; ".join(f"{client}: " + "; ".join(runs) for client, runs in by_client.items())
    if "journal_per_invite" in r:
        per = r["journal_per_invite"]
        text += (f"; per invite {per['commits']:g} commits, {per['reads']:g} reads, "
                 f"{per['statements']:g} statements")
    return text


def _recovery(r: dict[str, Any]) -> str:
    finished = r["seconds_to_all_finished"]
    return (f"{r['in_flight_at_kill']:,} workflows in flight, SIGKILLed, restarted: "
            + (f"**all finished {finished:g} s after restart**" if finished is not None
               else "**did not finish**")
            + f", {r['lost']} lost, {r['steps_rerun_after_kill']} started steps re-run")


def _memory(r: dict[str, Any]) -> str:
    return (f"at {r['actors']:,} customers: **{r['bytes_per_active_idle_actor']} bytes per "
            f"active idle actor**, {r['bytes_per_passivated_actor']} bytes RSS per passivated "
            f"actor")


FIGURES: dict[str, Callable[[dict[str, Any]], str]] = {
    "floor": _floor, "workflow": _workflow, "http": _http, "recovery": _recovery,
    "memory": _memory,
}


def _measured(r: dict[str, Any]) -> str:
    facts = r.get("machine", {})
    rev = facts.get("revision", "unknown")
    load = facts.get("loadavg_1m_at_start")
    text = f"`{rev}`"
    if "measured_at" in r:
        text += f" {r['measured_at'][:16].replace('T', ' ')}Z"
    if load is not None:
        text += f", load {load:g} on {facts.get('cpus')} cores"
        if load > (facts.get("cpus") or 1):
            text += " (**busy machine: other work shared the cores**)"
    return text + f" (`bench/results/{r['_file']}`)"


def render(newest: dict[str, dict[str, Any]]) -> str:
    """The table (without the markers)."""
    lines = ["| benchmark (command) | figure | target | measured at |",
             "| --- | --- | --- | --- |"]
    for name, target in TARGETS.items():
        r = newest.get(name)
        if r is None:
            lines.append(f"| `{name}` (`python -m bench {name}`) | not measured yet "
                         f"| {target} | - |")
            continue
        command = r.get("command", f"python -m bench {name}")
        lines.append(f"| `{name}` (`{command}`) | {FIGURES[name](r)} | {target} "
                     f"| {_measured(r)} |")
    return "\n".join(lines) + "\n"


def readme_table(readme: str) -> str:
    """The table between the markers in `readme`; ValueError when they are missing."""
    try:
        start = readme.index(BEGIN) + len(BEGIN) + 1
        stop = readme.index(END, start)
    except ValueError:
        raise ValueError(f"README.md has no performance table markers: add the lines "
                         f"{BEGIN!r} and {END!r}") from None
    return readme[start:stop]


def with_table(readme: str, table: str) -> str:
    """`readme` with the text between the markers replaced by `table`."""
    start = readme.index(BEGIN) + len(BEGIN) + 1
    stop = readme.index(END, start)
    return readme[:start] + table + readme[stop:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="regenerate README.md's table")
    group.add_argument("--check", action="store_true",
                       help="exit 1 when README.md's table is not what the results make")
    args = parser.parse_args(argv)
    table = render(latest(load()))
    readme = README.read_text()
    if args.write:
        README.write_text(with_table(readme, table))
    elif args.check:
        if readme_table(readme) != table:
            sys.stderr.write("README.md's performance table is stale: "
                             "run `python -m bench.report --write`\n")
            return 1
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
