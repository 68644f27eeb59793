"""The page before and as a key is saved, in Chromium against ``bff dev``:
where a key comes from, the reminder to save one going once one is, and the
models this server cannot use marked in the picker. Each test has a user of
its own (test_browser_jobs.py's)."""

from __future__ import annotations

import requests

from tests.integration.test_browser import browser  # noqa: F401
from tests.integration.test_browser_jobs import user  # noqa: F401


def save_key(page, key: str) -> None:
    from playwright.sync_api import expect

    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#key-status")).to_have_text("Key OK.")


def test_saving_a_key_takes_the_reminder_to_save_one_away(browser, user):  # noqa: F811
    """Before, "Save your API key first." stayed under Generate after it was."""
    from playwright.sync_api import expect

    base, key, _ = user
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(base + "/")
    page.get_by_label("Describe the garment").fill("camel wool wrap coat")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#form-error")).to_have_text("Save your API key first.")
    page.get_by_label("Prompts, one a line").fill("ivory linen shirt")
    page.get_by_role("button", name="Start the batch").click()
    expect(page.locator("#batch-error")).to_have_text("Save your API key first.")
    save_key(page, key)
    expect(page.locator("#form-error")).to_be_empty()
    expect(page.locator("#batch-error")).to_be_empty()
    page.close()


def test_a_first_visit_says_where_a_key_comes_from(embedded, browser):  # noqa: F811
    """Before, only "No key saved.": nothing said make dev prints one."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(embedded.base_url + "/")
    status = page.locator("#key-status")
    expect(status).to_have_text(
        "No key saved: make dev prints one (and keeps it in var/dev-api-key),"
        " or run bff users create NAME."
    )
    # What it says is so: the key `bff dev` printed is in that file.
    assert (embedded.folder / "var" / "dev-api-key").read_text().strip() == embedded.key
    page.close()


def test_a_model_not_set_up_here_cannot_be_picked(browser, user):  # noqa: F811
    """Before, every model looked selectable, and only Generate's refusal
    said "REPLICATE_API_TOKEN not configured"."""
    from playwright.sync_api import expect

    base, key, auth = user
    models = requests.get(f"{base}/api/providers", headers=auth, timeout=10).json()["items"]
    available = {m["id"]: m["available"] for m in models}
    assert available["local"] and not available["google-imagen"]  # the embedded default's
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(base + "/")
    save_key(page, key)
    picker = page.get_by_label("Provider")
    imagen = picker.locator('option[value="google-imagen"]')
    expect(imagen).to_be_disabled()
    expect(imagen).to_have_text("google-imagen (not set up here)")
    assert imagen.get_attribute("title") == next(
        m["unavailableReason"] for m in models if m["id"] == "google-imagen"
    )
    for model_id in ("auto", "local"):
        expect(picker.locator(f'option[value="{model_id}"]')).to_be_enabled()
    unavailable = [m for m, ok in available.items() if not ok]
    expect(picker.locator("option:disabled")).to_have_count(len(unavailable))
    page.close()


def test_the_estimate_is_the_chosen_models_price_times_the_count(browser, user):  # noqa: F811
    """With every model available (the catalogue answered so), a priced one."""
    from playwright.sync_api import expect

    base, key, _ = user

    def all_available(route) -> None:
        body = route.fetch().json()
        for model in body["items"]:
            model.update(available=True, unavailableReason=None)
        route.fulfill(json=body)

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.route("**/api/providers", all_available)
    page.goto(base + "/")
    save_key(page, key)
    page.get_by_label("Provider").select_option("google-imagen")
    page.get_by_label("Images").select_option("2")
    expect(page.locator("#cost")).to_have_text(
        "Estimated cost: $0.120 (2 × $0.060 with google-imagen)"
    )
    page.close()


def test_forgetting_the_key_takes_the_gallery_and_its_next_page_away(browser, user):  # noqa: F811
    """Before, "Load more" stayed after Forget (and after a refused key it
    asked for the old key's next page)."""
    from playwright.sync_api import expect

    base, key, auth = user
    body = {"prompt": "sage cotton shirt dress", "settings": {"provider": "local"}}
    for _ in range(13):  # one more than the page's first page
        r = requests.post(f"{base}/api/generate/from-prompt", json=body, headers=auth, timeout=10)
        assert r.status_code == 202
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(base + "/")
    save_key(page, key)
    expect(page.locator("#more")).to_be_visible()
    expect(page.locator("#gallery > *")).to_have_count(12)
    page.get_by_role("button", name="Forget").click()
    expect(page.locator("#key-status")).to_have_text("Key removed from this browser.")
    expect(page.locator("#more")).to_be_hidden()
    expect(page.locator("#gallery > *")).to_have_count(0)
    expect(page.locator("#gallery-empty")).to_have_text(
        "Save your API key to see your generations."
    )
    page.close()
