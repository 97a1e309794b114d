"""The server's event loop: uvloop when installed (retinue[fast]), asyncio when not or
when RETINUE_EVENT_LOOP=asyncio; a workflow with a child runs to its end on both."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import anyio
import pytest

from journal import MemoryJournal
from runtime import Runtime, WorkflowContext
from runtime.eventloop import event_loop, run_options

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


async def _parent_and_child() -> tuple[str, str]:
    """(the running loop's module, the child's status) after a parent that starts a
    child, whose event the caller waits for."""

    async def child(ctx: WorkflowContext, n: int) -> int:
        await ctx.set_event("done", n + 1)
        return n + 1

    async def parent(ctx: WorkflowContext, n: int) -> str:
        child_id = await ctx.start_child("child", n)
        await ctx.step("after", _identity, child_id)
        return child_id

    async with Runtime(MemoryJournal(), idle_timeout=5) as runtime:
        runtime.register(child, name="child")
        runtime.register(parent, name="parent")
        row, _ = await runtime.start_workflow("parent", 1, actor_key="customer:loop")
        parent_row = await runtime.wait_for_finish(row.id, 10)
        assert parent_row is not None and parent_row.status == "completed"
        assert await runtime.wait_for_event(parent_row.result, "done", 10) == (True, 2)
        done = await runtime.wait_for_finish(parent_row.result, 10)
        assert done is not None
        return type(asyncio.get_running_loop()).__module__, done.status


async def _identity(value: Any) -> Any:
    return value


def test_asyncio_is_kept_when_asked_for() -> None:
    assert event_loop({"RETINUE_EVENT_LOOP": "asyncio"}) == "asyncio"
    loop, status = anyio.run(_parent_and_child, **run_options({"RETINUE_EVENT_LOOP": "asyncio"}))
    assert loop.startswith("asyncio") and status == "completed"


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop not installed: pip install 'retinue[fast]'")
def test_uvloop_is_used_when_installed() -> None:
    assert event_loop({}) == "uvloop"
    loop, status = anyio.run(_parent_and_child, **run_options({}))
    assert loop.startswith("uvloop") and status == "completed"


def test_a_wrong_choice_says_what_to_set() -> None:
    with pytest.raises(ValueError, match="use 'uvloop', 'asyncio'"):
        event_loop({"RETINUE_EVENT_LOOP": "tokio"})


def test_the_server_refuses_a_wrong_choice_before_starting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import server

    monkeypatch.setenv("RETINUE_EVENT_LOOP", "tokio")
    assert server.main(["--port", "0"]) == 2
    assert "RETINUE_EVENT_LOOP='tokio'" in capsys.readouterr().err
