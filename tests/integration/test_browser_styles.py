"""The "Saved styles" panel in Chromium against ``bff dev``: a designer's
personas made, made default, refused and deleted on the page, the Persona
picker following. Before, the page offered personas but only the HTTP API made
them. Each test has a user of its own (test_browser_jobs.py's)."""

from __future__ import annotations

import os

import requests

from tests.integration.test_browser import browser  # noqa: F401
from tests.integration.test_browser_jobs import open_page, user  # noqa: F401


def personas(base: str, auth: dict[str, str]) -> dict[str, dict]:
    items = requests.get(f"{base}/api/personas", headers=auth, timeout=10).json()["items"]
    return {p["name"]: p for p in items}


def test_designer_adds_makes_default_and_deletes_a_saved_style(browser, user):  # noqa: F811
    from playwright.sync_api import expect

    base, key, auth = user
    page = open_page(browser, base, key)
    console_errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
    page.on("dialog", lambda d: d.accept())
    page.reload()
    expect(page.locator("#key-status")).to_have_text("Key OK.")
    expect(page.locator("#styles-empty")).to_have_text("No saved styles yet: add one below.")

    page.get_by_label("Name", exact=True).fill("Evening gala")
    page.get_by_label("Keywords, comma-separated").fill("silk, draped, , floor length")
    page.get_by_label("Palette colours, comma-separated").fill("emerald , champagne")
    page.get_by_label("Aesthetic (optional)").fill("romantic")
    page.get_by_label("Description (optional)").fill("black-tie evening wear")
    page.get_by_label("Default style").check()
    page.get_by_role("button", name="Add style").click()
    gala = page.locator("#style-list li", has_text="Evening gala")
    expect(gala).to_contain_text("Keywords: silk, draped, floor length")
    expect(gala).to_contain_text("Colours: emerald, champagne · Aesthetic: romantic")
    expect(gala.locator(".badge")).to_have_text("default")
    expect(page.get_by_label("Name", exact=True)).to_have_value("")  # ready for the next
    saved = personas(base, auth)["Evening gala"]
    assert saved["keywords"] == ["silk", "draped", "floor length"]
    assert saved["palette"] == ["emerald", "champagne"]
    assert saved["aesthetic"] == "romantic" and saved["isDefault"] is True
    assert saved["description"] == "black-tie evening wear"
    # The form's picker has it at once, no reload.
    expect(page.locator("#persona option", has_text="Evening gala")).to_have_count(1)

    # By keyboard: type in the fields, Enter submits.
    page.get_by_label("Name", exact=True).focus()
    page.keyboard.type("Streetwear")
    page.keyboard.press("Tab")  # the aesthetic
    page.keyboard.press("Tab")
    page.keyboard.type("oversized, hoodie")
    page.keyboard.press("Enter")
    street = page.locator("#style-list li", has_text="Streetwear")
    expect(street).to_contain_text("Keywords: oversized, hoodie")
    expect(street.locator(".badge")).to_have_count(0)

    # One default at a time: making Streetwear the default unsets the gala's.
    page.get_by_role("button", name="Make “Streetwear” the default").click()
    expect(street.locator(".badge")).to_have_text("default")
    expect(gala.locator(".badge")).to_have_count(0)
    assert personas(base, auth)["Evening gala"]["isDefault"] is False
    page.get_by_role("button", name="Unset “Streetwear” as the default").click()
    expect(street.locator(".badge")).to_have_count(0)
    assert not any(p["isDefault"] for p in personas(base, auth).values())

    assert not console_errors, console_errors  # (the refusal below logs its 422)

    # The API's refusal, in its words: a keyword past 80 characters.
    page.get_by_label("Name", exact=True).fill("Too long")
    page.get_by_label("Keywords, comma-separated").fill("x" * 81)
    page.get_by_role("button", name="Add style").click()
    refused = requests.post(
        f"{base}/api/personas", json={"name": "Too long", "keywords": ["x" * 81]}, headers=auth
    )
    assert refused.status_code == 422
    error = page.locator("#style-error")
    expect(error).to_contain_text(refused.json()["error"]["message"])
    expect(error).to_contain_text("keywords")
    if shots := os.environ.get("BFF_SHOTS"):
        page.locator("#styles").screenshot(path=f"{shots}/styles-refused.png")
    assert "Too long" not in personas(base, auth)

    page.get_by_role("button", name="Delete the style “Evening gala”").click()
    expect(gala).to_have_count(0)
    expect(page.locator("#persona option", has_text="Evening gala")).to_have_count(0)
    assert list(personas(base, auth)) == ["Streetwear"]
    page.close()


def test_forgetting_the_key_hides_the_styles(browser, user):  # noqa: F811
    from playwright.sync_api import expect

    base, key, auth = user
    requests.post(f"{base}/api/personas", json={"name": "Resort"}, headers=auth, timeout=10)
    page = open_page(browser, base, key)
    page.reload()
    expect(page.locator("#style-list li")).to_have_count(1)
    expect(page.locator("#style-list li")).to_contain_text("Resort")
    page.get_by_role("button", name="Forget").click()
    expect(page.locator("#style-list li")).to_have_count(0)
    expect(page.locator("#persona option")).to_have_count(1)  # "best match" only
    page.close()


def test_a_refused_key_after_a_good_one_hides_the_last_accounts_styles(browser, user):  # noqa: F811
    from playwright.sync_api import expect

    base, key, auth = user
    requests.post(f"{base}/api/personas", json={"name": "Resort"}, headers=auth, timeout=10)
    body = {"prompt": "ivory linen shirt"}
    requests.post(f"{base}/api/generate/from-prompt", json=body, headers=auth, timeout=10)
    page = open_page(browser, base, key)
    page.reload()
    expect(page.locator("#style-list li")).to_have_count(1)
    expect(page.locator("#gallery li")).not_to_have_count(0)
    page.locator("#api-key").fill("bff_00000000_not-a-key")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#key-status")).to_contain_text("Key rejected")
    expect(page.locator("#style-list li")).to_have_count(0)
    expect(page.locator("#persona option")).to_have_count(1)  # "best match" only
    expect(page.locator("#gallery li")).to_have_count(0)
    page.close()


def test_a_batch_for_each_style_without_any_says_where_to_add_one(browser, user):  # noqa: F811
    """Before, "You have no personas yet.", a word the page used nowhere else."""
    from playwright.sync_api import expect

    base, key, _ = user
    page = open_page(browser, base, key)
    page.reload()
    expect(page.locator("#key-status")).to_have_text("Key OK.")
    page.get_by_label("Prompts, one a line").fill("ivory linen shirt")
    page.get_by_label("Once for each of my saved styles").check()
    page.get_by_role("button", name="Start the batch").click()
    expect(page.locator("#batch-error")).to_have_text(
        "You have no saved styles yet: add one under Saved styles above."
    )
    page.close()


def test_a_refused_style_button_is_said_where_screen_readers_hear_it(browser, user):  # noqa: F811
    from playwright.sync_api import expect

    base, key, auth = user
    requests.post(f"{base}/api/personas", json={"name": "Resort"}, headers=auth, timeout=10)
    page = open_page(browser, base, key)
    page.on("dialog", lambda d: d.accept())
    page.reload()
    item = page.locator("#style-list li", has_text="Resort")
    expect(item).to_have_count(1)
    gone = {"error": {"code": "not_found", "message": "persona not found"}}
    page.route("**/api/personas/*", lambda route: route.fulfill(status=404, json=gone))
    item.get_by_role("button", name="Delete").click()
    expect(item.locator('[aria-live="polite"]')).to_have_text("persona not found")
    page.close()


def test_designer_edits_a_saved_style_in_its_card(browser, user):  # noqa: F811
    """Before, a style could only be deleted and added again to change it:
    the page never used PATCH /api/personas/<id>."""
    from playwright.sync_api import expect

    base, key, auth = user
    body = {"name": "Evening gala", "keywords": ["silk", "draped"], "aesthetic": "romantic"}
    requests.post(f"{base}/api/personas", json={**body, "isDefault": True}, headers=auth)
    requests.post(f"{base}/api/personas", json={"name": "Resort"}, headers=auth)
    gala_id = personas(base, auth)["Evening gala"]["id"]
    page = open_page(browser, base, key)
    console_errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
    page.reload()
    page.get_by_label("Persona").select_option(label="Evening gala")

    gala = page.locator(f'#style-list li[data-id="{gala_id}"]')
    gala.get_by_role("button", name="Edit the style “Evening gala”").click()
    form = gala.locator("#style-form")  # in the style's own card
    expect(form.get_by_role("heading")).to_have_text("Edit “Evening gala”")
    name = form.get_by_label("Name", exact=True)
    expect(name).to_be_focused()
    expect(name).to_have_value("Evening gala")
    expect(form.get_by_label("Keywords, comma-separated")).to_have_value("silk, draped")
    expect(form.get_by_label("Aesthetic (optional)")).to_have_value("romantic")
    expect(form.get_by_label("Default style")).to_be_checked()

    name.fill("Black tie")
    form.get_by_label("Keywords, comma-separated").fill("silk, velvet, ")
    form.get_by_label("Palette colours, comma-separated").fill("midnight")
    form.get_by_label("Aesthetic (optional)").fill("")  # cleared: null, not kept
    form.get_by_label("Description (optional)").fill("white-tie too")
    form.get_by_label("Default style").uncheck()
    form.get_by_role("button", name="Save changes").click()
    expect(gala).to_contain_text("Keywords: silk, velvet · Colours: midnight")
    expect(gala.locator("strong")).to_have_text("Black tie")
    expect(gala.locator(".badge")).to_have_count(0)
    expect(gala.locator("#style-form")).to_have_count(0)  # back under the list, empty
    expect(page.locator("#style-form-title")).to_have_text("Add a style")
    expect(page.get_by_label("Name", exact=True)).to_have_value("")
    expect(gala.get_by_role("button", name="Edit the style “Black tie”")).to_be_focused()
    saved = personas(base, auth)["Black tie"]
    assert saved["id"] == gala_id and saved["aesthetic"] is None
    assert saved["keywords"] == ["silk", "velvet"] and saved["palette"] == ["midnight"]
    assert saved["description"] == "white-tie too" and saved["isDefault"] is False
    # The picker follows: the new name, still the one picked.
    picker = page.get_by_label("Persona")
    expect(picker.locator("option:checked")).to_have_text("Black tie")
    expect(picker.locator("option", has_text="Evening gala")).to_have_count(0)
    assert not console_errors, console_errors  # (the refusal below logs its 422)

    # A refusal is said beside the form, in its card, and changes nothing.
    resort = page.locator("#style-list li", has_text="Resort")
    resort.get_by_role("button", name="Edit the style “Resort”").click()
    resort.get_by_label("Keywords, comma-separated").fill("x" * 81)
    resort.get_by_role("button", name="Save changes").click()
    refused = requests.patch(
        f"{base}/api/personas/{personas(base, auth)['Resort']['id']}",
        json={"keywords": ["x" * 81]}, headers=auth, timeout=10,
    )  # fmt: skip
    assert refused.status_code == 422
    error = resort.get_by_role("alert")
    expect(error).to_contain_text(refused.json()["error"]["message"])
    expect(error).to_contain_text("keywords")
    if shots := os.environ.get("BFF_SHOTS"):
        page.locator("#styles").screenshot(path=f"{shots}/styles-edit-refused.png")
    assert personas(base, auth)["Resort"]["keywords"] == []
    page.keyboard.press("Escape")  # gives up the edit
    expect(resort.locator("#style-form")).to_have_count(0)
    expect(page.locator("#style-error")).to_be_empty()
    page.close()
