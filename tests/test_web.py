"""The web page in a real browser (Debian's chromium driven by Playwright) against the server that
``matryoshka demo --serve`` starts. Screenshots are kept in ``test-artifacts/``."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
# no sandbox as root; no background networking: this machine's network is closed
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is missing: 'make test' installs it (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _overlap(page) -> int:
    return int(page.locator("#overlap").get_attribute("data-overlap"))


def _ids(page, list_id: str) -> list[str]:
    return page.locator(f"#{list_id} li").evaluate_all("items => items.map(i => i.dataset.id)")


def _wait_for_dim(page, dim: int) -> None:
    """Until the results at ``dim`` have arrived and are no longer marked stale."""
    page.wait_for_function(
        f"document.getElementById('overlap').dataset.dim === '{dim}' && "
        "document.getElementById('results-dim').getAttribute('aria-busy') === 'false'"
    )


def test_slider_changes_results_and_overlap(browser, demo_server):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto(demo_server.url)
    page.wait_for_function("document.getElementById('info').textContent.includes('117,659 documents')")
    assert page.locator("#dim").get_attribute("max") == "256"
    assert page.locator("#mark-buttons button").all_inner_texts()[0] == "8 (d/32)"

    # type a query with the keyboard and submit with Enter
    page.locator("#query").click()
    page.keyboard.type("a machine that converts steam into motion")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "document.querySelectorAll('#results-full li').length === 10 && "
        "document.querySelectorAll('#results-dim li').length === 10"
    )
    assert page.locator("#funnel tbody tr").count() >= 2  # every funnel stage is shown
    assert page.locator("#funnel tbody tr").last.locator("td").nth(1).inner_text() == "256"
    full_ids = _ids(page, "results-full")

    # move the slider by keyboard: Home goes to 1 dim, End to the full 256
    page.locator("#dim").focus()
    page.keyboard.press("Home")
    _wait_for_dim(page, 1)
    low_overlap, low_ids = _overlap(page), _ids(page, "results-dim")
    page.screenshot(path=str(ARTIFACTS / "web-dim-1.png"), full_page=True)
    page.keyboard.press("End")
    _wait_for_dim(page, 256)
    high_overlap, high_ids = _overlap(page), _ids(page, "results-dim")
    assert page.locator("#dim-value").inner_text() == "256"
    assert low_ids != high_ids
    assert high_overlap > low_overlap and high_overlap >= 9
    assert _ids(page, "results-full") == full_ids  # the full-dimension side does not move
    # shared results are highlighted on both sides
    assert page.locator("#results-dim li.shared").count() == high_overlap

    # a mark button jumps to d/8, also by keyboard
    page.locator("#mark-buttons button", has_text="32 (d/8)").focus()
    page.keyboard.press("Enter")
    _wait_for_dim(page, 32)
    assert page.locator("#mark-buttons button", has_text="32 (d/8)").get_attribute("aria-pressed") == "true"

    # the compare panel follows the slider
    page.wait_for_function("document.querySelectorAll('#compare tbody tr').length === 4")
    at_32 = page.locator("#compare tbody tr td:nth-child(2)").all_inner_texts()
    page.locator("#dim").focus()
    page.keyboard.press("Home")
    page.wait_for_function("document.getElementById('compare').dataset.dim === '1'")
    page.wait_for_function(
        "before => JSON.stringify([...document.querySelectorAll('#compare tbody tr td:nth-child(2)')]"
        ".map(c => c.innerText)) !== JSON.stringify(before)",
        arg=at_32,
    )
    assert page.locator("#compare tbody tr td:nth-child(2)").all_inner_texts() != at_32
    _wait_for_dim(page, 1)
    page.locator("#mark-buttons button", has_text="16 (d/16)").click()
    _wait_for_dim(page, 16)
    page.wait_for_function("document.getElementById('compare').dataset.dim === '16'")
    page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)
    assert not page.locator("#error").is_visible()
    assert failed == []  # nothing outside this server was asked for
    page.close()


def test_page_is_readable_on_a_narrow_screen(browser, demo_server):
    page = browser.new_page(viewport={"width": 380, "height": 800})
    page.goto(demo_server.url)
    page.wait_for_function("document.getElementById('info').textContent.includes('documents')")
    page.locator("#query").fill("capital city")
    page.locator("#query").press("Enter")
    page.wait_for_function("document.querySelectorAll('#results-dim li').length === 10")
    # one column, nothing wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 380
    left = page.locator("#results-dim").bounding_box()
    right = page.locator("#results-full").bounding_box()
    assert right["y"] > left["y"] + left["height"] - 1  # stacked, not side by side
    page.screenshot(path=str(ARTIFACTS / "web-narrow.png"), full_page=True)
    page.close()


def test_the_filter_box_keeps_results_to_the_filter_and_says_what_is_wrong(browser, demo_server):
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.goto(demo_server.url)
    page.wait_for_function("document.getElementById('info').textContent.includes('117,659 documents')")
    assert "pos (string), lemmas (list)" in page.locator("#filter-fields").inner_text()
    page.locator("#query").fill("move quickly")
    page.locator("#filter").click()
    page.keyboard.type('{"pos": "verb"}')
    page.keyboard.press("Enter")
    page.wait_for_function(
        "document.querySelectorAll('#results-full li').length === 10 && "
        "document.querySelectorAll('#results-dim li').length === 10"
    )
    for list_id in ("results-full", "results-dim"):
        shown = page.locator(f"#{list_id} li .fields").all_inner_texts()
        assert len(shown) == 10 and all("pos: verb" in fields for fields in shown), shown
    assert page.locator("#funnel tbody tr").first.locator("td").first.inner_text() == "filter"
    assert "documents pass the filter" in page.locator("#full-timing").inner_text()
    verbs = _ids(page, "results-full")
    assert all(".v." in synset for synset in verbs)

    page.locator("#filter").fill('{"pos": "verb", "lemmas": {"$in": ["run", "sprint"]}}')
    page.locator("#query").press("Enter")
    page.wait_for_function(
        "ids => JSON.stringify([...document.querySelectorAll('#results-full li')]"
        ".map(i => i.dataset.id)) !== JSON.stringify(ids)",
        arg=verbs,
    )
    narrowed = page.locator("#results-full li .fields").all_inner_texts()
    assert narrowed and all("run" in f or "sprint" in f for f in narrowed)
    page.screenshot(path=str(ARTIFACTS / "web-filter.png"), full_page=True)

    page.locator("#filter").fill('{"pos": {"$gt": 3}}')  # a type mismatch: the server's 422, shown
    page.locator("#query").press("Enter")
    page.wait_for_function("document.getElementById('error').textContent.includes('filter.pos.$gt')")
    assert "field 'pos' is a string" in page.locator("#error").inner_text()
    page.locator("#filter").fill('{"pos": ')  # not JSON: said before any request
    page.locator("#query").press("Enter")
    page.wait_for_function("document.getElementById('error').textContent.includes('not valid JSON')")
    page.locator("#filter").fill("")
    page.locator("#query").press("Enter")
    page.wait_for_function("document.getElementById('error').hidden")
    page.close()
