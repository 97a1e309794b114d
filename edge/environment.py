"""Durations read from the environment, one way for the server and the operator
CLI, so a setting that one accepts the other reads the same."""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["env_seconds"]


def env_seconds(
    environ: Mapping[str, str], name: str, default: float, *, forever: bool = False
) -> float:
    """The seconds `name` holds in `environ` (`default` when unset or empty).
    `forever`: 0 is allowed too (keep for ever, never expire). Raises ValueError
    saying what to set."""
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if math.isfinite(value) and (value >= 0 if forever else value > 0):
        return value
    if forever:
        raise ValueError(f"{name}={raw!r} is not a number of seconds (e.g. 604800 for 7 days; "
                         "0 keeps for ever)")
    raise ValueError(f"{name}={raw!r} is not a positive number of seconds")
