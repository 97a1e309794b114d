"""The dashboard's Fork button in a real browser (headless Chromium, as in
tests/test_dashboard_browser.py, whose setup and skips it shares): a failed
workflow is forked from its failed step after a fix, and both pages show the link."""

from __future__ import annotations

from bench.polling import eventually
from tests.server_support import serving
from tests.test_dashboard_browser import (
    API_TOKEN,
    CHROMIUM,
    CHROMIUM_ARGS,
    TOKEN,
    _sign_in,
    _watch_console,
    playwright_api,
)
from tests.test_fork import Shop, _failed_checkout


async def test_the_fork_button_forks_from_the_chosen_step(pg_dsn: str) -> None:
    shop = Shop()
    async with serving(pg_dsn, api_token=API_TOKEN, operator_token=TOKEN) as served:
        served.runtime.register(shop.buggy(), name="checkout")
        original = await _failed_checkout(served.runtime, shop)
        served.runtime.register(shop.fixed(), name="checkout")
        url = str(served.client.make_url("/"))
        async with playwright_api.async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM,
                                                       args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1440, "height": 900})
                expected: set[int] = set()
                problems = _watch_console(page, expected)
                await _sign_in(page, url, expected)
                await page.goto(url + f"#/workflows/{original}")
                await page.locator("[data-action=fork]").click()
                dialog = page.locator(".dialog[role=dialog]")
                await dialog.wait_for()
                assert "Fork this workflow?" in await dialog.inner_text()
                chooser = dialog.locator("[data-fork-seq]")
                # Preselected: the failed step (seq 4); every seq 1..last+1 offered.
                assert await chooser.input_value() == "4"
                assert await chooser.locator("option").count() == 5
                await dialog.locator("[data-confirm=yes]").click()
                await page.locator(".toast", has_text="Forked as").wait_for()
                (fork,) = await served.journal.forks(original)
                assert fork.forked_at_seq == 4
                await page.wait_for_url(f"**#/workflows/{fork.id}")
                head = page.locator(".wf-head")
                await head.get_by_text("Forked from").wait_for()
                side = await page.locator(".side").inner_text()
                assert "null" not in side.split(), side  # no card drawn for no forks

                async def completed() -> bool:
                    row = await served.journal.get_workflow(fork.id)
                    return row is not None and row.status == "completed"

                await eventually(completed, within=10, what="the fork to complete")
                assert shop.calls == {"s1": 1, "s2": 1, "s3": 2, "s4": 1}
                await page.goto(url + f"#/workflows/{original}")
                forks = page.locator(".card", has_text="Forks (1)")
                await forks.wait_for()
                assert "from step #4" in await forks.inner_text()
                assert problems == [], problems
            finally:
                await browser.close()
