"""End to end in a real browser: headless Debian Chromium driven by Playwright against a running
dashboard with real jobs. Screenshots go to the test's tmp dir.

Chromium is ``/usr/bin/chromium`` (``SONIQ_TEST_CHROMIUM`` overrides); ``.ci/run`` installs it.
Without it the test skips locally and fails in CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.dashboard.conftest import FLAKY, Dashboard
from tests.dashboard.test_api import _until
from tests.dashboard.test_xss import plant_payloads

CHROMIUM = os.environ.get("SONIQ_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TIMEOUT_MS = 15_000
_SET_HIDDEN = ("Object.defineProperty(document, 'hidden', {configurable: true, get: () => %s});"
               "document.dispatchEvent(new Event('visibilitychange'))")


@pytest.fixture
def browser() -> Iterator[object]:
    if not os.access(CHROMIUM, os.X_OK):
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        if IN_CI:
            pytest.fail(f"playwright is not installed: {exc}")
        pytest.skip(f"playwright is not installed: {exc}")
    with sync_playwright() as playwright:
        # A launch gets a fresh temporary profile, removed when the browser closes.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                              headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", ["sqlite", "postgres"], indirect=True)
def test_operate_the_queues_in_a_browser(dashboard: Dashboard, browser: object,
                                         tmp_path: Path) -> None:
    from playwright.sync_api import Page, expect

    expect.set_options(timeout=TIMEOUT_MS)

    for x in range(4):
        dashboard.enqueue("tests.ok", x=x)
    dashboard.enqueue("tests.fail", message="broken on purpose")
    FLAKY["fail"] = True
    flaky = dashboard.enqueue("tests.flaky")
    payloads = plant_payloads(dashboard)
    dashboard.run_jobs()
    FLAKY["fail"] = False  # replaying it will succeed

    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page: Page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("dialog", lambda dialog: dialog.accept())
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)

    # Overview: counts from the server, live updates connected.
    page.goto(dashboard.url + "/")
    expect(page.get_by_test_id("total-done")).to_have_text("4")
    expect(page.get_by_test_id("total-dead_letter")).to_have_text("4")
    expect(page.get_by_test_id("live")).to_have_text("live")
    expect(page.locator("svg rect.bar-done").first).to_be_attached()
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

    # Jobs: filter by status and name through the form; the URL is the shareable filter.
    page.get_by_role("link", name="Jobs", exact=True).click()
    page.locator("select[name=status]").select_option("dead_letter")
    page.locator("input[name=name]").fill("flaky")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/jobs?*status=dead_letter*")
    assert "name=flaky" in page.url
    rows = page.get_by_test_id("jobs").locator("tbody tr")
    expect(rows).to_have_count(1)
    page.screenshot(path=str(tmp_path / "jobs-filtered.png"), full_page=True)

    # Open the job, replay it; its status changes without reloading the page.
    rows.first.locator("a.job-link").click()
    page.wait_for_url(f"**/jobs/{flaky}")
    status = page.get_by_test_id("job-status").locator(".status")
    expect(status).to_have_text("dead_letter")
    expect(page.get_by_test_id("live")).to_have_text("live")
    page.evaluate("window.__loadedOnce = 'yes'")
    page.get_by_test_id("replay").click()
    expect(status).to_have_text("queued")
    dashboard.run_jobs()  # a worker elsewhere runs it; the page hears about it by itself
    expect(status).to_have_text("done")
    expect(page.get_by_test_id("job-result")).to_contain_text("fine")
    assert page.evaluate("window.__loadedOnce") == "yes"  # same document: no reload happened
    page.screenshot(path=str(tmp_path / "job-replayed.png"), full_page=True)
    with dashboard.client() as http:
        entry = http.get("/api/audit").json()[0]
    assert (entry["action"], entry["actor"], entry["targets"]) == (
        "dead_letter.replay", "loopback", [flaky])

    # A hidden tab drops its event stream; showing it again reconnects.
    live = page.get_by_test_id("live")
    with dashboard.client() as http:
        assert http.get("/api/health").json()["live_clients"] == 1
        page.evaluate(_SET_HIDDEN % "true")
        expect(live).to_have_text("paused")
        _until(lambda: http.get("/api/health").json()["live_clients"] == 0)
        page.evaluate(_SET_HIDDEN % "false")
        expect(live).to_have_text("live")
        _until(lambda: http.get("/api/health").json()["live_clients"] == 1)

    # Dark mode follows the system.
    page.emulate_media(color_scheme="light")
    light = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.emulate_media(color_scheme="dark")
    dark = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert light != dark, (light, dark)
    assert dark == "rgb(17, 19, 24)"
    page.screenshot(path=str(tmp_path / "job-dark.png"), full_page=True)

    # Stored payloads stay text on the pages that show them.
    for path in ("/jobs", f"/jobs/{payloads['failed']}", f"/jobs/{payloads['odd']}",
                 "/dead-letter", "/workers"):
        page.goto(dashboard.url + path)
        expect(page.locator("main")).to_be_visible()
        assert page.evaluate("window.__xss === undefined"), path
    expect(page.locator("main")).to_contain_text("host<script>")  # rendered as text
    page.screenshot(path=str(tmp_path / "workers-dark.png"), full_page=True)

    # Bulk: select every dead-lettered job and replay them together.
    page.goto(dashboard.url + "/dead-letter")
    expect(page.get_by_test_id("dead-count")).to_have_text("3")
    page.locator("input[data-select-all]").check()
    expect(page.locator("input[data-select=dead]:checked")).to_have_count(3)
    page.get_by_role("button", name="Replay selected").click()
    expect(page.get_by_test_id("dead-count")).to_have_text("0")
    with dashboard.client() as http:
        bulk = http.get("/api/audit").json()[0]
    assert (bulk["action"], bulk["outcome"], len(bulk["targets"])) == (
        "dead_letter.replay_bulk", "ok", 3)

    # Without EventSource the page polls, and still sees changes.
    polling = context.new_page()
    polling.set_default_timeout(TIMEOUT_MS)
    polling.add_init_script("delete window.EventSource")
    polling.goto(dashboard.url + "/jobs?queue=later")
    expect(polling.get_by_test_id("live")).to_have_text("polling")
    expect(polling.get_by_test_id("jobs").locator("tbody tr.job-row")).to_have_count(0)
    dashboard.enqueue("tests.ok", x=5, queue="later")
    expect(polling.get_by_test_id("jobs").locator("tbody tr.job-row")).to_have_count(1)

    # Narrow screens: nothing wider than the viewport (wide tables scroll in their own box).
    polling.set_viewport_size({"width": 390, "height": 844})
    for path in ("/", "/jobs", "/dead-letter", "/health"):
        polling.goto(dashboard.url + path)
        assert polling.evaluate(
            "document.documentElement.scrollWidth <= window.innerWidth"), path
    polling.goto(dashboard.url + "/")
    polling.screenshot(path=str(tmp_path / "overview-phone.png"), full_page=True)

    context.close()
    assert not problems, problems
    for name in ("overview", "jobs-filtered", "job-replayed", "job-dark", "workers-dark",
                 "overview-phone"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
