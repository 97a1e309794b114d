"""The dashboard in a real browser: headless Chromium (Debian's `chromium`) driven by
Playwright for Python, against a real server with real workflows.

Needs `pip install playwright` (no `playwright install`: it drives the system's
Chromium) and `apt-get install chromium`; skips with the reason otherwise.
Leaves a screenshot in test-artifacts/dashboard.png.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.polling import eventually
from edge import WebhookCommunicator
from tests.server_support import Served, serving

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("RETINUE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TOKEN = "dash-s3cret"

playwright_api = pytest.importorskip(
    "playwright.async_api",
    reason="Playwright for Python is not installed: pip install playwright (or the `browser` "
    "extra); no `playwright install` is needed, the system's Chromium is used")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set RETINUE_CHROMIUM)",
                allow_module_level=True)


class Receiver:
    """A webhook that answers 500 to an invitation's first delivery (so it is retried),
    and refuses anything for a `refuse` address with 400 until `refusing` is False."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.refusing = True

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = request.headers["Idempotency-Key"]
        self.seen[key] = self.seen.get(key, 0) + 1
        if body["email"].startswith("refuse") and self.refusing:
            return web.Response(status=400, text="no such mailbox")
        if body["type"] == "invitation" and self.seen[key] == 1:
            return web.Response(status=500, text="relay busy")
        return web.Response(status=204)


async def _invite(served: Served, email: str) -> Any:
    response = await served.client.post("/customers/invite", json={"email": email},
                                        headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 200, await response.text()
    return await response.json()


async def _status(served: Served, workflow_id: str) -> str:
    response = await served.client.get(f"/workflows/{workflow_id}",
                                       headers={"Authorization": f"Bearer {TOKEN}"})
    return str((await response.json())["status"])


async def test_the_dashboard_shows_a_timeline_with_a_retry_and_a_wait_and_retries_a_failure(
    pg_dsn: str,
) -> None:
    began = time.monotonic()
    receiver = Receiver()
    hook_app = web.Application()
    hook_app.router.add_post("/hook", receiver.receive)
    async with TestServer(hook_app) as hook, \
            WebhookCommunicator(str(hook.make_url("/hook"))) as communicator, \
            serving(pg_dsn, api_token=TOKEN, communicator=communicator) as served:
        ada = await _invite(served, "ada@example.com")
        refused = await _invite(served, "refuse@example.com")
        ada_child = f"{ada['workflow_id']}:5"
        failed_child = f"{refused['workflow_id']}:5"

        async def settled() -> bool:
            return (await _status(served, ada_child) == "completed"
                    and await _status(served, failed_child) == "failed")

        await eventually(settled)
        url = str(served.client.make_url("/"))
        async with playwright_api.async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM,
                                                       args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1440, "height": 900})
                problems = _watch_console(page)
                await _sign_in(page, url)
                await _check_the_timeline(page, ada["workflow_id"], ada_child)
                receiver.refusing = False
                await _retry_through_the_ui(page, failed_child)
                await eventually(lambda: _completed(served, failed_child), within=10,
                                 what="the failed child to complete after its retry")
                await _screenshot(page, url, ada["workflow_id"])
                assert problems == [], problems
            finally:
                await browser.close()
    print(f"browser test took {time.monotonic() - began:.1f} s")


def _watch_console(page: Any) -> list[str]:
    """Page errors and console errors (a CSP violation is one), but the 401 that
    makes the page ask for its token."""
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def console(message: Any) -> None:
        if message.type == "error" and "401" not in message.text:
            problems.append(f"console: {message.text}")

    page.on("console", console)
    return problems


async def _sign_in(page: Any, url: str) -> None:
    """The page loads without the token, asks for it once, and lists the workflows."""
    await page.goto(url + "#/workflows")
    dialog = page.locator("form.dialog")
    await dialog.wait_for()
    assert "API token" in await dialog.inner_text()
    await dialog.locator("input[name=token]").fill(TOKEN)
    await dialog.locator("button[type=submit]").click()
    await page.locator("#workflow-table tbody tr").first.wait_for()
    assert await page.evaluate("sessionStorage.getItem('retinue.token')") == TOKEN
    assert await page.locator(".tab.on[data-status=all]").count() == 1


async def _check_the_timeline(page: Any, workflow_id: str, child_id: str) -> None:
    await page.locator(f'tr[data-id="{workflow_id}"] a[href^="#/workflows/"]').click()
    await page.locator(f'.tl-row[data-name="signal:verify"][data-workflow="{workflow_id}"]'
                       ).wait_for()
    rows = await page.eval_on_selector_all(".timeline .tl-row", """rows => rows.map(r => ({
        kind: r.dataset.kind, name: r.dataset.name, status: r.dataset.status,
        seq: r.dataset.seq, workflow: r.dataset.workflow, attempts: r.dataset.attempts,
        failed: r.querySelectorAll('.attempt[data-status=failed]').length,
        ok: r.querySelectorAll('.attempt[data-status=completed]').length}))""")
    names = [(r["workflow"], r["kind"], r["name"]) for r in rows]
    parent = [(kind, name) for wf, kind, name in names if wf == workflow_id]
    assert parent == [
        ("workflow", "invite_customer"), ("step", "invite.lookup"), ("step", "invite.operate"),
        ("write", "invite.write"), ("event", "invite"), ("child", "communicate_to_customer"),
        ("step", "now"), ("wait", "signal:verify"),
    ], names
    seqs = [int(r["seq"]) for r in rows if r["workflow"] == workflow_id and r["seq"]]
    assert seqs == sorted(seqs) == list(range(1, 8))
    # The child is drawn under the step that started it, its steps in order.
    start = names.index((workflow_id, "child", "communicate_to_customer"))
    assert names[start + 1] == (child_id, "workflow", "communicate_to_customer")
    child = [name for wf, kind, name in names if wf == child_id and kind != "workflow"]
    assert child == ["communicate.prepare", "communicate.record", "communicate.deliver", "now",
                     "communicate.mark"]
    deliver = next(r for r in rows if r["name"] == "communicate.deliver")
    assert (deliver["attempts"], deliver["failed"], deliver["ok"]) == ("2", 1, 1), deliver
    wait = next(r for r in rows if r["name"] == "signal:verify")
    assert (wait["kind"], wait["status"]) == ("wait", "waiting")
    assert await page.locator(".tl-row .bar.wait").count() >= 1

    await page.locator('.tl-row[data-name="communicate.deliver"]').click()
    detail = page.locator(".span-detail")
    await detail.wait_for()
    text = await detail.inner_text()
    assert "answered 500" in text and "Attempts" in text.title(), text


async def _retry_through_the_ui(page: Any, workflow_id: str) -> None:
    """Dead letters and failures page: Retry, confirm in the dialog."""
    await page.locator("nav a[data-section=dead-letters]").click()
    row = page.locator(f'#failed-table tr[data-id="{workflow_id}"]')
    await row.wait_for()
    await row.locator("[data-action=retry]").click()
    dialog = page.locator(".dialog[role=dialog]")
    await dialog.wait_for()
    assert "Retry this workflow?" in await dialog.inner_text()
    await dialog.locator("[data-confirm=yes]").click()
    await page.locator(".toast", has_text="Retry recorded").wait_for()


async def _completed(served: Served, workflow_id: str) -> bool:
    return await _status(served, workflow_id) == "completed"


async def _screenshot(page: Any, url: str, workflow_id: str) -> None:
    await page.goto(url + f"#/workflows/{workflow_id}")
    await page.locator('.tl-row[data-name="communicate.deliver"]').click()
    await page.locator(".span-detail").wait_for()
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
