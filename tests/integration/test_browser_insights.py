"""The Insights view in Chromium against ``bff dev`` (the embedded default): a
new user's generations run through the real pipeline and worker, their
feedback through the learner; SQLite edits then spread the spend over days
and providers and fail one generation, as no offline provider would. Every
chart is read back from its Chart.js instance and compared with /api/stats.

Set BFF_UPDATE_SCREENSHOT=1 to refresh docs/insights.png from this run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from tests.integration.helpers import submit, wait_final
from tests.integration.test_browser import BFF, ROOT, browser, fail  # noqa: F401

CAP = 0.5
# generation -> (provider, cost, days ago) for the spend chart
SPEND = {0: ("google-imagen", 0.12, 2), 1: ("openai-dalle3", 0.04, 1), 2: ("local", 0.0, 0)}
# Every chart reads a Chart.js instance's data off its canvas.
READ_CHARTS = """() => Object.fromEntries([...document.querySelectorAll('#insights canvas')]
  .map((c) => { const ch = Chart.getChart(c); return [c.id, ch && {
    type: ch.config.type, labels: ch.data.labels,
    datasets: ch.data.datasets.map((d) => ({label: d.label, type: d.type || null, data: d.data}))}];
  }))"""


def bff(embedded, *args: str) -> str:
    run = subprocess.run(
        [BFF, *args], cwd=embedded.folder, env=embedded.env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


@pytest.fixture(scope="module")
def seeded(embedded):
    """A user of their own: 4 generations (3 images on a persona, 1 without
    and its upscaled variant, one failed at generate), hearts and a 1-star
    rating learnt from, a cap."""
    name = f"insights-{secrets.token_hex(4)}"  # a user of each set-up's own
    key = bff(embedded, "users", "create", name).strip().splitlines()[-1]
    bff(embedded, "users", "cap", name, str(CAP))
    base, auth = embedded.base_url, {"Authorization": f"Bearer {key}"}
    persona = requests.post(
        f"{base}/api/personas", json={"name": "Evening gala", "keywords": ["gala"]}, headers=auth
    ).json()["id"]
    local, two = {"provider": "local"}, {"provider": "local", "count": 2}
    ids = [
        submit(base, auth, "emerald silk slip dress", personaId=persona, settings=two),
        submit(base, auth, "charcoal wool overcoat", personaId=persona, settings=local),
        submit(base, auth, "neon vinyl raincoat", settings={**local, "upscale": 2}),
        submit(base, auth, "ivory linen shirt", settings=local),
    ]  # fmt: skip
    gens = [wait_final(base, auth, gen_id) for gen_id in ids]
    assert all(g["status"] == "completed" for g in gens), gens

    def feedback(gen: dict, **body) -> None:
        resp = requests.post(f"{base}/api/generate/{gen['id']}/feedback", json=body, headers=auth)
        assert resp.status_code == 201, resp.text

    feedback(gens[0], feedbackType="heart", assetId=gens[0]["assets"][1]["id"])
    feedback(gens[1], feedbackType="heart")
    feedback(gens[2], feedbackType="rating", rating=1)
    fail(embedded.db_path, ids[3], "the provider refused the prompt")
    with sqlite3.connect(embedded.db_path) as conn:
        for i, (provider, cost, days) in SPEND.items():
            conn.execute(
                "UPDATE generations SET provider = ?, cost = ?,"
                " created_at = datetime(created_at, ?) WHERE id = ?",
                (provider, cost, f"-{days} days", ids[i]),
            )
            conn.execute(  # paid that day (``spend.pay``)
                "INSERT INTO charges (user_id, generation_id, payment, provider, what, amount,"
                " created_at) SELECT user_id, id, 'seeded', provider, 'generate', cost, created_at"
                " FROM generations WHERE id = ?",
                (ids[i],),
            )
    deadline = time.monotonic() + 60  # until the worker's feedback.apply tasks are done
    while unlearnt(embedded.db_path, ids):
        assert time.monotonic() < deadline, "the learner did not apply the feedback"
        time.sleep(0.3)
    return base, key, auth, ids


def unlearnt(db_path, ids: list[str]) -> int:
    marks = ", ".join("?" * len(ids))
    with sqlite3.connect(db_path) as conn:
        return conn.execute(
            f"SELECT COUNT(*) FROM generation_feedback WHERE generation_id IN ({marks})"
            " AND applied_at IS NULL",
            ids,
        ).fetchone()[0]


def stats_of(base: str, auth: dict) -> dict:
    resp = requests.get(f"{base}/api/stats", headers=auth, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def open_insights(browser, base: str, key: str, width: int = 1280):  # noqa: F811
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": width, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.goto(base + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#key-status")).to_have_text("Key OK.")
    page.get_by_role("link", name="Insights").click()
    expect(page.locator("#insights")).to_have_attribute("data-state", "ready")
    expect(page.get_by_role("heading", name="New image")).to_be_hidden()
    return page, errors


def test_insights_view_charts_the_users_real_data(seeded, browser, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    base, key, auth, ids = seeded
    stats = stats_of(base, auth)
    page, errors = open_insights(browser, base, key)
    charts = page.evaluate(READ_CHARTS)
    assert all(charts.values()), charts  # every canvas holds a chart

    expect(page.locator("#tile-total")).to_have_text("4")
    expect(page.locator("#tile-success")).to_have_text("75 %")
    # Images as the persona chart counts them; before, the variant made it 5 against 4.
    expect(page.locator("#tile-images")).to_have_text("4")
    expect(page.locator("#tile-variants")).to_have_text("+ 1 refined variant")
    assert stats["images"] == sum(r["images"] for r in stats["imagesByPersona"]) == 4

    # Spend: 30 UTC days, a stacked bar per provider, the cap as a line.
    spend = charts["chart-spend"]
    today = datetime.now(UTC).date()
    assert spend["labels"][-1] == today.isoformat() and len(spend["labels"]) == 30
    series = {d["label"]: d["data"] for d in spend["datasets"]}
    assert set(series) == {"google-imagen", "openai-dalle3", "local", "Daily cap"}
    for provider, cost, days in SPEND.values():
        day = (today - timedelta(days=days)).isoformat()
        assert series[provider][spend["labels"].index(day)] == pytest.approx(cost)
        assert sum(series[provider]) == pytest.approx(cost)
    assert stats["dailyCap"] == CAP and set(series["Daily cap"]) == {CAP}
    assert {d["label"]: d["type"] for d in spend["datasets"]}["Daily cap"] == "line"

    assert charts["chart-outcomes"]["datasets"][0]["data"] == [3, 1, 0, 0]
    # Read aloud: the rate is of the finished ones (before, "75 % succeeded"
    # beside a total that counts canceled and running ones too).
    expect(page.locator("#chart-outcomes")).to_have_attribute(
        "aria-label",
        "Outcomes of 4 generations: 3 completed, 1 failed, 0 canceled, 0 in progress;"
        " 75 % of those finished succeeded.",
    )
    assert charts["chart-failures"]["labels"] == ["generate"] == list(stats["failuresByStage"])
    assert charts["chart-failures"]["datasets"][0]["data"] == [1]

    durations = charts["chart-durations"]
    assert set(durations["labels"]) == set(stats["stageDurationsMs"]) >= {"generate", "store"}
    p50, p95 = (d["data"] for d in durations["datasets"])
    for i, name in enumerate(durations["labels"]):
        assert [p50[i], p95[i]] == [stats["stageDurationsMs"][name][k] for k in ("p50", "p95")]

    personas = charts["chart-personas"]
    assert personas["labels"] == ["Evening gala", "no persona"]
    assert personas["datasets"][0]["data"] == [3, 1]

    terms = stats["learntTerms"]
    assert terms["top"] and terms["bottom"]  # hearts raised some terms, the 1-star lowered some
    learnt = terms["top"] + terms["bottom"][::-1]  # drawn as one ranking, best first
    assert charts["chart-terms"]["labels"] == [t["token"] for t in learnt]
    assert charts["chart-terms"]["datasets"][0]["data"] == [t["score"] for t in learnt]

    hearted = page.locator("#hearted img")
    expect(hearted).to_have_count(2)
    assert [hearted.nth(i).get_attribute("src") for i in range(2)] == [
        h["url"] for h in stats["mostHearted"]
    ]
    for i in range(2):
        assert page.evaluate(
            "(img) => img.complete && img.naturalWidth > 0", hearted.nth(i).element_handle()
        )

    shot = tmp_path / "insights.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("BFF_UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, ROOT / "docs" / "insights.png")

    # Back to the studio and forth again: one view at a time, the charts redrawn.
    page.get_by_role("link", name="Studio").click()
    expect(page.get_by_role("heading", name="New image")).to_be_visible()
    expect(page.locator("#insights")).to_be_hidden()
    page.get_by_role("link", name="Insights").click()
    expect(page.locator("#insights")).to_have_attribute("data-state", "ready")
    assert page.evaluate(READ_CHARTS) == charts
    assert not errors, errors
    page.close()


def test_insights_fit_a_narrow_screen(seeded, browser):  # noqa: F811
    base, key, _, _ = seeded
    page, errors = open_insights(browser, base, key, width=375)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert not errors, errors
    page.close()


def test_a_new_user_sees_why_charts_are_empty(embedded, browser):  # noqa: F811
    from playwright.sync_api import expect

    name = f"insights-empty-{secrets.token_hex(4)}"
    key = bff(embedded, "users", "create", name).strip().splitlines()[-1]
    page, errors = open_insights(browser, embedded.base_url, key)
    expect(page.locator("#chart-spend + .empty")).to_have_text("Nothing spent yet.")
    expect(page.locator("#chart-failures + .empty")).to_have_text("No failures.")
    expect(page.locator("#hearted-empty")).to_be_visible()
    assert not any(page.evaluate(READ_CHARTS).values())
    assert not errors, errors
    page.close()


def test_forget_takes_the_accounts_insights_off_the_page(seeded, browser):  # noqa: F811
    from playwright.sync_api import expect

    base, key, _, _ = seeded
    page, errors = open_insights(browser, base, key)
    expect(page.locator("#tile-total")).to_have_text("4")
    expect(page.locator("#hearted img")).not_to_have_count(0)
    page.get_by_role("button", name="Forget").click()
    # The next person at this browser sees none of it: no figure, chart or image.
    for tile in ["#tile-total", "#tile-success", "#tile-spent", "#tile-images"]:
        expect(page.locator(tile)).to_have_text("–")
    expect(page.locator("#tile-variants")).to_be_hidden()
    expect(page.locator("#hearted img")).to_have_count(0)
    expect(page.locator("#insights-status")).to_have_text("Save your API key to see your insights.")
    assert not any(page.evaluate(READ_CHARTS).values())
    page.get_by_role("link", name="Studio").click()
    page.get_by_role("link", name="Insights").click()
    expect(page.locator("#tile-total")).to_have_text("–")
    assert not errors, errors
    page.close()
