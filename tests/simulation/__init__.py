"""A deterministic simulation of a Retinue cluster (after FoundationDB's simulator
and TigerBeetle's VOPR): one integer seed drives everything that varies.

Per seed (world.run_seed): 1-3 Runtimes share one MemoryJournal on a virtual-time
event loop whose ready queue the seed shuffles (vloop); each node reaches the
journal through its own fault injector (faults: outages, lost answers, stalls,
kills, dropped and doubled wake-ups); clients invite customers (some twice),
verify them with the right token, a wrong one or never, and start a generic
workflow (driver); nodes crash, leave and come back. Then everything heals,
time runs until nothing can move, and the invariant checkers run (invariants).
A failing seed prints the one command that replays it:

    PYTHONHASHSEED=0 .venv/bin/python -m tests.simulation --seed N

Modules: vloop (the loop), ledger (trace digest, rewrite ledger), faults,
workload (what the nodes run, the outside world), cluster (node lives),
driver (plan and clients), invariants, world (one seed), __main__ (the CLI).
"""

from .world import Options, SeedResult, replay_command, run_seed, switches_missing

__all__ = ["Options", "SeedResult", "replay_command", "run_seed", "switches_missing"]
