"""The dashboard says "pruned", and when, for a workflow past its retention,
instead of drawing an empty timeline: in headless Chromium, as
tests/test_dashboard_browser.py runs it (and skips without it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bench.polling import eventually
from runtime import RetentionSettings, VirtualClock
from tests.server_support import invitation_token, serving
from tests.test_dashboard_browser import browser_page


async def test_the_dashboard_says_a_workflow_was_pruned(pg_dsn: str) -> None:
    clock = VirtualClock()
    settings = RetentionSettings(retention=60, interval=10)
    async with serving(pg_dsn, clock=clock, retention=settings) as served:
        invited = await (await served.client.post(
            "/customers/invite", json={"email": "ada@example.com"})).json()
        workflow_id = invited["workflow_id"]
        token = await invitation_token(served.journal, invited["id"])
        await served.client.post(f"/customers/{invited['id']}/verify", json={"token": token})
        assert await served.runtime.wait_for_finish(workflow_id, 5) is not None
        await clock.advance(seconds=120)

        async def pruned() -> Any:
            row = await served.journal.get_workflow(workflow_id)
            return row if row is not None and row.pruned_at is not None else None

        row = await eventually(pruned, what="the invite to be pruned")
        url = str(served.client.make_url("/"))
        async with browser_page(1280, 800) as page:
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(f"{url}#/workflows/{workflow_id}")
            note = page.locator(".timeline-box .callout-pruned")
            await note.wait_for()
            text = await note.inner_text()
            assert text.startswith("Pruned ") and "RETINUE_RETENTION" in text
            shown = await note.get_attribute("data-pruned")
            assert datetime.fromisoformat(shown) == row.pruned_at
            assert await page.locator(".timeline-box .tl-row").count() == 0
            assert await page.locator(".wf-title .pill-pruned").inner_text() == "pruned"
            facts = await page.locator(".wf-head dl.facts").inner_text()
            assert "pruned" in facts.lower()  # dt labels are upper-cased by CSS
            await page.goto(f"{url}#/workflows")
            listed = page.locator(f'tr[data-id="{workflow_id}"] .pill-pruned')
            await listed.wait_for()
            assert await listed.inner_text() == "pruned"
            assert errors == []
