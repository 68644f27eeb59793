"""A batch on the page in Chromium against ``bff dev``, as a designer who
sent it with `bff batch` or the API sees it: listed, followed while it runs,
each generation a card (with its images and status), cancelled there. Each
test has a user of its own (test_browser_jobs.py's). A member "still running"
is a finished one put back to running in SQLite, as there."""

from __future__ import annotations

import os
import sqlite3
import time

import requests

from tests.integration.test_browser import browser  # noqa: F401
from tests.integration.test_browser_jobs import open_page, put_back_to_running, user  # noqa: F401

LOCAL = {"provider": "local"}


def finished_batch(base: str, auth: dict[str, str], items: list[dict]) -> tuple[str, list[dict]]:
    """A batch sent as `bff batch` sends one, waited for: (its id, its generations)."""
    resp = requests.post(f"{base}/api/batches", json={"items": items}, headers=auth, timeout=10)
    assert resp.status_code == 202, resp.text
    batch_id = resp.json()["id"]
    deadline = time.monotonic() + 90
    while (batch := requests.get(f"{base}/api/batches/{batch_id}", headers=auth).json())[
        "status"
    ] != "completed":
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)
    gens = requests.get(f"{base}/api/generate?batchId={batch_id}", headers=auth).json()["items"]
    return batch_id, gens


def test_a_running_batch_shows_each_generation_and_can_be_cancelled(embedded, browser, user):  # noqa: F811
    """Before, a batch sent from outside the page was nowhere on it, and one
    sent from it showed a status line only until every generation was final."""
    from playwright.sync_api import expect

    base, key, auth = user
    items = [
        {"prompt": "ivory linen shirt", "settings": {**LOCAL, "count": 2}},
        {"prompt": "rust wool coat", "settings": LOCAL},
        {"prompt": "sage trench", "settings": LOCAL},
    ]
    batch_id, gens = finished_batch(base, auth, items)
    shirt = next(g for g in gens if g["prompt"]["original"] == "ivory linen shirt")
    trench = next(g for g in gens if g["prompt"]["original"] == "sage trench")
    put_back_to_running(embedded.db_path, trench["id"])  # still storing, no image yet
    with sqlite3.connect(embedded.db_path) as conn:
        conn.execute("DELETE FROM generation_assets WHERE generation_id = ?", (trench["id"],))
        conn.execute("UPDATE batches SET finished_at = NULL WHERE id = ?", (batch_id,))

    page = open_page(browser, base, key)
    console_errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
    page.reload()
    row = page.locator(f'#batch-list li[data-id="{batch_id}"]')
    expect(row.locator(".badge")).to_have_text("processing")
    expect(row).to_contain_text("3 generations")
    expect(row).to_contain_text("2 of 3 done")
    expect(row.get_by_role("button")).to_have_attribute("aria-pressed", "true")  # followed
    # A designer's sentence; the id, for bff and the API, under it, not leading.
    expect(page.locator("#batch-status")).to_have_text("Running: 2 of 3 done · $0.000")
    expect(page.locator("#batch-id")).to_have_text(f"Batch {batch_id}")
    expect(page.get_by_role("progressbar", name="Batch progress")).to_have_attribute("value", "2")

    members = page.get_by_role("list", name="The batch's generations")
    prompts = [i["prompt"] for i in items]
    expect(members.locator("li.item .prompt")).to_have_text(prompts)  # the batch's order
    card = members.locator(f'li.item[data-id="{shirt["id"]}"]')
    expect(card.locator(".badge")).to_have_text("completed")
    expect(card.get_by_role("group", name="2 images")).to_be_visible()  # cards.js's thumbnails
    expect(card.locator(".img-link img")).to_have_attribute("src", shirt["assets"][0]["url"])
    running = members.locator(f'li.item[data-id="{trench["id"]}"]')
    expect(running.locator(".badge")).to_have_text("processing")
    expect(running.locator(".placeholder")).to_have_text("processing")
    if shots := os.environ.get("BFF_SHOTS"):
        page.locator("#batch").screenshot(path=f"{shots}/batch-running.png")

    page.get_by_role("button", name="Cancel batch").click()
    expect(page.locator("#batch-status")).to_have_text(
        "Canceled: 3 of 3 done · 1 canceled · $0.000"
    )
    expect(running.locator(".badge")).to_have_text("canceled")
    expect(row.locator(".badge")).to_have_text("canceled")
    expect(page.get_by_role("button", name="Cancel batch")).to_be_hidden()
    expect(page.get_by_role("button", name="Download ZIP")).to_be_visible()
    assert (
        requests.get(f"{base}/api/batches/{batch_id}", headers=auth).json()["counts"]["canceled"]
        == 1
    )
    assert not console_errors, console_errors
    page.close()


def test_refresh_shows_a_batch_sent_from_elsewhere(browser, user):  # noqa: F811
    """ "Your batches" was read once, at load: a batch sent with bff while the
    page was open appeared only after a reload."""
    from playwright.sync_api import expect

    base, key, auth = user
    page = open_page(browser, base, key)
    page.reload()
    expect(page.locator("#batches-empty")).to_have_text("No batches yet.")
    batch_id, _ = finished_batch(base, auth, [{"prompt": "navy blazer", "settings": LOCAL}])
    page.locator("#refresh").click()
    expect(page.locator(f'#batch-list li[data-id="{batch_id}"]')).to_contain_text("1 of 1 done")
    expect(page.locator("#batches-empty")).to_have_text("")
    expect(page.locator("#gallery")).to_contain_text("navy blazer")


def test_an_earlier_batch_is_shown_from_the_list(browser, user):  # noqa: F811
    from playwright.sync_api import expect

    base, key, auth = user
    older, _ = finished_batch(base, auth, [{"prompt": "navy blazer", "settings": LOCAL}])
    newer, _ = finished_batch(base, auth, [{"prompt": "camel coat", "settings": LOCAL}] * 2)
    page = open_page(browser, base, key)
    page.reload()
    rows = page.locator("#batch-list li")
    expect(rows).to_have_count(2)
    expect(rows.first).to_have_attribute("data-id", newer)  # newest first
    expect(page.locator("#batch-run")).to_be_hidden()  # none running: none opened unasked
    rows.last.get_by_role("button").click()
    members = page.get_by_role("list", name="The batch's generations")
    expect(members.locator("li.item")).to_have_count(1)
    expect(members).to_contain_text("navy blazer")
    expect(members.locator("li.item .img-link img")).to_have_count(1)
    expect(page.locator("#batch-status")).to_have_text("Finished: 1 of 1 done · $0.000")
    expect(page.locator("#batch-id")).to_have_text(f"Batch {older}")
    # Looking at a finished batch leaves the gallery as it was (its pages, "Load more").
    reloads: list[str] = []
    page.on("request", lambda r: "/api/generate?limit=12" in r.url and reloads.append(r.url))
    rows.first.get_by_role("button").click()
    expect(page.locator("#batch-id")).to_have_text(f"Batch {newer}")
    expect(page.locator("#batch-status")).to_have_text("Finished: 2 of 2 done · $0.000")
    expect(members.locator("li.item")).to_have_count(2)
    rows.last.get_by_role("button").click()
    expect(members.locator("li.item")).to_have_count(1)
    assert not reloads, reloads
    page.get_by_role("button", name="Forget").click()  # another's key: none of this shown
    expect(rows).to_have_count(0)
    expect(page.locator("#batch-run")).to_be_hidden()
    page.close()


def test_a_batch_s_buttons_stay_on_its_card_on_a_phone(browser, user):  # noqa: F811
    """Before, the batch id (one long word) kept Download ZIP past the card's edge."""
    from playwright.sync_api import expect

    base, key, auth = user
    finished_batch(base, auth, [{"prompt": "navy blazer", "settings": LOCAL}])
    page = open_page(browser, base, key, width=390, height=800)
    page.reload()
    page.locator("#batch-list li").get_by_role("button").click()
    download = page.get_by_role("button", name="Download ZIP")
    expect(download).to_be_visible()
    panel = page.locator("#batch").bounding_box()
    button = download.bounding_box()
    assert button["x"] + button["width"] <= panel["x"] + panel["width"], (button, panel)
    page.close()


def test_retrying_a_failed_member_follows_its_batch_again(embedded, browser, user):  # noqa: F811
    """Before, the batch shown said "completed" and the member's card "failed"
    while the retried member ran again, and after it ended."""
    from playwright.sync_api import expect

    from tests.integration.test_browser import fail

    base, key, auth = user
    items = [
        {"prompt": "navy blazer", "settings": LOCAL},
        {"prompt": "camel coat", "settings": LOCAL},
    ]
    batch_id, gens = finished_batch(base, auth, items)
    coat = next(g for g in gens if g["prompt"]["original"] == "camel coat")
    fail(embedded.db_path, coat["id"], "the provider refused the prompt")
    page = open_page(browser, base, key)
    page.reload()
    page.locator(f'#batch-list li[data-id="{batch_id}"]').get_by_role("button").click()
    members = page.get_by_role("list", name="The batch's generations")
    card = members.locator(f'li.item[data-id="{coat["id"]}"]')
    expect(card.locator(".reason")).to_have_text("generate: the provider refused the prompt")
    expect(page.locator("#batch-status")).to_have_text("Finished: 2 of 2 done · 1 failed · $0.000")
    card.get_by_role("button", name="Retry “camel coat”").click()
    expect(card.locator(".badge")).to_have_text("completed")
    expect(card.locator(".img-link img")).to_have_count(1)
    expect(page.locator("#batch-status")).to_have_text("Finished: 2 of 2 done · $0.000")
    page.close()


def test_the_batch_shown_can_be_deleted(browser, user):  # noqa: F811
    """Before, the page had no way to delete a batch: only the API's DELETE."""
    from playwright.sync_api import expect

    base, key, auth = user
    kept, _ = finished_batch(base, auth, [{"prompt": "camel coat", "settings": LOCAL}])
    batch_id, gens = finished_batch(base, auth, [{"prompt": "navy blazer", "settings": LOCAL}] * 2)
    page = open_page(browser, base, key)
    page.reload()
    page.locator(f'#batch-list li[data-id="{batch_id}"]').get_by_role("button").click()
    members = page.get_by_role("list", name="The batch's generations")
    expect(members.locator("li.item")).to_have_count(2)
    gallery = page.locator("#gallery li.item")
    expect(gallery).to_have_count(3)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    page.get_by_role("button", name="Delete batch").click()
    expect(page.locator("#batch-list li")).to_have_count(1)
    expect(page.locator("#batch-list li")).to_have_attribute("data-id", kept)
    expect(page.locator("#batch-run")).to_be_hidden()
    expect(gallery).to_have_count(1)  # its generations' cards gone from the gallery too
    expect(gallery).to_contain_text("camel coat")
    assert dialogs and "Delete this batch" in dialogs[0], dialogs
    assert requests.get(f"{base}/api/batches/{batch_id}", headers=auth).status_code == 404
    page.close()


def test_a_generation_deleted_anywhere_leaves_the_whole_page(browser, user):  # noqa: F811
    """Before, a member deleted from its batch card stayed in the gallery and
    the batch's counts did not change till it was opened again; deleted from
    the gallery, its batch card stayed."""
    from playwright.sync_api import expect

    base, key, auth = user
    items = [
        {"prompt": "navy blazer", "settings": LOCAL},
        {"prompt": "camel coat", "settings": LOCAL},
    ]
    batch_id, gens = finished_batch(base, auth, items)
    blazer, coat = (next(g for g in gens if g["prompt"]["original"] == i["prompt"]) for i in items)
    page = open_page(browser, base, key)
    page.reload()
    page.on("dialog", lambda d: d.accept())
    page.locator(f'#batch-list li[data-id="{batch_id}"]').get_by_role("button").click()
    members = page.get_by_role("list", name="The batch's generations")
    gallery = page.locator("#gallery")
    expect(members.locator("li.item")).to_have_count(2)
    expect(gallery.locator("li.item")).to_have_count(2)
    status = page.locator("#batch-status")
    expect(status).not_to_contain_text("deleted")

    members.get_by_role("button", name="Delete “navy blazer”").click()
    expect(members.locator(f'li.item[data-id="{blazer["id"]}"]')).to_have_count(0)
    expect(gallery.locator(f'li.item[data-id="{blazer["id"]}"]')).to_have_count(0)
    expect(status).to_have_text("Finished: 2 of 2 done · 1 deleted · $0.000")

    gallery.get_by_role("button", name="Delete “camel coat”").click()
    expect(gallery.locator("li.item")).to_have_count(0)
    expect(members.locator("li.item")).to_have_count(0)
    expect(status).to_have_text("Finished: 2 of 2 done · 2 deleted · $0.000")
    expect(page.locator("#gallery-empty")).to_have_text("No generations yet.")
    page.close()


def test_a_batch_from_the_page_keeps_the_forms_persona_and_what_to_leave_out(browser, user):  # noqa: F811
    """Before, a batch started on the page dropped the Persona picked and the
    "Leave out" text the hint under it said came from the form above."""
    from playwright.sync_api import expect

    base, key, auth = user
    persona = requests.post(
        f"{base}/api/personas", json={"name": "Riviera", "keywords": ["linen"]}, headers=auth
    ).json()["id"]
    page = open_page(browser, base, key)
    page.reload()
    page.get_by_label("Leave out (negative prompt)").fill("logos")
    page.get_by_label("Persona").select_option(label="Riviera")
    page.get_by_label("Provider").select_option("local")
    page.get_by_label("Prompts, one a line").fill("navy blazer\ncamel coat")
    page.get_by_role("button", name="Start the batch").click()
    expect(page.locator("#batch-id")).to_contain_text("Batch bat_")
    batch_id = page.locator("#batch-id").text_content().split()[-1]
    gens = requests.get(f"{base}/api/generate?batchId={batch_id}", headers=auth).json()["items"]
    assert len(gens) == 2, gens
    assert {g["personaId"] for g in gens} == {persona}
    assert all(g["prompt"]["negative"].startswith("logos") for g in gens), gens  # enhance adds
    page.close()


def test_a_note_in_the_batch_box_is_not_a_prompt_and_a_repeat_is_refused(browser, user):  # noqa: F811
    """Before, every non-blank line was a prompt (``# autumn drop`` a paid
    generation), and a line pasted twice was two; the box is read as a .txt
    file is read by ``bff batch``."""
    from playwright.sync_api import expect

    base, key, auth = user
    page = open_page(browser, base, key)
    page.reload()
    page.get_by_label("Provider").select_option("local")
    box = page.get_by_label("Prompts, one a line")
    box.fill("navy blazer\ncamel coat\nnavy blazer ")
    page.get_by_role("button", name="Start the batch").click()
    # Said by the box's own name, not the API's ("request validation failed
    # (matrix.promptsText: …)", before).
    error = page.locator("#batch-error")
    expect(error).to_contain_text("Prompts: line 3 repeats line 1")
    assert "matrix." not in error.text_content() and "validation" not in error.text_content()
    page.get_by_label("Colourways (optional, comma-separated: each prompt in each)").fill(
        "navy, Navy"
    )
    box.fill("navy blazer")
    page.get_by_role("button", name="Start the batch").click()
    expect(error).to_contain_text("Colourways: ")
    assert "matrix." not in error.text_content()
    page.get_by_label("Colourways (optional, comma-separated: each prompt in each)").fill("")
    box.fill("# autumn drop\r\nnavy blazer\n\n  # later: camel coat\n")
    page.get_by_role("button", name="Start the batch").click()
    expect(page.locator("#batch-id")).to_contain_text("Batch bat_")
    expect(page.locator("#batch-error")).to_have_text("")
    batch_id = page.locator("#batch-id").text_content().split()[-1]
    gens = requests.get(f"{base}/api/generate?batchId={batch_id}", headers=auth).json()["items"]
    assert [g["prompt"]["original"] for g in gens] == ["navy blazer"]
    page.close()


def test_a_refine_from_a_batch_card_shows_on_that_card(browser, user):  # noqa: F811
    """Before, the batch's card kept its one image and went on offering
    "Upscale ×2" (a 409 when clicked) after the refine it started completed."""
    from playwright.sync_api import expect

    base, key, auth = user
    batch_id, gens = finished_batch(base, auth, [{"prompt": "navy blazer", "settings": LOCAL}])
    page = open_page(browser, base, key)
    page.reload()
    page.locator(f'#batch-list li[data-id="{batch_id}"]').get_by_role("button").click()
    card = page.get_by_role("list", name="The batch's generations").locator("li.item")
    expect(card.locator(".img-link img")).to_have_count(1)
    card.get_by_role("button", name="Upscale ×2").click()
    expect(page.locator('#stages li[data-stage="refine"]')).to_have_attribute(
        "data-status", "completed", timeout=60_000
    )
    expect(card.get_by_role("group", name="2 images")).to_be_visible()
    expect(card.get_by_role("button", name="Upscale ×2")).to_have_count(0)
    page.close()
