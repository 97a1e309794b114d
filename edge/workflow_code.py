"""The workflow code a deployment serves, chosen in ONE place.

server.py registers it on the Runtime it serves with (`register_workflows`);
`retinue replay-check` replays stored histories against the very same
registrations (`served_workflows`), so a check before a deploy tests exactly
the code that deploy would serve: the default onboarding workflows, or the
version RETINUE_WORKFLOWS=module:attr names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from datetime import timedelta

from prometheus_client import CollectorRegistry

from actors import DEFAULT_VERIFICATION_TTL, Communicator, Onboarding
from journal import Journal
from runtime import Runtime, WorkflowFn

from .environment import env_seconds

__all__ = ["OnboardingFactory", "load_workflows", "register_workflows", "served_workflows"]

# What builds the onboarding app: Onboarding, a subclass (another version of its
# workflows), or any callable taking its keyword arguments.
OnboardingFactory = Callable[..., Onboarding]


def load_workflows(spec: str | None) -> OnboardingFactory:
    """The Onboarding factory `spec` ("module:attr") names; Onboarding for None.
    Raises ValueError with what to fix."""
    if not spec:
        return Onboarding
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"RETINUE_WORKFLOWS={spec!r} is not module:attr "
                         "(e.g. tests.deploy_versions:VersionA)")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"RETINUE_WORKFLOWS={spec!r}: {exc}; name an importable module "
                         "and an attribute of it") from exc
    if not callable(found):
        raise ValueError(f"RETINUE_WORKFLOWS={spec!r} is not callable: name an Onboarding "
                         "subclass or a factory with its keyword arguments")
    factory: OnboardingFactory = found
    return factory


def register_workflows(
    runtime: Runtime, *, workflows: str | None = None,
    communicator: Communicator | None = None,
    verification_ttl: timedelta = DEFAULT_VERIFICATION_TTL,
) -> Onboarding:
    """Register the workflows this deployment serves on `runtime` (`workflows`:
    RETINUE_WORKFLOWS, "module:attr", else the default); the app that starts
    them (the HTTP edge's `create_app` takes it). Raises ValueError for a
    `workflows` it cannot load."""
    onboarding = load_workflows(workflows)(
        communicator=communicator, verification_ttl=verification_ttl)
    onboarding.register(runtime)
    return onboarding


def served_workflows(journal: Journal, environ: Mapping[str, str]) -> Mapping[str, WorkflowFn]:
    """The workflows (by name) a server started with `environ` would serve:
    `register_workflows` on a Runtime that is never opened, so nothing runs and
    nothing is written. Raises ValueError for a setting it cannot take."""
    runtime = Runtime(journal, registry=CollectorRegistry())
    register_workflows(runtime, workflows=environ.get("RETINUE_WORKFLOWS") or None,
                       verification_ttl=_verification_ttl(environ))
    return runtime.workflows


def _verification_ttl(environ: Mapping[str, str]) -> timedelta:
    """RETINUE_VERIFICATION_TTL as the server reads it (seconds, positive)."""
    try:
        seconds = env_seconds(environ, "RETINUE_VERIFICATION_TTL",
                              DEFAULT_VERIFICATION_TTL.total_seconds())
    except ValueError as exc:
        raise ValueError(f"{exc}; set it as the servers have it") from exc
    return timedelta(seconds=seconds)
