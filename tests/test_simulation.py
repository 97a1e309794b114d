"""The deterministic simulation (tests/simulation): seeds that must keep every
invariant, proof that a seed replays exactly, and proof that the simulation
catches the double-run bug when the runtime's shortcut is put back.

`make test` runs RETINUE_SIM_SEEDS seeds (default 300); `make soak` runs
RETINUE_SIM_SOAK_SEEDS more (default 5000). Seeds run with PYTHONHASHSEED=0:
in this process when it has it, else in a child process that does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from runtime import Runtime
from tests.simulation import Options, run_seed, switches_missing

ROOT: Final = Path(__file__).resolve().parent.parent
SEEDS: Final = int(os.environ.get("RETINUE_SIM_SEEDS", "300"))
SOAK_SEEDS: Final = int(os.environ.get("RETINUE_SIM_SOAK_SEEDS", "5000"))
SOAK_FIRST: Final = 10_000  # soak seeds do not repeat the default ones
# Seeds per test: each test stays far below pytest's 120 s timeout.
CHUNK: Final = 50
SOAK_CHUNK: Final = 150

needs_shortcut = pytest.mark.skipif(
    not hasattr(Runtime, "trust_stale_rows"),
    reason="this build's Runtime has no trust_stale_rows switch",
)
needs_no_guards = pytest.mark.skipif(
    switches_missing(Options(guards=False)) is not None,
    reason="this build's MemoryJournal has no guards switch",
)


@dataclasses.dataclass(frozen=True)
class Failure:
    seed: int
    replay: str
    violations: list[str]


DEFAULT: Final = Options()


def run_seeds(seeds: range, options: Options = DEFAULT, *, stop_at_first: bool = False,
              child: bool = False) -> tuple[list[Failure], dict[int, str]]:
    """Simulate `seeds`: (the seeds that broke an invariant, every seed's digest)."""
    if child or os.environ.get("PYTHONHASHSEED") != "0":
        return _in_child(seeds, options, stop_at_first)
    failures, digests = [], {}
    for seed in seeds:
        result = run_seed(seed, options)
        digests[seed] = result.digest
        if result.violations:
            failures.append(Failure(seed, result.replay, result.violations))
            if stop_at_first:
                break
    return failures, digests


def _in_child(seeds: range, options: Options, stop_at_first: bool
              ) -> tuple[list[Failure], dict[int, str]]:
    command = [sys.executable, "-m", "tests.simulation", "--seeds",
               f"{seeds.start}:{seeds.stop}", "--digests"]
    command += ["--shortcut"] * options.shortcut + ["--no-guards"] * (not options.guards)
    command += ["--stop-at-first"] * stop_at_first
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "0"},
                          capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode in (0, 1), f"{' '.join(command)} failed:\n{done.stderr[-3000:]}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    failures = [Failure(f["seed"], f["replay"], f["violations"]) for f in summary["failures"]]
    return failures, {int(seed): digest for seed, digest in summary["digests"].items()}


def chunks(first: int, count: int, size: int) -> list[range]:
    return [range(start, min(start + size, first + count))
            for start in range(first, first + count, size)]


def report(failures: list[Failure]) -> str:
    lines = [f"{len(failures)} seeds broke an invariant:"]
    for failure in failures:
        lines += [f"seed {failure.seed}:", *(f"  {v}" for v in failure.violations[:8]),
                  failure.replay]
    return "\n".join(lines)


def first_caught(options: Options, wanted: tuple[str, ...]) -> Failure | None:
    """The first default seed that breaks a `wanted` invariant with `options` and
    keeps every invariant without the shortcut (so the shortcut is the cause)."""
    start = 0
    while start < SEEDS:
        failures, _ = run_seeds(range(start, SEEDS), options, stop_at_first=True)
        if not failures:
            return None
        failure, start = failures[0], failures[0].seed + 1
        if any(v.startswith(wanted) for v in failure.violations):
            clean, _ = run_seeds(range(failure.seed, failure.seed + 1),
                                 dataclasses.replace(options, shortcut=False))
            if not clean:
                return failure
    return None


# -- every seed keeps every invariant ---------------------------------------------------


@pytest.mark.parametrize("seeds", chunks(0, SEEDS, CHUNK), ids=lambda r: f"{r.start}-{r.stop}")
def test_seeds_keep_every_invariant(seeds: range) -> None:
    failures, _ = run_seeds(seeds)
    assert not failures, report(failures)


@pytest.mark.soak
@pytest.mark.parametrize("seeds", chunks(SOAK_FIRST, SOAK_SEEDS, SOAK_CHUNK),
                         ids=lambda r: f"{r.start}-{r.stop}")
def test_soak_seeds_keep_every_invariant(seeds: range) -> None:
    failures, _ = run_seeds(seeds)
    assert not failures, report(failures)


# -- determinism --------------------------------------------------------------------------


def test_a_seed_replays_exactly() -> None:
    """Two processes (and this one, when it can) trace the same journal calls
    with the same outcomes for each seed; different seeds, different traces."""
    seeds = range(0, 6)
    _, first = run_seeds(seeds, child=True)
    _, second = run_seeds(seeds, child=True)
    assert first == second
    assert len(set(first.values())) == len(seeds)
    if os.environ.get("PYTHONHASHSEED") == "0":
        assert {seed: run_seed(seed).digest for seed in seeds} == first


# -- the old bug, put back, is caught -------------------------------------------------------


@needs_shortcut
def test_the_shortcut_shows_in_the_duplicate_run_counter() -> None:
    """Runtimes that trust a stale row run a workflow twice; the journal refuses
    the second run, and retinue_duplicate_runs_total counts it."""
    caught = first_caught(Options(shortcut=True), ("[no-duplicate-runs]",))
    assert caught is not None, f"no seed of 0..{SEEDS - 1} caught the shortcut"


@needs_shortcut
@needs_no_guards
def test_without_the_guards_the_shortcut_breaks_the_semantic_invariants() -> None:
    """With the journal's guards off too, the second run is written: an invite
    workflow logs two outcomes (invited, then 'already invited'), its rows are
    rewritten."""
    caught = first_caught(Options(shortcut=True, guards=False), ("[one-invite-outcome]",))
    assert caught is not None, f"no seed of 0..{SEEDS - 1} caught the shortcut"
    assert any(v.startswith("[rows-never-rewritten]") for v in caught.violations), \
        report([caught])
