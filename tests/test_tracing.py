"""Traces from journal rows: span ids, parents, attempts and waits; OpenTelemetry export."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from bench.polling import eventually
from journal import Journal, MemoryJournal
from runtime import (
    RetryPolicy,
    Runtime,
    Span,
    TraceExporter,
    WorkflowContext,
    parse_trace_ref,
    parse_traceparent,
    trace_ref,
    trace_spans,
)

from .support import wait_status

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.002)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def test_traceparent_is_parsed_or_ignored_as_the_w3c_spec_says() -> None:
    assert parse_traceparent(f"00-{TRACE}-{CALLER_SPAN}-01") == (TRACE, CALLER_SPAN)
    assert parse_traceparent(f" 00-{TRACE}-{CALLER_SPAN}-00 ") == (TRACE, CALLER_SPAN)
    # A later version may append fields; version 00 may not.
    assert parse_traceparent(f"01-{TRACE}-{CALLER_SPAN}-01-extra") == (TRACE, CALLER_SPAN)
    for bad in (None, "", "garbage", f"00-{TRACE}-{CALLER_SPAN}-01-extra",
                f"ff-{TRACE}-{CALLER_SPAN}-01", f"00-{'0' * 32}-{CALLER_SPAN}-01",
                f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE.upper()}-{CALLER_SPAN}-01"):
        assert parse_traceparent(bad) is None, bad


def test_a_trace_ref_keeps_the_callers_span_and_tolerates_old_values() -> None:
    assert parse_trace_ref(trace_ref(TRACE, CALLER_SPAN)) == (TRACE, CALLER_SPAN)
    assert parse_trace_ref(trace_ref(TRACE)) == (TRACE, None)
    hashed, parent = parse_trace_ref("t")
    assert len(hashed) == 32 and parent is None
    assert parse_trace_ref("t") == (hashed, None)


class Flaky:
    def __init__(self, failures: int) -> None:
        self.failures = failures

    async def call(self) -> str:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the service answered 500")
        return "ok"


def register(rt: Runtime, flaky: Flaky) -> None:
    async def deliver(ctx: WorkflowContext, payload: Any) -> str:
        return await ctx.step("deliver.call", flaky.call, retry=FAST_RETRY)

    async def parent(ctx: WorkflowContext, payload: Any) -> str:
        await ctx.step("prepare", lambda: 1, effect=False)
        await ctx.start_child("deliver", {})
        wake = await ctx.wait_for_signal("go", timeout=60)
        return "signalled" if not wake.timed_out else "timed out"

    rt.register(deliver)
    rt.register(parent)


def by_name(spans: list[Span]) -> dict[str, Span]:
    """Spans by name; a workflow's own span as "wf:<name>" (its start step has its name)."""
    return {("wf:" if span.kind == "workflow" else "") + span.name: span for span in spans}


async def test_spans_name_every_step_attempt_wait_and_child(journal: Journal) -> None:
    flaky = Flaky(failures=1)
    async with Runtime(journal) as rt:
        register(rt, flaky)
        row, _ = await rt.start_workflow("parent", {}, actor_key="a:1",
                                         trace_id=trace_ref(TRACE, CALLER_SPAN))
        [child_id] = [c.id for c in await _eventually_children(journal, row.id)]
        assert (await rt.wait_for_finish(child_id, 5)) is not None
        await wait_status(journal, row.id, "waiting")
        spans = await trace_spans(journal, row.id)

        named = by_name(spans)
        root = named["wf:parent"]
        assert {s.trace_id for s in spans} == {TRACE}
        assert (root.kind, root.parent_span_id, root.remote_parent) == ("workflow", CALLER_SPAN,
                                                                         True)
        assert [s.name for s in spans if s.workflow_id == row.id][1:] == ["prepare", "deliver",
                                                                          "signal:go"]
        wait = named["signal:go"]
        assert (wait.kind, wait.status, wait.finished_at) == ("wait", "started", None)
        assert wait.fire_at is not None and wait.parent_span_id == root.span_id
        start_child = named["deliver"]
        assert start_child.child_workflow_id == child_id
        child_root = next(s for s in spans if s.workflow_id == child_id and s.kind == "workflow")
        assert child_root.parent_span_id == start_child.span_id
        call = named["deliver.call"]
        attempts = [s for s in spans if s.kind == "attempt"]
        assert [(a.attempt, a.status, a.parent_span_id) for a in attempts] == [
            (1, "failed", call.span_id), (2, "completed", call.span_id)]
        assert "answered 500" in (attempts[0].error or "")
        assert attempts[0].finished_at is not None
        assert attempts[0].finished_at <= attempts[1].started_at
        assert len({s.span_id for s in spans}) == len(spans)

        await rt.signal(row.id, "go")
        assert (await rt.wait_for_finish(row.id, 5)) is not None
    # Read again, from rows only: the same ids, so a replay continues the same trace.
    again = by_name(await trace_spans(journal, row.id))
    assert again["wf:parent"].span_id == root.span_id
    assert again["deliver.call"].span_id == call.span_id
    assert again["signal:go"].status == "completed" and again["signal:go"].timed_out is False
    assert await trace_spans(journal, "no-such-workflow") == []


async def _eventually_children(journal: Journal, workflow_id: str) -> list[Any]:
    async def children() -> list[Any] | None:
        return await journal.children(workflow_id) or None

    return await eventually(children, what=f"a child of {workflow_id}")


# -- OpenTelemetry ----------------------------------------------------------------------


async def test_finished_workflows_are_exported_with_the_journals_ids_across_a_restart(
) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the `opentelemetry` extra is not "
                        "installed (pip install -e '.[opentelemetry]')")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    journal = MemoryJournal()
    flaky = Flaky(failures=1)
    # The first runtime stops while the parent waits: the restart replays it.
    async with Runtime(journal, grace=0.1) as first:
        register(first, flaky)
        row, _ = await first.start_workflow("parent", {}, actor_key="a:1",
                                            trace_id=trace_ref(TRACE, CALLER_SPAN))
        await wait_status(journal, row.id, "waiting")
    before = by_name(await trace_spans(journal, row.id))

    memory = InMemorySpanExporter()
    exporter = TraceExporter(journal, memory, service_name="retinue-test")
    async with anyio.create_task_group() as tg:
        await tg.start(exporter.run)
        async with Runtime(journal) as second:
            register(second, flaky)
            second.add_finish_listener(exporter.workflow_finished)
            await second.signal(row.id, "go")
            assert (await second.wait_for_finish(row.id, 5)) is not None
            with anyio.fail_after(5):
                while exporter.exported < 1:
                    await anyio.sleep(0.01)
        tg.cancel_scope.cancel()

    exported = {span.name: span for span in memory.get_finished_spans()
                if span.attributes is None or span.attributes["retinue.workflow.id"] == row.id}
    assert set(exported) == {"parent", "prepare", "deliver", "signal:go"}
    root = exported["parent"]
    assert root.context is not None and root.parent is not None
    assert root.context.trace_id == int(TRACE, 16)
    assert (root.parent.span_id, root.parent.is_remote) == (int(CALLER_SPAN, 16), True)
    assert root.status.status_code is StatusCode.OK
    assert root.resource.attributes["service.name"] == "retinue-test"
    for name in ("prepare", "deliver", "signal:go"):
        span = exported[name]
        assert span.parent is not None and span.parent.span_id == root.context.span_id, name
        # Spans made before the restart keep their ids: one trace, continued.
        assert span.context is not None
        assert span.context.span_id == int(before[name].span_id, 16), name
        assert span.start_time is not None and span.end_time is not None
        assert span.start_time <= span.end_time
    assert exported["signal:go"].attributes is not None
    assert exported["signal:go"].attributes["retinue.kind"] == "wait"


async def test_attempt_spans_carry_the_error_status() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the `opentelemetry` extra is not installed")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    journal = MemoryJournal()
    memory = InMemorySpanExporter()
    exporter = TraceExporter(journal, memory)
    async with anyio.create_task_group() as tg:
        await tg.start(exporter.run)
        async with Runtime(journal) as rt:
            register(rt, Flaky(failures=1))
            rt.add_finish_listener(exporter.workflow_finished)
            row, _ = await rt.start_workflow("deliver", {}, actor_key="a:2")
            assert (await rt.wait_for_finish(row.id, 5)) is not None
            with anyio.fail_after(5):
                while exporter.exported < 1:
                    await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    spans = memory.get_finished_spans()
    attempts = sorted((s for s in spans if s.name.startswith("deliver.call #")),
                      key=lambda s: s.name)
    assert [s.status.status_code for s in attempts] == [StatusCode.ERROR, StatusCode.OK]
    assert "answered 500" in (attempts[0].status.description or "")
    # A root without a traceparent has no parent: its own trace.
    [root] = [s for s in spans if s.attributes and s.attributes["retinue.kind"] == "workflow"]
    assert root.parent is None


def test_otlp_export_is_on_only_with_an_endpoint() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http",
                        reason="the `opentelemetry` extra is not installed")
    from runtime import otlp_exporter_from_env

    journal = MemoryJournal()
    assert otlp_exporter_from_env(journal, {}) is None
    exporter = otlp_exporter_from_env(
        journal, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                  "OTEL_SERVICE_NAME": "onboarding"})
    assert isinstance(exporter, TraceExporter)
    assert exporter._service_name == "onboarding"
