"""The dashboard's numbers: a ring buffer of samples of the runtime's registry, and
the rates and latency percentiles (Prometheus' histogram_quantile maths) over them."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final, NamedTuple

from prometheus_client import CollectorRegistry

from runtime import Runtime

from .schemas import (
    Latency,
    OverviewReply,
    Percentiles,
    Rates,
    RuntimeNumbers,
    Sample,
    every_status,
)

__all__ = ["Sampler", "quantile"]

_SAMPLE_EVERY: Final = 1.0
_SAMPLES_KEPT: Final = 15 * 60
_MAX_POINTS: Final = 120
# Registry samples summed over their labels: sample name -> our name.
_COUNTERS: Final = {
    "retinue_workflows_started_total": "started",
    "retinue_steps_total": "steps",
    "retinue_passivations_total": "passivations",
    "retinue_actor_restarts_total": "actor_restarts",
    "retinue_dead_letters_total": "dead_letters",
    "retinue_recovery_replays_total": "replays",
}
_HTTP_BUCKETS: Final = "retinue_http_request_duration_seconds_bucket"
_HISTOGRAMS: Final = {
    _HTTP_BUCKETS: "commands",
    "retinue_step_duration_seconds_bucket": "steps",
    "retinue_journal_append_seconds_bucket": "journal_append",
}


class _Snapshot(NamedTuple):
    """Cumulative counters and histogram buckets ({le: count}) at Unix time `t`."""

    t: float
    counters: dict[str, float]
    buckets: dict[str, dict[float, float]]
    in_flight: int
    mailbox_depth: int
    active_actors: int


def _read_registry(registry: CollectorRegistry) -> tuple[dict[str, float],
                                                          dict[str, dict[float, float]]]:
    counters: dict[str, float] = dict.fromkeys(
        [*_COUNTERS.values(), "completed", "failed", "cancelled", "step_errors", "commands",
         "command_errors"], 0.0)
    buckets: dict[str, dict[float, float]] = {name: {} for name in _HISTOGRAMS.values()}
    for family in registry.collect():
        for sample in family.samples:
            _count(sample.name, sample.labels, sample.value, counters, buckets)
    return counters, buckets


def _count(name: str, labels: Mapping[str, str], value: float, counters: dict[str, float],
           buckets: dict[str, dict[float, float]]) -> None:
    """Add one registry sample to the snapshot. HTTP numbers count POSTs only: the
    commands and operator actions, not the dashboard's own polling."""
    if name in _COUNTERS:
        counters[_COUNTERS[name]] += value
        if name == "retinue_steps_total" and labels.get("outcome") == "error":
            counters["step_errors"] += value
    elif name == "retinue_workflows_finished_total" and labels.get("outcome") in counters:
        counters[labels["outcome"]] += value
    elif name == "retinue_http_requests_total" and labels.get("method") == "POST":
        counters["commands"] += value
        if labels.get("status", "").startswith("5"):
            counters["command_errors"] += value
    elif name in _HISTOGRAMS and (name != _HTTP_BUCKETS or labels.get("method") == "POST"):
        histogram = buckets[_HISTOGRAMS[name]]
        bound = float(labels["le"])
        histogram[bound] = histogram.get(bound, 0.0) + value


def quantile(q: float, start: Mapping[float, float], end: Mapping[float, float]
              ) -> float | None:
    """The q-quantile of the observations between two cumulative bucket readings,
    interpolated within its bucket (as Prometheus' histogram_quantile does)."""
    bounds = sorted(end)
    counts = [end[b] - start.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            share = (rank - below) / (count - below) if count > below else 1.0
            return round(lower + (bound - lower) * share, 6)
        lower, below = bound, count
    return lower


def _percentiles(start: Mapping[float, float], end: Mapping[float, float]) -> Percentiles:
    total = end.get(math.inf, 0.0) - start.get(math.inf, 0.0)
    return Percentiles(count=int(total), p50=quantile(0.5, start, end),
                       p90=quantile(0.9, start, end), p99=quantile(0.99, start, end))


class Sampler:
    """Samples the runtime's registry at most once a second into a ring buffer
    (15 minutes), for the dashboard's rates, percentiles and charts.

    Requests tick it (the app owns no background task): a quiet server has fewer,
    longer intervals, and since the samples are cumulative, each interval's rates
    are exact averages over it."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._samples: deque[_Snapshot] = deque(maxlen=_SAMPLES_KEPT)
        self._last = -math.inf
        self.tick()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last >= _SAMPLE_EVERY:
            self._last = now
            self._samples.append(self._snapshot())

    def _snapshot(self) -> _Snapshot:
        counters, buckets = _read_registry(self._runtime.metrics.registry)
        stats = self._runtime.statistics()
        return _Snapshot(time.time(), counters, buckets, stats.in_flight, stats.mailbox_depth,
                         stats.active_actors)

    def overview(self, counts: Mapping[str, int], minutes: int) -> OverviewReply:
        self.tick()
        cutoff = time.time() - minutes * 60
        # The stored samples in the window, the last one before it (a quiet server has
        # long intervals: one may straddle the window's start), and one of this instant.
        before = [s for s in self._samples if s.t < cutoff][-1:]
        window = before + [s for s in self._samples if s.t >= cutoff] + [self._snapshot()]
        first, last = window[0], window[-1]
        stats = self._runtime.statistics()
        return OverviewReply(
            now=datetime.now(UTC),
            counts=every_status(counts),
            total=sum(counts.values()),
            runtime=RuntimeNumbers(
                ready=stats.ready, active_actors=stats.active_actors,
                mailbox_depth=stats.mailbox_depth, in_flight=stats.in_flight,
                timers=stats.timers, **{name: int(last.counters[name]) for name in (
                    "passivations", "actor_restarts", "dead_letters", "replays")},
            ),
            window_seconds=round(last.t - first.t, 3),
            rates=_rates(first, last),
            latency=Latency(**{name: _percentiles(first.buckets[name], last.buckets[name])
                               for name in _HISTOGRAMS.values()}),
            samples=[_sample(a, b) for a, b in _pairs(_thinned(window))],
        )


def _thinned(window: Sequence[_Snapshot]) -> list[_Snapshot]:
    """At most _MAX_POINTS + 1 snapshots, always the last: cumulative values make
    the coarser intervals exact."""
    step = max(1, math.ceil((len(window) - 1) / _MAX_POINTS))
    return list(window[::-1][::step][::-1])


def _pairs(snapshots: Sequence[_Snapshot]) -> Iterable[tuple[_Snapshot, _Snapshot]]:
    return zip(snapshots, snapshots[1:], strict=False)


def _per_second(a: _Snapshot, b: _Snapshot, name: str) -> float:
    seconds = b.t - a.t
    return round((b.counters[name] - a.counters[name]) / seconds, 4) if seconds > 0 else 0.0


def _fraction(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole > 0 else 0.0


def _rates(a: _Snapshot, b: _Snapshot) -> Rates:
    def delta(name: str) -> float:
        return b.counters[name] - a.counters[name]

    finished = delta("completed") + delta("failed") + delta("cancelled")
    return Rates(
        **{name: _per_second(a, b, name) for name in (
            "started", "completed", "failed", "cancelled", "steps", "step_errors", "commands",
            "command_errors")},
        workflow_error_rate=_fraction(delta("failed"), finished),
        step_error_rate=_fraction(delta("step_errors"), delta("steps")),
    )


def _sample(a: _Snapshot, b: _Snapshot) -> Sample:
    return Sample(
        t=round(b.t, 3), seconds=round(b.t - a.t, 3),
        **{name: _per_second(a, b, name) for name in (
            "started", "completed", "failed", "step_errors", "commands", "command_errors")},
        command_p50=quantile(0.5, a.buckets["commands"], b.buckets["commands"]),
        command_p99=quantile(0.99, a.buckets["commands"], b.buckets["commands"]),
        step_p50=quantile(0.5, a.buckets["steps"], b.buckets["steps"]),
        step_p99=quantile(0.99, a.buckets["steps"], b.buckets["steps"]),
        in_flight=b.in_flight, mailbox_depth=b.mailbox_depth, active_actors=b.active_actors,
    )


