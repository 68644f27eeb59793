"""The web page in a real browser: Playwright driving Debian's Chromium against
``bff dev`` (the embedded default, started the way `make dev` starts it).

Set BFF_UPDATE_SCREENSHOT=1 to refresh docs/web-page.png from this run.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.support.services import REQUIRE

ROOT = Path(__file__).resolve().parents[2]
BFF = str(Path(sys.executable).parent / "bff")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def dev_server(embedded) -> tuple[str, str, Path]:
    return embedded.base_url, embedded.key, embedded.db_path


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        msg = "Chromium (apt-get install chromium) is not installed"
        if REQUIRE:
            pytest.fail(msg)
        pytest.skip(msg)
    from playwright.sync_api import expect, sync_playwright

    # A loaded 2-core CI machine runs other suites' processes too: be patient.
    expect.set_options(timeout=20_000)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_designer_submits_watches_stages_and_hearts_the_image(dev_server, browser, tmp_path):
    from playwright.sync_api import expect

    base, key, db_path = dev_server
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    console_errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
    sse_requests: list[dict] = []
    page.on(
        "request",
        lambda r: r.url.endswith("/events") and sse_requests.append(r.headers),
    )
    page.goto(base + "/")
    expect(page.get_by_role("heading", name="New image")).to_be_visible()

    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#key-status")).to_have_text("Key OK.")
    assert page.evaluate("localStorage.getItem('bff.apiKey')") == key

    page.get_by_label("Describe the garment").fill("emerald silk slip dress, bias cut")
    page.get_by_label("Provider").select_option("local")
    page.get_by_label("Size").select_option("portrait")
    page.get_by_role("button", name="Generate").click()

    stages = page.locator("#stages li")
    expect(stages).to_have_count(7)
    # Every stage ends done (or skipped) and the image appears, fed by the SSE stream.
    for name in ("enhance", "route", "optimize", "generate", "store"):
        expect(page.locator(f'#stages li[data-stage="{name}"]')).to_have_attribute(
            "data-status", "completed", timeout=60_000
        )
    expect(page.locator('#stages li[data-stage="analyze"]')).to_have_attribute(
        "data-status", "skipped"
    )
    expect(page.locator("#gen-status")).to_contain_text("Completed with local")
    result_img = page.locator("#result img").first
    expect(result_img).to_be_visible()
    assert page.evaluate("(img) => img.naturalWidth > 0", result_img.element_handle())
    # The live view came over SSE with the key in the header, never in the URL.
    assert sse_requests and sse_requests[0]["authorization"] == f"Bearer {key}"

    # The gallery shows it; give it a heart.
    card = page.locator("#gallery li.item").first
    expect(card.locator(".badge")).to_have_text("completed")
    heart = card.get_by_role("button", name=re.compile("^Heart"))
    heart.click()
    expect(heart).to_have_attribute("aria-pressed", "true")
    expect(card.locator(".meta")).to_have_text("Thanks, feedback saved.")
    gen_id = card.get_attribute("data-id")
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute(
            "SELECT feedback_type, asset_id FROM generation_feedback WHERE generation_id = ?",
            (gen_id,),
        ).fetchall()
    assert len(rows) == 1 and rows[0][0] == "heart" and rows[0][1] is not None

    shot = tmp_path / "web-page.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("BFF_UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, ROOT / "docs" / "web-page.png")
    assert not console_errors, console_errors
    page.close()


def test_page_works_on_a_narrow_screen_and_by_keyboard(dev_server, browser):
    from playwright.sync_api import expect

    base, key, _ = dev_server
    page = browser.new_page(viewport={"width": 375, "height": 800})
    page.goto(base + "/")
    # Nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    # Keyboard only: the key field, Save, then the form.
    page.get_by_label("API key").focus()
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    expect(page.locator("#key-status")).to_have_text("Key OK.")
    page.get_by_label("Describe the garment").focus()
    page.keyboard.type("charcoal wool overcoat")
    page.get_by_role("button", name="Generate").focus()
    page.keyboard.press("Enter")
    expect(page.locator('#stages li[data-stage="store"]')).to_have_attribute(
        "data-status", "completed", timeout=60_000
    )
    # The progress region announces changes to screen readers.
    assert page.locator("#stages").get_attribute("aria-live") == "polite"
    page.close()


def test_page_and_static_files_need_no_key(dev_server):
    import requests

    base = dev_server[0]
    page = requests.get(base + "/", timeout=5)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    for path in re.findall(r'(?:href|src)="(/assets/[^"]+)"', page.text):
        assert requests.get(base + path, timeout=5).status_code == 200, path
