"""The workflow code a deployment serves, chosen in ONE place.

server.py registers it on the Runtime it serves with (`register_workflows`);
`retinue replay-check` replays stored histories against the very same
registrations (`served_workflows`), so a check before a deploy tests exactly
the code that deploy would serve, however that code is chosen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import timedelta

from prometheus_client import CollectorRegistry

from actors import DEFAULT_VERIFICATION_TTL, Communicator, Onboarding
from journal import Journal
from runtime import Runtime, WorkflowFn

__all__ = ["App", "register_workflows", "served_workflows"]


# What builds the onboarding app: Onboarding, a subclass (another version of its
# workflows), or any callable taking its keyword arguments.
App = Callable[..., Onboarding]


def register_workflows(
    runtime: Runtime, *, communicator: Communicator | None = None,
    verification_ttl: timedelta = DEFAULT_VERIFICATION_TTL, app: App = Onboarding,
) -> Onboarding:
    """Register the workflows this deployment serves on `runtime`; the app that
    starts them (the HTTP edge's `create_app` takes it)."""
    # RETINUE_WORKFLOWS (which code to serve) is chosen here, so replay-check follows it.
    onboarding = app(communicator=communicator, verification_ttl=verification_ttl)
    onboarding.register(runtime)
    return onboarding


def served_workflows(
    journal: Journal, environ: Mapping[str, str], *, app: App = Onboarding
) -> Mapping[str, WorkflowFn]:
    """The workflows (by name) a server started with `environ` would serve:
    `register_workflows` on a Runtime that is never opened, so nothing runs and
    nothing is written. Raises ValueError for a setting it cannot take."""
    runtime = Runtime(journal, registry=CollectorRegistry())
    register_workflows(runtime, verification_ttl=_verification_ttl(environ), app=app)
    return runtime.workflows


def _verification_ttl(environ: Mapping[str, str]) -> timedelta:
    """RETINUE_VERIFICATION_TTL as the server reads it (seconds, positive)."""
    raw = environ.get("RETINUE_VERIFICATION_TTL")
    if not raw:
        return DEFAULT_VERIFICATION_TTL
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"RETINUE_VERIFICATION_TTL={raw!r} is not a positive number of "
                         "seconds; set it as the servers have it")
    return timedelta(seconds=seconds)
