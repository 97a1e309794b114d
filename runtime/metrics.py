"""The runtime's Prometheus metrics, on a registry the caller owns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["RuntimeMetrics"]

_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SLOW_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class RuntimeMetrics:
    """Counters, histograms and gauges of one Runtime. Pass an explicit registry
    so that several runtimes (tests) do not collide on the global one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._step_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self.workflows_started = Counter(
            "retinue_workflows_started", "Workflows accepted.", ["workflow"], registry=registry
        )
        self.workflows_finished = Counter(
            "retinue_workflows_finished", "Workflows that ended, by outcome.",
            ["workflow", "outcome"], registry=registry,
        )
        self.workflow_duration = Histogram(
            "retinue_workflow_duration_seconds", "From acceptance to the end of a workflow.",
            ["workflow"], buckets=_SLOW_BUCKETS, registry=registry,
        )
        self.steps = Counter(
            "retinue_steps", "Step attempts run, by outcome.",
            ["workflow", "step", "outcome"], registry=registry,
        )
        self.step_duration = Histogram(
            "retinue_step_duration_seconds", "Time spent in a step function.",
            ["workflow", "step"], buckets=_FAST_BUCKETS, registry=registry,
        )
        self.journal_append = Histogram(
            "retinue_journal_append_seconds", "Latency of a journal append (commit).",
            buckets=_FAST_BUCKETS, registry=registry,
        )
        self.journal_unavailable = Counter(
            "retinue_journal_unavailable", "Journal calls that found the database unreachable.",
            registry=registry,
        )
        self.actor_restarts = Counter(
            "retinue_actor_restarts", "Actors restarted after a crash.", registry=registry
        )
        self.replays = Counter(
            "retinue_recovery_replays", "Workflows resumed by replay when the runtime opened.",
            registry=registry,
        )
        self.duplicate_runs = Counter(
            "retinue_duplicate_runs",
            "Runs of a workflow the journal refused because another run had moved it on "
            "(the run stopped and the workflow went on from the journal). 0 in a healthy "
            "cluster: each one is a race that the database fence caught.",
            registry=registry,
        )
        self.dead_letters = Counter(
            "retinue_dead_letters", "Messages moved to the dead letters.", registry=registry
        )
        self.active_actors = Gauge(
            "retinue_active_actors", "Actors in memory now.", registry=registry
        )
        self.mailbox_depth = Gauge(
            "retinue_mailbox_depth", "Messages waiting in all mailboxes.", registry=registry
        )
        # Journal truth, not this node's: set from a count query (Runtime.count_parked)
        # on every scrape, so every node of a cluster reports the same numbers.
        self.workflows_parked = Gauge(
            "retinue_workflows_parked",
            "Workflows parked because their replayed code disagrees with their journal "
            "(deploy code that matches, or retry or cancel them), by workflow.",
            ["workflow"], registry=registry,
        )
        self.passivations = Counter(
            "retinue_passivations", "Idle actors stopped to free memory.", registry=registry
        )

    def step_finished(self, workflow: str, step: str, outcome: str, seconds: float) -> None:
        """Count one step attempt and its duration. The labelled children are
        cached: prometheus_client's labels() costs more than the update."""
        key = (workflow, step, outcome)
        children = self._step_children.get(key)
        if children is None:
            children = self._step_children[key] = (
                self.steps.labels(workflow, step, outcome),
                self.step_duration.labels(workflow, step),
            )
        counter, histogram = children
        counter.inc()
        histogram.observe(seconds)

    def watch(self, active_actors: Callable[[], float], mailbox_depth: Callable[[], float]) -> None:
        """Read the gauges from the runtime at scrape time."""
        self.active_actors.set_function(active_actors)
        self.mailbox_depth.set_function(mailbox_depth)
