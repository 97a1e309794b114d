"""The HTTP edge's Prometheus metrics, on the runtime's registry so one scrape has all.

The names are part of the contract (dashboards and alerts use them):
retinue_http_requests_total{method,route,status}, retinue_http_request_duration_seconds,
retinue_commands_accepted_total{type}, retinue_commands_deduplicated_total{type},
retinue_commands_rejected_total{type,reason}.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["HttpMetrics", "http_metrics"]


class HttpMetrics:
    """The HTTP edge's metrics, on the runtime's registry so one scrape has all."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "retinue_http_requests", "HTTP requests answered, by route and status.",
            ["method", "route", "status"], registry=registry,
        )
        self.latency = Histogram(
            "retinue_http_request_duration_seconds", "Time to answer an HTTP request.",
            ["method", "route"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.accepted = Counter(
            "retinue_commands_accepted", "Commands journaled, by type.", ["type"],
            registry=registry,
        )
        self.deduplicated = Counter(
            "retinue_commands_deduplicated",
            "Commands answered from an earlier one with the same Idempotency-Key.", ["type"],
            registry=registry,
        )
        self.rejected = Counter(
            "retinue_commands_rejected", "Commands refused before anything was journaled.",
            ["type", "reason"], registry=registry,
        )


_metrics_by_registry: WeakKeyDictionary[CollectorRegistry, HttpMetrics] = WeakKeyDictionary()


def http_metrics(registry: CollectorRegistry) -> HttpMetrics:
    """The edge's metrics on `registry`, created there on first use."""
    # Collectors register once per registry; a second app on one runtime shares them.
    metrics = _metrics_by_registry.get(registry)
    if metrics is None:
        metrics = _metrics_by_registry[registry] = HttpMetrics(registry)
    return metrics
