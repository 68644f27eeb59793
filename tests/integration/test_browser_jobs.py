"""The page submitting a job, in Chromium against ``bff dev``: an upload
refused. Each test has a user of its own.
"""

from __future__ import annotations

import secrets
import subprocess

import pytest

from tests.integration.test_browser import BFF, browser  # noqa: F401


@pytest.fixture
def user(embedded) -> tuple[str, str, dict[str, str]]:
    """(base URL, key, auth headers) of a new user."""
    run = subprocess.run(
        [BFF, "users", "create", f"jobs-{secrets.token_hex(4)}"],
        cwd=embedded.folder, env=embedded.env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    key = run.stdout.strip().splitlines()[-1]
    return embedded.base_url, key, {"Authorization": f"Bearer {key}"}


def open_page(browser, base: str, key: str, **viewport):  # noqa: F811
    page = browser.new_page(viewport=viewport or {"width": 1280, "height": 900})
    page.goto(base + "/")
    page.evaluate("k => localStorage.setItem('bff.apiKey', k)", key)
    return page


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
