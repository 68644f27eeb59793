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
import zipfile
from pathlib import Path

import pytest

from tests.integration.helpers import wait_final
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


def fail(db_path: Path, gen_id: str, message: str) -> None:
    """Leave ``gen_id`` as a provider's refusal would (generate failed, store
    not run, no images): the embedded default has no provider that refuses."""
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "UPDATE generations SET status = 'failed', error_stage = 'generate',"
            " error_message = ?, completed_at = NULL WHERE id = ?",
            (message, gen_id),
        )
        stage = "UPDATE generation_stages SET status = ?, error = ?, output = NULL, attempts = 0"
        conn.execute(
            f"{stage} WHERE generation_id = ? AND name = 'generate'", ("failed", message, gen_id)
        )
        conn.execute(
            f"{stage} WHERE generation_id = ? AND name = 'store'", ("pending", None, gen_id)
        )
        conn.execute("DELETE FROM generation_assets WHERE generation_id = ?", (gen_id,))


def test_designer_submits_watches_stages_and_gives_feedback(dev_server, browser, tmp_path):
    import requests
    from playwright.sync_api import expect

    base, key, db_path = dev_server
    auth = {"Authorization": f"Bearer {key}"}
    persona = requests.post(
        f"{base}/api/personas", json={"name": "Evening gala", "keywords": ["gala"]}, headers=auth
    ).json()
    broken = requests.post(
        f"{base}/api/generate/from-prompt",
        json={"prompt": "charcoal wool overcoat", "settings": {"provider": "local"}},
        headers=auth,
    ).json()["id"]
    assert wait_final(base, auth, broken)["status"] == "completed"
    fail(db_path, broken, "the provider refused the prompt")

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

    # The estimate follows provider and count, from /api/providers' prices (a priced
    # model's: test_browser_first_visit.py).
    cost = page.locator("#cost")
    expect(cost).to_contain_text("Estimated cost: up to $0.000")  # auto: only local here
    page.get_by_label("Images").select_option("2")
    page.get_by_label("Provider").select_option("local")
    expect(cost).to_have_text("Estimated cost: $0.000 (2 × $0.000 with local)")

    page.get_by_label("Describe the garment").fill("emerald silk slip dress, bias cut")
    page.get_by_label("Leave out (negative prompt)").fill("logos, busy background")
    page.get_by_label("Persona").select_option(label="Evening gala")
    page.get_by_label("Size").select_option("portrait")
    page.get_by_label("Enhance my prompt").uncheck()
    page.get_by_role("button", name="Generate").click()

    stages = page.locator("#stages li")
    expect(stages).to_have_count(7)
    # Every stage ends done (or skipped) and the images appear, fed by the SSE stream.
    for name in ("enhance", "route", "optimize", "generate", "store"):
        expect(page.locator(f'#stages li[data-stage="{name}"]')).to_have_attribute(
            "data-status", "completed", timeout=60_000
        )
    for name in ("analyze", "persona"):  # no photo; enhance off skips the persona
        expect(page.locator(f'#stages li[data-stage="{name}"]')).to_have_attribute(
            "data-status", "skipped"
        )
    expect(page.locator("#gen-status")).to_contain_text("Completed with local")
    expect(page.locator("#result img")).to_have_count(2)
    result_img = page.locator("#result img").first
    assert page.evaluate("(img) => img.naturalWidth > 0", result_img.element_handle())
    # The live view came over SSE with the key in the header, never in the URL.
    assert sse_requests and sse_requests[0]["authorization"] == f"Bearer {key}"
    gen_id = page.locator("#gen-id").text_content()
    gen = requests.get(f"{base}/api/generate/{gen_id}", headers=auth).json()
    assert gen["settings"]["count"] == 2 and gen["settings"]["enhance"] == "off"
    assert gen["personaId"] == persona["id"] and len(gen["assets"]) == 2
    assert gen["prompt"]["negative"] == "logos, busy background"

    # Each image offers "Upscale ×2" and "Cut out": a refine followed live.
    page.locator("#result figure").first.get_by_role("button", name=re.compile("^Upscale")).click()
    expect(page.locator('#stages li[data-stage="refine"]')).to_have_attribute(
        "data-status", "completed", timeout=60_000
    )
    expect(page.locator("#result img")).to_have_count(3)
    expect(page.locator("#result figure.upscaled figcaption")).to_contain_text("Upscaled")
    first = page.locator("#result figure").first
    expect(first.get_by_role("button", name=re.compile("^Upscale"))).to_have_count(0)
    first.get_by_role("button", name=re.compile("^Cut out")).click()
    expect(page.locator("#result figure.cutout img")).to_have_count(1, timeout=60_000)
    gen = requests.get(f"{base}/api/generate/{gen_id}", headers=auth).json()
    assert gen["status"] == "completed"
    assert sorted(a["variant"] for a in gen["assets"]) == [
        "cutout", "original", "original", "upscaled"
    ]  # fmt: skip

    # The gallery shows it; heart it, rate it, mark it exceptional.
    card = page.locator(f'#gallery li.item[data-id="{gen_id}"]')
    expect(card.locator(".badge")).to_have_text("completed")
    card.get_by_role("button", name=re.compile("^Heart")).click()
    expect(card.locator(".meta")).to_have_text("Thanks, feedback saved.")
    card.get_by_label(re.compile("^Rate")).select_option("4")
    card.get_by_role("button", name=re.compile("as exceptional$")).click()
    expect(card.locator(".exceptional")).to_have_attribute("aria-pressed", "true")
    # The failed one says why and offers a retry.
    failed = page.locator(f'#gallery li.item[data-id="{broken}"]')
    expect(failed.locator(".reason")).to_have_text("generate: the provider refused the prompt")
    expect(failed.get_by_role("button", name=re.compile("^Retry"))).to_be_visible()

    shot = tmp_path / "web-page.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("BFF_UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, ROOT / "docs" / "web-page.png")

    # After a reload the card shows what was saved; a second heart takes it back.
    page.reload()
    expect(card.locator(".heart")).to_have_attribute("aria-pressed", "true")
    expect(card.locator(".exceptional")).to_have_attribute("aria-pressed", "true")
    expect(card.locator(".rating")).to_have_value("4")
    card.get_by_role("button", name=re.compile("^Heart")).click()
    expect(card.locator(".meta")).to_have_text("Taken back.")
    expect(card.locator(".heart")).to_have_attribute("aria-pressed", "false")
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute(
            "SELECT feedback_type, asset_id FROM generation_feedback"
            " WHERE generation_id = ? AND removed_at IS NULL ORDER BY feedback_type",
            (gen_id,),
        ).fetchall()
    assert [kind for kind, _ in rows] == ["outlier", "rating"] and all(a for _, a in rows)

    # Retry resumes the failed one, live, to completion.
    failed.get_by_role("button", name=re.compile("^Retry")).click()
    expect(page.locator("#gen-id")).to_have_text(broken)
    expect(page.locator("#gen-status")).to_contain_text("Completed with local", timeout=60_000)
    expect(failed.locator(".badge")).to_have_text("completed")
    expect(failed.locator(".reason")).to_be_hidden()
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


def test_a_server_that_does_not_answer_is_said_in_words(dev_server, browser):
    """Not the browser's "Failed to fetch": what to check."""
    page = browser.new_page()
    page.goto(dev_server[0] + "/")
    page.route("**/api/**", lambda route: route.abort("connectionrefused"))
    said = page.evaluate("api('GET', '/api/generate').then(() => 'ok', (e) => e.message)")
    assert said == "the server cannot be reached: is it running? (bff dev, or make dev)"
    page.close()


def test_an_error_is_said_in_its_message_whatever_its_details(dev_server, browser):
    """Most errors detail fields (a list); a budget's gives its figures (an
    object): the page says the message either way, never a script error."""
    import requests

    base, key, _ = dev_server
    page = browser.new_page()
    page.goto(base + "/")
    page.evaluate("k => localStorage.setItem('bff.apiKey', k)", key)
    invalid = requests.post(
        base + "/api/generate/from-prompt",
        json={"prompt": " "},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert invalid.status_code == 422 and isinstance(invalid.json()["error"]["details"], list)
    cap = "this request may cost $0.16: with today's $0.00 it would pass your daily cap $0.05"
    budget = {"code": "budget_exceeded", "message": cap, "details": {"spent": 0.0, "cap": 0.05}}

    def answering(status: int, body: dict):  # (a handler taking one argument: the route)
        return lambda route: route.fulfill(status=status, json=body)

    for status, body in ((422, invalid.json()), (403, {"error": budget})):
        page.route("**/api/generate/from-prompt", answering(status, body))
        said = page.evaluate(
            "api('POST', '/api/generate/from-prompt', {}).then(() => 'ok', (e) => e.message)"
        )
        assert said.startswith(body["error"]["message"]), said
        page.unroute("**/api/generate/from-prompt")
    page.close()


def test_a_job_no_worker_takes_says_so_after_a_while(dev_server, browser):
    """Its stream is held (as when no worker ever reports a stage): after 20 s
    the page says why it may be waiting, instead of "Queued…" for ever."""
    from playwright.sync_api import expect

    base, key, _ = dev_server
    page = browser.new_page()
    page.clock.install()
    page.route("**/api/generate/*/events", lambda route: None)  # never answered
    page.goto(base + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#key-status")).to_have_text("Key OK.")
    page.get_by_label("Describe the garment").fill("charcoal wool overcoat")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#gen-status")).to_have_text("Queued…")
    page.clock.run_for(21_000)
    expect(page.locator("#gen-status")).to_contain_text("no worker has taken it yet")
    page.close()


def test_page_and_static_files_need_no_key(dev_server):
    import requests

    base = dev_server[0]
    page = requests.get(base + "/", timeout=5)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    for path in re.findall(r'(?:href|src)="(/assets/[^"]+)"', page.text):
        assert requests.get(base + path, timeout=5).status_code == 200, path


def test_designer_runs_a_batch_from_the_page(dev_server, browser, tmp_path):
    from playwright.sync_api import expect

    base, key, _ = dev_server
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    console_errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
    page.goto(base + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#key-status")).to_have_text("Key OK.")
    page.get_by_label("Provider").select_option("local")

    page.get_by_label("Prompts, one a line").fill("ivory linen shirt\n\nrust wool coat\n")
    page.get_by_label("Colourways").fill("navy, sage")
    page.get_by_role("button", name="Start the batch").click()
    status = page.locator("#batch-status")
    expect(status).to_have_text("Finished: 4 of 4 done · $0.000", timeout=90_000)
    expect(page.locator("#batch-progress")).to_have_attribute("value", "4")
    expect(page.locator("#batch-gallery img")).to_have_count(4)
    expect(page.locator("#batch-gallery")).to_contain_text("rust wool coat, in a sage colorway")
    expect(page.get_by_role("button", name="Cancel batch")).to_be_hidden()

    with page.expect_download() as download:
        page.get_by_role("button", name="Download ZIP").click()
    saved = tmp_path / "batch.zip"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        assert len([n for n in archive.namelist() if n.endswith(".png")]) == 4
    assert not console_errors, console_errors
    page.close()


def test_designer_sends_the_photo_itself(dev_server, browser, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect

    base, key, _ = dev_server
    photo = tmp_path / "dress.png"
    Image.new("RGB", (96, 128), (120, 30, 40)).save(photo)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(base + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#key-status")).to_have_text("Key OK.")
    choice = page.get_by_label("Send the photo itself")
    expect(choice).to_be_hidden()  # nothing to send yet
    page.locator("#image").set_input_files(str(photo))
    choice.check()
    page.get_by_label("Provider").select_option("local")
    with page.expect_response(re.compile(r"/api/generate/from-image$")) as accepted:
        page.get_by_role("button", name="Generate").click()
    gen_id = accepted.value.json()["id"]
    gen = wait_final(base, {"Authorization": f"Bearer {key}"}, gen_id)
    assert gen["status"] == "completed" and gen["settings"]["reference"] == "image"
    page.close()
