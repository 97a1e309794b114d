"""Retry policies for steps, restart policies for actors, and waiting out an outage."""

from __future__ import annotations

import random

import msgspec

__all__ = ["RetryPolicy", "RestartPolicy", "DEFAULT_RETRY", "NO_RETRY", "unavailable_backoff"]


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a step that raises is tried again: exponential backoff with full jitter.

    `retry_on` lists the exception types worth another attempt; anything else,
    and NonRetryableError always, fails the step at once.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return float(base * (1 - self.jitter * random.random()))

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        return attempt < self.max_attempts and isinstance(exc, self.retry_on)


class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a crashed actor is restarted, and when its message goes to the dead letters."""

    max_crashes: int = 3
    initial_backoff: float = 0.05
    max_backoff: float = 5.0

    def backoff(self, crashes: int) -> float:
        return float(min(self.max_backoff, self.initial_backoff * 2.0 ** (crashes - 1)))


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)


def unavailable_backoff(outages: int) -> float:
    """Seconds to wait before calling the journal again after `outages` calls in a
    row found the database unreachable (commits, actors, dead-lettering)."""
    return float(min(2.0, 0.05 * 2 ** min(outages, 6)))
