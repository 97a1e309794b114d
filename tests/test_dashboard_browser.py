"""The dashboard in a real browser: headless Chromium (Debian's `chromium`) driven by
Playwright for Python, against a real server with real workflows.

Needs `pip install playwright` (no `playwright install`: it drives the system's
Chromium) and `apt-get install chromium`; skips with the reason otherwise.
Leaves a screenshot in test-artifacts/dashboard.png.

Besides the operator's path (token, timeline, retry), it checks the page's shell:
the server has both tokens, and the page asks again, for the operator's, when it is
given the API token;
counts per status come from /api/workflow-counts (or, from a server without that
route, the overview), a failing API call is shown in the shell's problem bar (no
unhandled rejection), and an answer overtaken by a newer one is never drawn.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.polling import eventually
from edge import WebhookCommunicator
from edge.schemas import WORKFLOW_STATUSES
from journal import Batch, NewWorkflow, StatusChange, StepRecord
from tests.server_support import Served, serving

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("RETINUE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
T_STEP = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TOKEN = "dash-s3cret"  # the operator token
API_TOKEN = "product-s3cret"  # the API token, which the dashboard's API refuses

playwright_api = pytest.importorskip(
    "playwright.async_api",
    reason="Playwright for Python is not installed: pip install playwright (or the `browser` "
    "extra); no `playwright install` is needed, the system's Chromium is used")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set RETINUE_CHROMIUM)",
                allow_module_level=True)


@asynccontextmanager
async def browser_page(width: int, height: int) -> AsyncIterator[Any]:
    """A page of the system's headless Chromium, closed with it when the block ends."""
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield await browser.new_page(viewport={"width": width, "height": height})
        finally:
            await browser.close()


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


async def _get(served: Served, path: str) -> Any:
    response = await served.client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 200, await response.text()
    return await response.json()


async def _status(served: Served, workflow_id: str) -> str:
    return str((await _get(served, f"/workflows/{workflow_id}"))["status"])


async def test_the_dashboard_shows_a_timeline_with_a_retry_and_a_wait_and_retries_a_failure(
    pg_dsn: str,
) -> None:
    began = time.monotonic()
    receiver = Receiver()
    hook_app = web.Application()
    hook_app.router.add_post("/hook", receiver.receive)
    async with TestServer(hook_app) as hook, \
            WebhookCommunicator(str(hook.make_url("/hook"))) as communicator, \
            serving(pg_dsn, api_token=API_TOKEN, operator_token=TOKEN,
                    communicator=communicator) as served:
        ada = await _invite(served, "ada@example.com")
        refused = await _invite(served, "refuse@example.com")
        ada_child = f"{ada['workflow_id']}:5"
        failed_child = f"{refused['workflow_id']}:5"

        async def settled() -> bool:
            return (await _status(served, ada_child) == "completed"
                    and await _status(served, failed_child) == "failed")

        await eventually(settled)
        url = str(served.client.make_url("/"))
        async with browser_page(1440, 900) as page:
            expected: set[int] = set()
            problems = _watch_console(page, expected)
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            await _sign_in(page, url, expected)
            await _check_the_constants(page)
            await _check_the_counts(page, served, requests)
            await _check_the_counts_from_an_older_server(page, served, requests, expected)
            await _check_a_failure_is_shown(page, expected)
            await _check_an_overtaken_answer_is_dropped(page)
            await _check_the_timeline(page, ada["workflow_id"], ada_child)
            receiver.refusing = False
            await _retry_through_the_ui(page, failed_child)
            await eventually(lambda: _completed(served, failed_child), within=10,
                             what="the failed child to complete after its retry")
            await _screenshot(page, url, ada["workflow_id"])
            assert problems == [], problems
    print(f"browser test took {time.monotonic() - began:.1f} s")


def _watch_console(page: Any, expected: set[int]) -> list[str]:
    """Page errors (an unhandled rejection is one) and console errors (a CSP
    violation is one), but the 401 that makes the page ask for its token and the
    failed loads of the HTTP statuses in `expected` (the ones a check provokes)."""
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def console(message: Any) -> None:
        text = message.text
        provoked = "Failed to load resource" in text and any(
            f"status of {status}" in text for status in expected)
        if message.type == "error" and "401" not in text and not provoked:
            problems.append(f"console: {text}")

    page.on("console", console)
    return problems


async def _sign_in(page: Any, url: str, expected: set[int]) -> None:
    """The page loads without the token and asks for it; given the API token, it
    asks again, for the operator's; then it lists the workflows."""
    expected.add(403)
    await page.goto(url + "#/workflows")
    dialog = page.locator("form.dialog")
    await dialog.wait_for()
    assert "API token" in await dialog.inner_text()
    await dialog.locator("input[name=token]").fill(API_TOKEN)
    await dialog.locator("button[type=submit]").click()
    dialog = page.locator("form.dialog", has_text="needs the operator token")
    await dialog.wait_for()
    await dialog.locator("input[name=token]").fill(TOKEN)
    await dialog.locator("button[type=submit]").click()
    await page.locator("#workflow-table tbody tr").first.wait_for()
    assert await page.evaluate("sessionStorage.getItem('retinue.token')") == TOKEN
    assert await page.locator(".tab.on[data-status=all]").count() == 1


async def _check_the_constants(page: Any) -> None:
    """constants.js and app.css agree on the status colours, every status (a
    workflow's, a step's, the new parked and backoff) has a pill style, and a step
    backing off is drawn like a wait."""
    found = await page.evaluate("""async () => {
        const c = await import("/assets/constants.js");
        const { renderTimeline } = await import("/assets/timeline.js");
        const root = getComputedStyle(document.documentElement);
        const colours = Object.entries(c.STATUS_COLORS)
            .filter(([status, colour]) => root.getPropertyValue(`--${status}`).trim() !== colour);
        const unstyled = [...c.STATUSES, ...c.STEP_STATUSES].filter((status) => {
            const pill = document.createElement("span");
            pill.className = `pill pill-${status}`;
            document.body.append(pill);
            const background = getComputedStyle(pill).backgroundColor;
            pill.remove();
            return background === "rgba(0, 0, 0, 0)";
        });
        const t = (ms) => new Date(Date.UTC(2030, 0, 1) + ms).toISOString();
        const common = { workflow_id: "w", workflow_name: "w", trace_id: "t" };
        const spans = [
            { ...common, span_id: "a", kind: "workflow", name: "w", status: "waiting",
              started_at: t(0), finished_at: null },
            { ...common, span_id: "b", parent_span_id: "a", kind: "step", name: "send", seq: 1,
              status: "backoff", attempt: 1, started_at: t(10), finished_at: null,
              fire_at: t(60_000), error: "boom" },
            { ...common, span_id: "c", parent_span_id: "b", kind: "attempt", name: "send #1",
              seq: 1, status: "failed", attempt: 1, started_at: t(10), finished_at: t(20),
              error: "boom" },
        ];
        const svg = renderTimeline(spans, "w", { width: 900, now: Date.parse(t(5_000)),
            selected: null, onSelect: () => {}, fold: true });
        const row = svg.querySelector('.tl-row[data-name="send"]');
        return { colours, unstyled, statuses: c.STATUSES, row: {
            status: row.dataset.status, meta: row.querySelector(".meta").textContent,
            waits: row.querySelectorAll(".bar.wait.status-backoff").length,
            failed: row.querySelectorAll(".attempt[data-status=failed]").length } };
    }""")
    assert found["colours"] == [], found["colours"]
    assert found["unstyled"] == [], found["unstyled"]
    assert {"parked"} | set(WORKFLOW_STATUSES) <= set(found["statuses"]), found["statuses"]
    assert found["row"] == {"status": "backoff", "meta": "backoff", "waits": 1, "failed": 1}, found


async def _tab_counts(page: Any) -> dict[str, str]:
    return dict(await page.eval_on_selector_all(".tab[data-status]", """tabs => tabs.map(
        t => [t.dataset.status, t.querySelector('.tab-count').textContent])"""))


async def _counts_shown(page: Any, served: Served) -> dict[str, str]:
    """The workflows view's counts, once they are what the server says."""
    counts = (await _get(served, "/api/workflow-counts"))["counts"]
    assert counts["completed"] >= 1 and counts["failed"] >= 1 and counts["waiting"] >= 1, counts
    want = {"all": str(sum(counts.values())), "parked": "0"}
    want |= {status: str(n) for status, n in counts.items()}
    deadline = time.monotonic() + 8
    while (shown := await _tab_counts(page)) != want:
        assert time.monotonic() < deadline, (shown, want)
        await anyio.sleep(0.2)
    return shown


async def _check_the_counts(page: Any, served: Served, requests: list[str]) -> None:
    """The counts per status are the server's, from /api/workflow-counts (the view
    does not poll the whole overview for them)."""
    await _counts_shown(page, served)
    assert any("/api/workflow-counts" in u for u in requests), requests
    assert not any("/api/overview" in u for u in requests), requests


async def _check_the_counts_from_an_older_server(
    page: Any, served: Served, requests: list[str], expected: set[int],
) -> None:
    """A server without /api/workflow-counts (404): the counts come from the overview."""
    expected.add(404)
    missing = "**/api/workflow-counts"
    await page.route(missing, lambda route: route.fulfill(status=404, json={"error": "not found"}))
    requests.clear()
    await page.reload()
    await page.locator("#workflow-table tbody tr").first.wait_for()
    await _counts_shown(page, served)
    assert any("/api/overview" in u for u in requests), requests
    assert sum("/api/workflow-counts" in u for u in requests) == 1, requests  # not asked again
    await page.unroute(missing)
    await page.reload()
    await page.locator("#workflow-table tbody tr").first.wait_for()
    expected.discard(404)


def _is_workflow_list(url: str) -> bool:
    return "/workflows?" in url


async def _check_a_failure_is_shown(page: Any, expected: set[int]) -> None:
    """A refresh a view asks for (here: a status tab) that fails is shown in the
    shell's problem bar, not lost as an unhandled rejection; the next success clears it."""
    expected.add(503)
    problem = page.locator("#problem")
    assert await problem.is_hidden()
    await page.route(_is_workflow_list, lambda route: route.fulfill(
        status=503, json={"error": "journal unavailable"}))
    await page.locator(".tab[data-status=completed]").click()
    await problem.wait_for(state="visible")
    assert "503: journal unavailable" in await problem.inner_text()
    await page.unroute(_is_workflow_list)
    await page.locator(".tab[data-status=all]").click()
    await problem.wait_for(state="hidden")
    await page.locator("#workflow-table tbody tr").first.wait_for()
    expected.discard(503)


async def _check_an_overtaken_answer_is_dropped(page: Any) -> None:
    """Completed, then at once Failed: the completed list answers last (held back),
    and is not drawn over the failed one."""

    async def slow(route: Any) -> None:
        await anyio.sleep(1.5)
        await route.continue_()

    def completed_list(url: str) -> bool:
        return _is_workflow_list(url) and "status=completed" in url

    await page.route(completed_list, slow)
    async with page.expect_response(lambda r: completed_list(r.url), timeout=10_000):
        await page.locator(".tab[data-status=completed]").click()
        await page.locator(".tab[data-status=failed]").click()
        await page.locator(".tab.on[data-status=failed]").wait_for()
    await page.wait_for_timeout(500)  # time for the late answer to be drawn, were it drawn
    statuses = await page.eval_on_selector_all(
        "#workflow-table tbody tr .pill", "pills => pills.map(p => p.textContent)")
    assert statuses and set(statuses) == {"failed"}, statuses
    assert await page.locator(".tab.on").get_attribute("data-status") == "failed"
    await page.unroute(completed_list)
    await page.locator(".tab[data-status=all]").click()
    await page.locator(".tab.on[data-status=all]").wait_for()
    await page.locator("#workflow-table tbody tr").first.wait_for()


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
        ("patch", "invite-event-with-write"), ("write", "invite.write"),
        ("child", "communicate_to_customer"),
        ("patch", "verification-reminder"), ("step", "now"), ("wait", "signal:verify"),
    ], names
    seqs = [int(r["seq"]) for r in rows if r["workflow"] == workflow_id and r["seq"]]
    assert seqs == sorted(seqs) == list(range(1, 9))
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


async def test_a_parked_workflow_shows_its_mismatch_side_by_side(pg_dsn: str) -> None:
    mismatch = {"seq": 2, "expected": "step verify.audit",
                "found": "patch verification-reminder", "found_version": "b-version",
                "running_version": "c-version"}
    async with serving(pg_dsn, api_token=API_TOKEN, operator_token=TOKEN) as served:
        workflow = NewWorkflow(id="parked-1", name="invite_customer", actor_key="customer:x",
                               partition=3, app_version="b-version")
        await served.journal.create_workflow(workflow)
        step = StepRecord(workflow_id="parked-1", seq=1, name="invite.lookup",
                          status="completed", started_at=T_STEP, finished_at=T_STEP,
                          app_version="b-version")
        await served.journal.append(Batch(partition=3, epoch=None, steps=(step,), statuses=(
            StatusChange(workflow_id="parked-1", status="parked", error="mismatch",
                         parked=mismatch),)))
        url = str(served.client.make_url("/"))
        async with browser_page(1280, 800) as page:
            expected: set[int] = set()
            problems = _watch_console(page, expected)
            await _sign_in(page, url, expected)
            await page.locator('.tab[data-status="parked"]').click()
            row = page.locator('#workflow-table tr[data-id="parked-1"]')
            await row.wait_for()
            assert "b-version" in await row.inner_text()
            await row.locator('a[href^="#/workflows/"]').click()
            callout = page.locator("#parked-mismatch")
            await callout.wait_for()
            sides = await callout.locator(".parked-side").all_inner_texts()
            assert len(sides) == 2, sides
            assert "step verify.audit" in sides[0] and "c-version" in sides[0], sides
            assert "patch verification-reminder" in sides[1] and "b-version" in sides[1]
            assert "#2" in await callout.inner_text()
            assert problems == [], problems
