"""Application versions (runtime/versions.py), the onboarding reminder behind its
patch, RETINUE_WORKFLOWS, and what a trace says of versions and parking."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from actors import Onboarding
from actors.identity import customer_actor_key, customer_id_for
from actors.messages import CustomerInvited, InviteCustomer, VerifyCustomer
from actors.onboarding import REMINDER_BEFORE_EXPIRY, reminder_time
from actors.projections import MESSAGE
from bench.polling import eventually
from journal import MemoryJournal, StepRecord, WorkflowRow
from runtime import APP_VERSION_ENV, Runtime, VirtualClock, app_version, workflow_spans
from runtime.testing import open_test_runtime
from server import load_workflows, parse_config
from tests.deploy_versions import VersionA, VersionC

from .support import wait_status

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


async def _flow(ctx: Any, _: None) -> None:
    return None


async def _other(ctx: Any, _: None) -> int:
    return 1


# -- versions ---------------------------------------------------------------------------


def test_the_version_is_a_hash_of_the_workflows_code_unless_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(APP_VERSION_ENV, raising=False)
    one = app_version({"flow": _flow})
    assert len(one) == 12 and int(one, 16) >= 0
    assert app_version({"flow": _flow}) == one  # stable
    assert app_version({"flow": _other}) != one  # other code
    assert app_version({"renamed": _flow}) != one
    versions = {app_version({"invite": cls().invite_customer})
                for cls in (VersionA, Onboarding, VersionC)}
    assert len(versions) == 3  # a subclass that overrides a helper is another version
    assert app_version({"builtin": len}) == app_version({"builtin": len})  # no source: its name
    monkeypatch.setenv(APP_VERSION_ENV, "2026.11.30")
    assert app_version({"flow": _flow}) == "2026.11.30"


async def test_a_runtime_stamps_its_version_on_workflows_children_and_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(APP_VERSION_ENV, "v7")

    async def parent(ctx: Any, _: None) -> None:
        await ctx.step("one", lambda: 1)
        await ctx.start_child("kid", None)

    journal = MemoryJournal()
    async with Runtime(journal) as rt:
        rt.register(parent, name="parent")
        rt.register(_flow, name="kid")
        assert rt.app_version == "v7"
        row, _ = await rt.start_workflow("parent", None, actor_key="a:1")
        assert row.app_version == "v7"
        await wait_status(journal, f"{row.id}:2", "completed")
    kid = await journal.get_workflow(f"{row.id}:2")
    assert kid is not None and kid.app_version == "v7"
    assert {s.app_version for s in await journal.load_steps(row.id)} == {"v7"}


# -- the reminder (version B) ---------------------------------------------------------------


def test_the_reminder_is_two_days_before_expiry_when_there_is_time_for_one() -> None:
    invited = CustomerInvited(customer_id="c", email="a@example.com", token="t",
                              invited_at=T0, workflow_id="w")
    assert reminder_time(invited, timedelta(days=7)) == T0 + timedelta(days=5)
    assert reminder_time(invited, REMINDER_BEFORE_EXPIRY) is None


async def test_a_new_invitation_is_reminded_then_verifies() -> None:
    clock = VirtualClock()
    journal = MemoryJournal(clock=clock.timestamp)
    onboarding = Onboarding()
    async with open_test_runtime(journal=journal, clock=clock) as runtime:
        onboarding.register(runtime)
        workflow_id, _ = await onboarding.invite(runtime, InviteCustomer(email="ada@example.com"))
        await wait_status(journal, workflow_id, "waiting")
        await clock.advance(days=5, minutes=1)  # the reminder is due

        async def reminded() -> bool:
            # The reminder child started, and the second wait (the rest) began.
            steps = [(s.kind, s.name, s.status) for s in await journal.load_steps(workflow_id)]
            return steps[-1] == ("wait", "signal:verify", "started") and steps.count(
                ("child", "communicate_to_customer", "completed")) == 2

        await eventually(reminded, within=5, interval=0.01, what="the reminder to be sent")
        cid = customer_id_for("ada@example.com")
        [invited] = [e for e in await journal.read_events(customer_actor_key(cid))
                     if e.type == "CustomerInvited"]
        command = VerifyCustomer(customer_id=cid, token=invited.payload["token"],
                                 request_id="r1")
        await runtime.signal(workflow_id, "verify", command)
        done = await runtime.wait_for_finish(workflow_id, 5)
        assert done is not None and done.status == "completed"
        children = await journal.children(workflow_id)
        for child in children:
            await wait_status(journal, child.id, "completed")
    kinds = sorted(d.data["type"] for d in await journal.list_documents(MESSAGE, owner=cid))
    assert kinds == ["invitation", "reminder", "welcome"]
    steps = [(s.kind, s.name) for s in await journal.load_steps(workflow_id)]
    assert steps.count(("patch", "verification-reminder")) == 1


# -- RETINUE_WORKFLOWS ----------------------------------------------------------------------


def test_retinue_workflows_names_another_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_workflows(None) is Onboarding
    assert load_workflows("tests.deploy_versions:VersionC") is VersionC
    config = parse_config([], environ={"RETINUE_WORKFLOWS": "tests.deploy_versions:VersionA"})
    assert config.workflows == "tests.deploy_versions:VersionA"
    for bad, says in [("tests.deploy_versions", "is not module:attr"),
                      ("tests.no_such_module:X", "name an importable module"),
                      ("tests.deploy_versions:Nope", "name an importable module"),
                      ("tests.deploy_versions:__doc__", "is not callable")]:
        with pytest.raises(SystemExit) as exit_info:
            parse_config([], environ={"RETINUE_WORKFLOWS": bad})
        assert exit_info.value.code == 2
        assert says in capsys.readouterr().err, bad


# -- traces -------------------------------------------------------------------------------


def test_a_parked_workflows_trace_carries_the_mismatch_and_the_versions() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the `opentelemetry` extra is not installed")
    from opentelemetry.trace import StatusCode

    from runtime.tracing import to_otel_spans

    mismatch = {"seq": 1, "expected": "step b", "found": "step a", "found_version": "v1",
                "running_version": "v2"}
    row = WorkflowRow(id="wf", name="flow", actor_key="a:1", partition=0, status="parked",
                      error="mismatch", created_at=T0, updated_at=T0, app_version="v1",
                      parked=mismatch, trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
    step = StepRecord(workflow_id="wf", seq=1, name="a", status="completed", started_at=T0,
                      finished_at=T0, app_version="v1")
    spans = workflow_spans(row, [step])
    assert (spans[0].app_version, spans[0].parked) == ("v1", mismatch)
    assert spans[1].app_version == "v1" and spans[1].parked is None
    root, child = to_otel_spans(spans)
    assert root.status.status_code == StatusCode.ERROR
    assert root.attributes is not None and root.attributes["retinue.app_version"] == "v1"
    [event] = root.events
    assert event.name == "parked" and event.attributes is not None
    assert dict(event.attributes) == {f"retinue.parked.{k}": v for k, v in mismatch.items()}
    assert not child.events
