"""Feedback you can see: the generation JSON carries the caller's own heart,
rating and outlier; a second heart or outlier withdraws the first, a new
rating replaces the last; the learner undoes what was withdrawn, so it is
never fed twice, in whatever order its tasks run."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, select

from app.api import responses as r
from app.domain.models import GenerationFeedback, PromptTokenScore, utcnow
from app.pipeline import maintenance
from app.pipeline.optimize import START
from tests.support.pipeline import services
from tests.support.procs import together
from tests.test_api_generations import completed, conforms

NONE = {"heart": False, "rating": None, "outlier": False}


def post(client, user, gid: str, kind: str, **body):
    body["feedbackType"] = kind
    return client.post(f"/api/generate/{gid}/feedback", json=body, headers=user.headers)


def test_hearts_and_outliers_toggle_ratings_replace_and_the_generation_shows_them(
    app, client, user
):
    gid = completed(app, client, user)
    url = f"/api/generate/{gid}"
    assert client.get(url, headers=user.headers).json["feedback"] == NONE

    first = post(client, user, gid, "heart")
    assert first.status_code == 201 and first.json["removedAt"] is None
    assert first.json["feedback"] == {**NONE, "heart": True}
    again = post(client, user, gid, "heart")  # withdraws it: the same row, now removed
    assert again.status_code == 200, again.json
    conforms(again.json, r.FeedbackOut)
    assert again.json["id"] == first.json["id"] and again.json["removedAt"]
    assert again.json["feedback"] == NONE

    for body in ({"rating": 2}, {"rating": 5}, {"comment": "lovely"}, {"comment": "drape"}):
        kind = "rating" if "rating" in body else "comment"
        assert post(client, user, gid, kind, **body).status_code == 201
    assert post(client, user, gid, "outlier").json["feedback"]["outlier"] is True
    assert post(client, user, gid, "heart").status_code == 201
    want = {"heart": True, "rating": 5, "outlier": True}
    gen = client.get(url, headers=user.headers).json
    conforms(gen, r.GenerationOut)
    assert gen["feedback"] == want
    assert client.get("/api/generate", headers=user.headers).json["items"][0]["feedback"] == want


def test_feedback_renews_the_etag_but_not_the_lease(app, client, user):
    gid = completed(app, client, user)
    url = f"/api/generate/{gid}"
    before = client.get(url, headers=user.headers)
    assert "no-cache" in before.headers["Cache-Control"]  # even final: feedback changes it
    post(client, user, gid, "rating", rating=4)
    after = client.get(url, headers={**user.headers, "If-None-Match": before.headers["ETag"]})
    assert after.status_code == 200 and after.json["feedback"]["rating"] == 4
    assert after.json["updatedAt"] == before.json["updatedAt"]  # the running stage's lease
    revalidate = {**user.headers, "If-None-Match": after.headers["ETag"]}
    unchanged = client.get(url, headers=revalidate)
    assert unchanged.status_code == 304  # with the 200's caching headers (RFC 9110 15.4.5)
    assert unchanged.headers["Cache-Control"] == after.headers["Cache-Control"]


def test_the_list_reads_feedback_in_one_query_per_page(app, client, user):
    for _ in range(3):
        post(client, user, completed(app, client, user), "heart")
    statements: list[str] = []
    engine = services(app).db.engine
    listen = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listen)
    try:
        counts = []
        for limit in (1, 1, 3):  # the first also warms the key cache
            statements.clear()
            page = client.get(f"/api/generate?limit={limit}", headers=user.headers).json
            assert all(item["feedback"]["heart"] for item in page["items"])
            counts.append(len(statements))
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    assert counts[1] == counts[2], statements


def scores(app, user) -> dict[str, float]:
    with services(app).db.session() as session:
        rows = session.execute(
            select(PromptTokenScore.token, PromptTokenScore.score).where(
                PromptTokenScore.user_id == user.id
            )
        )
        return dict(rows.all())


def test_the_learner_is_fed_once_whatever_the_clicks(app, client, user, monkeypatch):
    monkeypatch.setattr(maintenance, "FEEDBACK_GRACE", timedelta(0))  # for the last line
    gid = completed(app, client, user)

    def click(*feedback: dict) -> dict[str, float]:
        """Post the clicks, then run every row's task, newest first (the worst order)."""
        for body in feedback:
            assert post(client, user, gid, **body).status_code in (200, 201)
        with services(app).db.session() as session:
            ids = session.scalars(select(GenerationFeedback.id).order_by(GenerationFeedback.id))
        for fid in reversed(ids.all()):
            maintenance.apply_one_feedback(services(app).db, fid)
        return scores(app, user)

    heart, rating = {"kind": "heart"}, lambda n: {"kind": "rating", "rating": n}
    one_heart = click(heart)
    step = {t: (s - START) / (0.9 - START) for t, s in one_heart.items()}  # 0.1, or 0.15 explored
    assert step and all(s == pytest.approx(0.1) or s == pytest.approx(0.15) for s in step.values())

    def one(reward: float) -> dict[str, float]:
        """The scores after this reward alone."""
        return pytest.approx({t: START + st * (reward - START) for t, st in step.items()})

    assert click(heart) == one(START)  # withdrawn: undone
    assert click(heart, heart, heart) == one(0.9)  # on, off, on
    assert click(heart) == one(START)
    assert click(rating(5)) == one(1.0)
    assert click(rating(2)) == one(0.25)  # replaced: as one 2, though the 2 is applied first
    assert click(rating(1), rating(3), rating(5)) == one(1.0)
    assert maintenance.apply_pending_feedback(services(app).db) == 0  # nothing left to do


def test_the_sweep_applies_and_undoes_feedback_whose_task_was_lost(app, client, user, monkeypatch):
    gid = completed(app, client, user)
    post(client, user, gid, "outlier")
    # Its task waits behind every stage: a minute's wait is not yet a loss.
    monkeypatch.setattr(maintenance, "utcnow", lambda: utcnow() + timedelta(minutes=1))
    assert maintenance.apply_pending_feedback(services(app).db) == 0
    monkeypatch.setattr(maintenance, "FEEDBACK_GRACE", timedelta(0))
    assert maintenance.apply_pending_feedback(services(app).db) == 1
    assert all(s > START for s in scores(app, user).values())
    post(client, user, gid, "outlier")
    assert maintenance.apply_pending_feedback(services(app).db) == 1
    assert scores(app, user) == pytest.approx(dict.fromkeys(scores(app, user), START))


def test_two_clicks_at_once_take_turns(any_db, monkeypatch):
    """On and off arriving together: one adds the heart, the other withdraws it
    (SQLite has no FOR UPDATE: the request takes its write lock first)."""
    import time

    import app.domain.feedback as feedback

    app, user = any_db
    gid = completed(app, app.test_client(), user)
    real = feedback.utcnow
    # Widen the window between reading the standing rows and writing.
    monkeypatch.setattr(feedback, "utcnow", lambda: time.sleep(0.3) or real())
    answers = together(2, lambda _: post(app.test_client(), user, gid, "heart"))
    assert sorted(a.status_code for a in answers) == [200, 201]
    shown = app.test_client().get(f"/api/generate/{gid}", headers=user.headers)
    assert shown.json["feedback"] == NONE
