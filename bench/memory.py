"""memory: resident memory per active idle actor and per passivated actor.

Over a PostgresJournal on a fresh database, so journal data is not in the measured
process. One tiny workflow (no steps) per distinct actor key activates an actor;
once it has finished, the actor idles with an empty mailbox. Two child processes
run side by side, each with its own baseline (RSS from /proc/self/statm after
gc.collect(), once every code path and the pool are warm):

- active: a runtime with a long idle_timeout; N actors are activated and stay.
  (rss - baseline) / N per active idle actor.
- passivated: a runtime with a short idle_timeout; N actors are activated and all
  passivate. (rss - baseline) / N is what stays resident per passivated actor:
  live objects, plus what the allocator keeps of the freed ones. Then a tracemalloc
  profile over M actors: the Python heap bytes one active idle actor holds, by
  part (task, mailbox, idle timer...), and the bytes left per passivated actor.

Run: python -m bench memory [--actors 100000] [--profile-actors 1000]
Activation runs through the journal (an accept and a finish per actor), so on
2 cores the default takes over a minute; --actors 20000 gives the same per-actor
figures for active actors in ~15 s.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import sys
import time
import tracemalloc
import types
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import msgspec

from journal import PostgresJournal
from runtime import Runtime, WorkflowContext

from .common import bench_database, emit, machine

ROOT = Path(__file__).resolve().parent.parent
_PAGE = os.sysconf("SC_PAGE_SIZE")


async def tiny(ctx: WorkflowContext, i: int) -> int:
    return i


def rss() -> int:
    """Resident bytes of this process, after a full collection."""
    gc.collect()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def _runtime(journal: PostgresJournal, idle_timeout: float) -> Runtime:
    runtime = Runtime(journal, max_in_flight=1_000_000, idle_timeout=idle_timeout)
    runtime.register(tiny, name="tiny")
    return runtime


async def activate(runtime: Runtime, count: int, prefix: str, concurrency: int) -> float:
    """Start one tiny workflow on each of `count` new actors; wait until all are
    done. Returns activations per second."""
    pending = iter(range(count))

    async def client() -> None:
        for i in pending:
            await runtime.start_workflow("tiny", i, actor_key=f"{prefix}:{i}")

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(client)
    while runtime.statistics().in_flight or runtime.statistics().mailbox_depth:  # noqa: ASYNC110
        await anyio.sleep(0.02)  # the runtime has no "idle" event to wait on
    return count / (time.perf_counter() - began)


async def all_passivated(runtime: Runtime, within: float) -> float:
    """Seconds until no actor is active (raises TimeoutError past `within`)."""
    began = time.perf_counter()
    with anyio.fail_after(within):
        while runtime.statistics().active_actors:  # noqa: ASYNC110 - polled, as an operator would
            await anyio.sleep(0.05)
    return time.perf_counter() - began


# -- where an active actor's bytes are --------------------------------------------------

# An allocation belongs to the first part one of whose markers names a function on
# its traceback ("@": the allocating frame only). Functions are named from the code
# objects loaded in this process, so edits to the files meanwhile do not matter.
_PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("task: asyncio.Task, anyio TaskHandle (its own CancelScope, finished Event, name), "
     "the first coroutine objects, task registries (WeakSet, anyio task states)",
     ("TaskGroup.start_soon",)),
    ("mailbox receive wait: anyio Event -> asyncio.Event (deque) + waiter Future, the item "
     "receiver and its waiting_receivers entry, the WouldBlock exception and its traceback, "
     "alive while receive() waits inside its except block",
     ("MemoryObjectReceiveStream.receive",)),
    ("mailbox: memory object stream pair, state, buffer deque, two OrderedDicts",
     ("create_memory_object_stream",)),
    ("idle timeout: CancelScope + the loop's TimerHandle for its deadline",
     ("move_on_after", "CancelScope.__enter__")),
    ("the Actor object and its entry in the runtime's dict of actors",
     ("Placement._activate",)),
    ("the actor key (a str the caller made)", ("@bench/",)),
    ("the last message handled (Run, WorkflowRow: ids, input, timestamps), still "
     "referenced while the actor idles", ("Runtime.start_workflow",)),
    ("coroutine frames of runtime code (Actor.run and what it awaits)", ("runtime/",)),
]


@functools.cache
def _functions_in(filename: str) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of each function in a loaded file."""
    found: list[tuple[int, int, str]] = []
    seen: set[int] = set()

    def walk(code: types.CodeType) -> None:
        if id(code) in seen or code.co_filename != filename:
            return
        seen.add(id(code))
        lines = [line for _, _, line in code.co_lines() if line is not None]
        if lines and code.co_name != "<module>":
            found.append((min(lines), max(lines), code.co_qualname))
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                walk(const)

    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == filename:
            for value in vars(module).values():
                for fn in _functions_of(value):
                    walk(fn.__code__)
    return found


def _functions_of(value: Any) -> list[types.FunctionType]:
    if isinstance(value, types.FunctionType):
        return [value]
    if isinstance(value, type):
        out = []
        for attr in vars(value).values():
            attr = getattr(attr, "__func__", attr)
            attr = getattr(attr, "fget", attr)
            if isinstance(attr, types.FunctionType):
                out.append(attr)
        return out
    return []


@functools.cache
def _frame_name(filename: str, lineno: int) -> str:
    """"path:Qualified.name" of the innermost loaded function holding that line."""
    best: tuple[int, str] | None = None
    for first, last, name in _functions_in(filename):
        if first <= lineno <= last and (best is None or last - first < best[0]):
            best = (last - first, name)
    short = filename.rsplit("site-packages/", 1)[-1].replace(str(ROOT) + "/", "")
    return f"{short}:{best[1] if best else '?'}"


def _part(traceback: tracemalloc.Traceback) -> str:
    names = [_frame_name(frame.filename, frame.lineno) for frame in traceback]
    for part, markers in _PARTS:
        for marker in markers:
            if marker.startswith("@"):
                if names and names[-1].startswith(marker[1:]):  # oldest .. most recent
                    return part
            elif any(marker in name for name in names):
                return part
    return "other"


def _breakdown(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, count: int
) -> dict[str, Any]:
    diffs = after.compare_to(before, "traceback")
    parts: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for diff in diffs:
        part = parts[_part(diff.traceback)]
        part[0] += diff.size_diff
        part[1] += diff.count_diff
    return {
        "bytes_per_actor": round(sum(d.size_diff for d in diffs) / count),
        "blocks_per_actor": round(sum(d.count_diff for d in diffs) / count, 1),
        "parts": [
            {"part": name, "bytes": round(size / count), "blocks": round(blocks / count, 1)}
            for name, (size, blocks) in sorted(parts.items(), key=lambda p: -p[1][0])
        ],
    }


async def _profile(journal: PostgresJournal, count: int, concurrency: int) -> dict[str, Any]:
    """tracemalloc over `count` actors: passivated, then active and idle."""
    tracemalloc.start(10)
    try:
        async with _runtime(journal, 0.2) as runtime:
            # One traced round first, so one-off growth (caches, tables) is not billed.
            await activate(runtime, max(100, count // 2), "profile-warmup", concurrency)
            await all_passivated(runtime, 60)
            gc.collect()
            before_bytes = tracemalloc.get_traced_memory()[0]
            await activate(runtime, count, "profile-passive", concurrency)
            await all_passivated(runtime, 60)
            gc.collect()
            passivated = (tracemalloc.get_traced_memory()[0] - before_bytes) / count
        async with _runtime(journal, 3600) as runtime:
            gc.collect()
            before = tracemalloc.take_snapshot()
            await activate(runtime, count, "profile-active", concurrency)
            gc.collect()
            after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()  # the analysis below runs untraced, hence fast
    return {"actors": count, "active_idle": _breakdown(before, after, count),
            "passivated_bytes_per_actor": round(passivated, 1)}


# -- the two measuring processes ---------------------------------------------------------


async def child(
    kind: str, dsn: str, actors: int, profile_actors: int, concurrency: int, idle: float
) -> dict[str, Any]:
    journal = await PostgresJournal.connect(dsn, min_size=2, max_size=4)
    try:
        async with _runtime(journal, 0.2) as runtime:  # warm code paths, pool, caches
            await activate(runtime, 2000, f"{kind}-warmup", concurrency)
            await all_passivated(runtime, 60)
        baseline, objects = rss(), len(gc.get_objects())
        result: dict[str, Any] = {"rss_baseline_mib": round(baseline / 2**20, 1)}
        if kind == "active":
            async with _runtime(journal, 3600) as runtime:
                rate = await activate(runtime, actors, kind, concurrency)
                after = rss()
                result["actors_still_active"] = runtime.statistics().active_actors
        else:
            async with _runtime(journal, idle) as runtime:
                rate = await activate(runtime, actors, kind, concurrency)
                result["seconds_to_passivate_all"] = round(await all_passivated(runtime, 120), 2)
                after = rss()
        result |= {
            "rss_mib": round(after / 2**20, 1),
            "bytes_per_actor": round((after - baseline) / actors),
            "gc_objects_per_actor": round((len(gc.get_objects()) - objects) / actors, 2),
            "activations_per_s": round(rate),
        }
        if kind == "passivated" and profile_actors:
            result["profile"] = await _profile(journal, profile_actors, concurrency)
        return result
    finally:
        await journal.aclose()


async def run(actors: int, profile_actors: int, concurrency: int, idle: float) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    # A database each: two runtimes on one database would be two nodes fencing
    # each other off the same partitions.
    async with bench_database("memory_active") as active_dsn, \
            bench_database("memory_passivated") as passivated_dsn:
        dsns = {"active": active_dsn, "passivated": passivated_dsn}

        async def measure(kind: str) -> None:
            dsn = dsns[kind]
            done = await anyio.run_process(
                [sys.executable, "-m", "bench.memory", "--child", kind, "--dsn", dsn,
                 "--actors", str(actors), "--profile-actors", str(profile_actors),
                 "--concurrency", str(concurrency), "--idle-timeout", str(idle)],
                cwd=ROOT, stderr=None,
            )
            results[kind] = msgspec.json.decode(done.stdout)

        async with anyio.create_task_group() as tg:
            tg.start_soon(measure, "active")
            tg.start_soon(measure, "passivated")
    active, passivated = results["active"], results["passivated"]
    return {
        "bench": "memory",
        "actors": actors,
        "journal": "PostgresJournal (journal data is not in the measured processes)",
        "bytes_per_active_idle_actor": active["bytes_per_actor"],
        "bytes_per_passivated_actor": passivated["bytes_per_actor"],
        "python_heap_bytes_per_active_idle_actor":
            passivated.get("profile", {}).get("active_idle", {}).get("bytes_per_actor"),
        "python_heap_bytes_per_passivated_actor":
            passivated.get("profile", {}).get("passivated_bytes_per_actor"),
        "idle_timeout_s": idle,
        "active": {k: v for k, v in active.items()},
        "passivated": {k: v for k, v in passivated.items() if k != "profile"},
        "profile": passivated.get("profile"),
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench memory")
    parser.add_argument("--actors", type=int, default=100_000)
    parser.add_argument("--profile-actors", type=int, default=1000,
                        help="actors for the tracemalloc profile (0: skip it)")
    parser.add_argument("--concurrency", type=int, default=256,
                        help="concurrent start_workflow calls while activating")
    parser.add_argument("--idle-timeout", type=float, default=1.0,
                        help="idle_timeout of the passivating runtime (seconds)")
    parser.add_argument("--child", choices=["active", "passivated"], help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        emit(anyio.run(child, args.child, args.dsn, args.actors, args.profile_actors,
                       args.concurrency, args.idle_timeout))
        return
    emit(anyio.run(run, args.actors, args.profile_actors, args.concurrency, args.idle_timeout))


if __name__ == "__main__":
    main()
