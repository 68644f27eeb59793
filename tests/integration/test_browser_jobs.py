"""The page while a job runs, in Chromium against ``bff dev``: a reload in the
middle, a cancel, a server that goes away, a click whose answer is off
screen, an upload refused. Each test has a user of its own, so the page finds
no one else's jobs running. A job "in the middle" is a finished one put back
to running in SQLite: the offline provider is done in a second.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import sqlite3
from pathlib import Path

import pytest
import requests

from app.api.auth import create_user
from app.platform.db import Database
from tests.integration.helpers import submit, wait_final
from tests.integration.test_browser import browser  # noqa: F401


@pytest.fixture
def user(embedded) -> tuple[str, str, dict[str, str]]:
    """(base URL, key, auth headers) of a new user, made in the system's
    database as ``bff users create`` makes one (a ``bff`` process a test
    cost 2-3 s of the suite's time)."""
    with _database(embedded.db_path).session() as session:
        _, key = create_user(session, f"jobs-{secrets.token_hex(4)}")
    return embedded.base_url, key, {"Authorization": f"Bearer {key}"}


@functools.cache
def _database(path: Path) -> Database:
    return Database(f"sqlite:///{path}")


def put_back_to_running(db_path: Path, gen_id: str) -> None:
    """Leave ``gen_id`` as if its worker were still storing its images."""
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "UPDATE generations SET status = 'processing', completed_at = NULL WHERE id = ?",
            (gen_id,),
        )
        conn.execute(
            "UPDATE generation_stages SET status = 'running', finished_at = NULL,"
            " duration_ms = NULL WHERE generation_id = ? AND name = 'store'",
            (gen_id,),
        )


def running_job(embedded, base: str, auth: dict[str, str]) -> str:
    gen_id = submit(base, auth, "black tuxedo jumpsuit", settings={"provider": "local"})
    assert wait_final(base, auth, gen_id)["status"] == "completed"
    put_back_to_running(embedded.db_path, gen_id)
    return gen_id


def generate_on_page(page, prompt: str) -> None:
    """After a reload with the key saved: ``prompt`` generated from the page
    on the local provider, its result shown under Progress."""
    from playwright.sync_api import expect

    page.reload()
    expect(page.locator("#key-status")).to_have_text("Key OK.")
    page.get_by_label("Describe the garment").fill(prompt)
    page.get_by_label("Provider").select_option("local")
    page.get_by_role("button", name="Generate").click()  # (Playwright scrolls to it first)
    expect(page.locator("#gen-status")).to_contain_text("Completed with local")
    expect(page.locator("#result img")).to_have_count(1)


def open_page(browser, base: str, key: str, **viewport):  # noqa: F811
    page = browser.new_page(viewport=viewport or {"width": 1280, "height": 900})
    page.goto(base + "/")
    page.evaluate("k => localStorage.setItem('bff.apiKey', k)", key)
    return page


def test_a_reload_mid_job_goes_on_following_it_and_can_cancel_it(embedded, browser, user):  # noqa: F811
    """Before, the Progress panel said "Nothing running yet." after a reload
    and the card said "pending" until the designer thought of Refresh."""
    from playwright.sync_api import expect

    base, key, auth = user
    gen_id = running_job(embedded, base, auth)
    page = open_page(browser, base, key)
    page.reload()
    expect(page.locator("#gen-id")).to_have_text(gen_id)
    expect(page.locator('#stages li[data-stage="store"]')).to_have_attribute(
        "data-status", "running"
    )
    card = page.locator(f'#gallery li.item[data-id="{gen_id}"]')
    expect(card.locator(".badge")).to_have_text("processing")

    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.locator("#gen-status")).to_have_text("Generation canceled.")
    expect(card.locator(".badge")).to_have_text("canceled")
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_hidden()
    assert requests.get(f"{base}/api/generate/{gen_id}", headers=auth).json()["status"] == (
        "canceled"
    )
    page.close()


def test_forgetting_the_key_stops_showing_its_job(embedded, browser, user):  # noqa: F811
    """Before, the forgotten key's job went on streaming into the panel, its
    Cancel still offered (a 401 once clicked)."""
    from playwright.sync_api import expect

    base, key, auth = user
    gen_id = running_job(embedded, base, auth)
    page = open_page(browser, base, key)
    page.reload()
    expect(page.locator("#gen-id")).to_have_text(gen_id)
    page.get_by_role("button", name="Forget").click()
    expect(page.locator("#gen-id")).to_have_text("")
    expect(page.locator("#gen-status")).to_have_text("Nothing running yet.")
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_hidden()
    expect(page.locator('#stages li[data-status="running"]')).to_have_count(0)
    page.close()


def test_losing_the_server_mid_job_says_so_and_stops_the_spinner(embedded, browser, user):  # noqa: F811
    """The stream says generate is running, then the server is gone: before,
    generate span on for ever beside "generate: running…"."""
    from playwright.sync_api import expect

    base, key, _ = user
    page = open_page(browser, base, key)
    page.reload()
    expect(page.locator("#key-status")).to_have_text("Key OK.")
    running = {"stage": "generate", "status": "running", "durationMs": None, "attempt": 1}
    streams: list[str] = []

    def events(route) -> None:  # the first stream tells of generate, then nothing answers
        streams.append(route.request.url)
        if len(streams) > 1:
            route.abort("connectionrefused")
            return
        body = f"event: stage\ndata: {json.dumps(running)}\n\n"
        route.fulfill(status=200, content_type="text/event-stream", body=body)

    page.route(re.compile(r"/api/generate/gen_\w+/events$"), events)
    page.route(re.compile(r"/api/generate/gen_\w+$"), lambda r: r.abort("connectionrefused"))
    page.get_by_label("Describe the garment").fill("ivory lace wedding gown")
    page.get_by_role("button", name="Generate").click()
    status = page.locator("#gen-status")
    expect(status).to_contain_text("No news of gen_")
    expect(status).to_contain_text("the server cannot be reached")
    expect(page.locator('#stages li[data-status="running"]')).to_have_count(0)
    expect(page.locator('#stages li[data-stage="generate"]')).to_have_attribute(
        "data-status", "unknown"
    )
    page.close()


def test_progress_comes_into_view_on_a_phone(browser, user):  # noqa: F811
    """On a phone the Progress panel is below the form: before, Generate
    showed nothing on screen but a button greyed for a second."""
    from playwright.sync_api import expect

    base, key, _ = user
    page = open_page(browser, base, key, width=375, height=700)
    generate_on_page(page, "camel wool wrap coat")
    expect(page.locator("#gen-status")).to_be_in_viewport()
    page.close()


def test_a_refused_upload_is_said_once(browser, user, tmp_path):  # noqa: F811
    """The API's message already names the problem its field detail gives:
    before, "GIF images are not accepted: … (image: GIF images are not accepted: …)"."""
    from PIL import Image
    from playwright.sync_api import expect

    base, key, _ = user
    gif = tmp_path / "dress.gif"
    Image.new("RGB", (64, 64), (120, 30, 40)).save(gif)
    page = open_page(browser, base, key)
    page.reload()
    expect(page.locator("#key-status")).to_have_text("Key OK.")
    page.locator("#image").set_input_files(str(gif))
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#form-error")).to_have_text(
        "GIF images are not accepted: send PNG, JPEG or WebP"
    )
    page.close()


def test_a_refused_upload_clears_the_last_result(browser, user, tmp_path):  # noqa: F811
    """Before, the earlier job's images stayed under Progress beside the
    refusal, as if they were the refused photo's result."""
    from PIL import Image
    from playwright.sync_api import expect

    base, key, _ = user
    whole = tmp_path / "whole.jpg"
    Image.new("RGB", (256, 256), (120, 30, 40)).save(whole)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(whole.read_bytes()[:400])  # a JPEG cut off: it does not decode
    page = open_page(browser, base, key)
    generate_on_page(page, "camel wool wrap coat")

    page.locator("#image").set_input_files(str(corrupt))
    with page.expect_response(re.compile(r"/api/generate/from-image$")) as answer:
        page.get_by_role("button", name="Generate").click()
    assert answer.value.status == 422
    expect(page.locator("#form-error")).not_to_be_empty()
    expect(page.locator("#result img")).to_have_count(0)
    expect(page.locator("#gen-id")).to_be_empty()
    expect(page.locator("#gen-status")).to_have_text(
        "Nothing started: corrupt.jpg was refused (see under Generate)."
    )
    expect(page.locator('#stages li[data-status="completed"]')).to_have_count(0)
    page.close()


def test_a_late_cancel_answer_leaves_the_ending(embedded, browser, user):  # noqa: F811
    """The cancel's commit wakes the stream before its own answer is sent: the
    stream's ``done`` may come first. Before, "Canceling…" then replaced
    "Generation canceled." for good."""
    from playwright.sync_api import expect

    base, key, auth = user
    gen_id = running_job(embedded, base, auth)
    page = open_page(browser, base, key)
    held = []

    def hold(route) -> None:  # the cancel reaches the server; its answer waits
        held.append((route, route.fetch()))

    page.route(re.compile(r"/api/generate/gen_\w+/cancel$"), hold)
    page.reload()
    expect(page.locator("#gen-id")).to_have_text(gen_id)
    cancel = page.get_by_role("button", name="Cancel", exact=True)
    cancel.click()
    status = page.locator("#gen-status")
    expect(status).to_have_text("Generation canceled.")
    route, answer = held[0]
    with page.expect_response(re.compile(r"/cancel$")):
        route.fulfill(response=answer)
    page.wait_for_function("() => !document.querySelector('#gen-cancel').disabled")
    expect(status).to_have_text("Generation canceled.")
    page.close()


def test_a_refine_takes_the_progress_panel(embedded, browser, user):  # noqa: F811
    """After a reload the page follows a running job; a refine of another
    image then shows in the panel. Before, that job's stream went on writing
    there and Cancel, beside the refine, canceled that job."""
    from playwright.sync_api import expect

    base, key, auth = user
    done = submit(base, auth, "emerald silk slip dress", settings={"provider": "local"})
    asset = wait_final(base, auth, done)["assets"][0]["id"]
    running = running_job(embedded, base, auth)
    page = open_page(browser, base, key)
    page.reload()
    expect(page.locator("#gen-id")).to_have_text(running)
    page.get_by_role("button", name=f"Upscale ×2 image #{asset}").click()
    expect(page.locator("#gen-status")).to_contain_text("Completed with local")
    expect(page.locator("#gen-id")).to_have_text(done)
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_hidden()
    assert requests.get(f"{base}/api/generate/{running}", headers=auth).json()["status"] == (
        "processing"
    )
    page.close()
