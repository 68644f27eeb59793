"""A gallery card in Chromium against ``bff dev``: a job's several images,
the rating control, deleting the job the Progress panel shows; and the drop
zone's keyboard use. Each test has a user of its own (test_browser_jobs.py's).
"""

from __future__ import annotations

import re
import sqlite3

import requests

from tests.integration.helpers import submit, wait_final
from tests.integration.test_browser import browser  # noqa: F401
from tests.integration.test_browser_jobs import generate_on_page, open_page, user  # noqa: F401


def test_a_card_shows_each_of_its_images_and_feedback_names_the_one_shown(
    embedded,
    browser,  # noqa: F811
    user,  # noqa: F811
):
    """Before, a card of a 3-image job showed the first image only, with no
    hint of the others, and a heart always went to that first image."""
    from playwright.sync_api import expect

    base, key, auth = user
    gen_id = submit(base, auth, "rust wool coat", settings={"provider": "local", "count": 3})
    assets = wait_final(base, auth, gen_id)["assets"]
    assert len(assets) == 3
    page = open_page(browser, base, key)
    page.reload()
    card = page.locator(f'#gallery li.item[data-id="{gen_id}"]')
    expect(card.get_by_role("group", name="3 images")).to_be_visible()
    expect(card.locator(".thumbs .count")).to_contain_text("3 images")
    second = card.get_by_role("button", name="Show image 2 of 3")
    expect(second).to_have_attribute("aria-pressed", "false")
    second.click()
    expect(second).to_have_attribute("aria-pressed", "true")
    main = card.locator(".img-link img")
    expect(main).to_have_attribute("src", assets[1]["url"])
    expect(main).to_have_attribute("alt", "Generated image 2 of 3 for “rust wool coat”")
    expect(card.get_by_role("button", name=f"Upscale ×2 image #{assets[1]['id']}")).to_be_visible()

    card.get_by_role("button", name=re.compile("^Heart")).click()
    expect(card.locator(".meta")).to_have_text("Thanks, feedback saved.")
    with sqlite3.connect(embedded.db_path) as conn:
        rows = conn.execute(
            "SELECT asset_id FROM generation_feedback WHERE generation_id = ?"
            " AND feedback_type = 'heart' AND removed_at IS NULL",
            (gen_id,),
        ).fetchall()
    assert rows == [(assets[1]["id"],)]
    page.close()


def test_a_rating_once_given_offers_no_way_to_remove_it(browser, user):  # noqa: F811
    """The API cannot remove a rating: before, "–" stayed on offer, looked as
    if it removed it, and the old value came back after a reload."""
    from playwright.sync_api import expect

    base, key, auth = user
    gen_id = submit(base, auth, "sage linen shirt", settings={"provider": "local"})
    assert wait_final(base, auth, gen_id)["status"] == "completed"
    page = open_page(browser, base, key)
    page.reload()
    card = page.locator(f'#gallery li.item[data-id="{gen_id}"]')
    options = card.locator(".rating option")
    expect(options).to_have_text(["–", "1", "2", "3", "4", "5"])  # not rated yet
    card.get_by_label(re.compile("^Rate")).select_option("4")
    expect(card.locator(".meta")).to_have_text("Thanks, feedback saved.")
    expect(options).to_have_text(["1", "2", "3", "4", "5"])
    expect(card.locator(".rating")).to_have_attribute("title", re.compile("cannot be removed"))
    page.reload()
    expect(card.locator(".rating")).to_have_value("4")
    expect(options).to_have_text(["1", "2", "3", "4", "5"])
    page.close()


def test_deleting_the_job_the_progress_panel_shows_clears_it(browser, user):  # noqa: F811
    """Before, its stages stayed "done" and its image under Progress, as if the
    deleted generation were still there."""
    from playwright.sync_api import expect

    base, key, auth = user
    page = open_page(browser, base, key)
    generate_on_page(page, "navy pleated midi skirt")
    gen_id = page.locator("#gen-id").text_content()
    page.on("dialog", lambda d: d.accept())
    card = page.locator(f'#gallery li.item[data-id="{gen_id}"]')
    card.get_by_role("button", name=re.compile("^Delete")).click()
    expect(card).to_have_count(0)
    expect(page.locator("#result img")).to_have_count(0)
    expect(page.locator("#gen-id")).to_be_empty()
    expect(page.locator("#gen-status")).to_have_text("That generation was deleted.")
    expect(page.locator('#stages li[data-status="completed"]')).to_have_count(0)
    assert requests.get(f"{base}/api/generate/{gen_id}", headers=auth).status_code == 404
    page.close()


def test_the_drop_zone_is_one_keyboard_stop_with_no_control_nested_in_a_button(
    browser,  # noqa: F811
    user,  # noqa: F811
    tmp_path,
):
    """Before, the drop zone was a role="button" holding the file input and
    "Remove photo": controls inside a button, and Tab stopped on it twice."""
    from PIL import Image
    from playwright.sync_api import expect

    base, key, _ = user
    photo = tmp_path / "dress.png"
    Image.new("RGB", (64, 64), (120, 30, 40)).save(photo)
    page = open_page(browser, base, key)
    page.reload()
    nested = "[role=button] :is(input, button, select, textarea, a[href], [tabindex])"
    assert page.locator(nested).count() == 0
    focused = "() => document.activeElement.id"
    page.get_by_label("Leave out (negative prompt)").focus()
    page.keyboard.press("Tab")
    assert page.evaluate(focused) == "image"  # the file input, named by its label
    expect(page.get_by_label(re.compile("^Or drop a garment photo"))).to_be_focused()
    # Enter opens the chooser (Space does so natively), counted as the click
    # the page makes: whether a background tab of this browser may show a
    # chooser at all is Chromium's to decide, not the page's.
    page.evaluate(
        "() => { window.clicks = 0;"
        " document.querySelector('#image').addEventListener('click', () => window.clicks++); }"
    )
    page.keyboard.press("Enter")
    assert page.evaluate("() => window.clicks") == 1
    page.set_input_files("#image", str(photo))
    expect(page.locator("#drop-name")).to_have_text("dress.png")
    page.locator("#image").focus()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Remove photo")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#drop-name")).to_be_empty()

    # A photo dropped on it still goes to the form.
    dropped = page.evaluate_handle(
        "() => { const dt = new DataTransfer();"
        " dt.items.add(new File(['x'], 'coat.png', {type: 'image/png'})); return dt; }"
    )
    page.locator("#drop").dispatch_event("drop", {"dataTransfer": dropped})
    expect(page.locator("#drop-name")).to_have_text("coat.png")
    assert page.evaluate("() => document.querySelector('#image').files[0].name") == "coat.png"
    page.close()


def test_a_refused_refine_says_why_on_the_card_clicked(browser, user):  # noqa: F811
    """Before, the refusal went to the Progress panel, out of view from a card
    lower down: the button seemed to do nothing."""
    from playwright.sync_api import expect

    base, key, auth = user
    gen_id = submit(base, auth, "rust wool coat", settings={"provider": "local"})
    [asset] = wait_final(base, auth, gen_id)["assets"]
    page = open_page(browser, base, key)
    page.reload()
    card = page.locator(f'#gallery li.item[data-id="{gen_id}"]')
    upscale = card.get_by_role("button", name=f"Upscale ×2 image #{asset['id']}")
    expect(upscale).to_be_visible()
    refine = f"{base}/api/generate/{gen_id}/assets/{asset['id']}/refine"
    assert requests.post(refine, json={"upscale": 2}, headers=auth).status_code == 202
    upscale.click()  # meanwhile made elsewhere (bff refine): a 409, or one running
    expect(card.locator(".meta")).to_have_text(re.compile("already"))
    page.close()
