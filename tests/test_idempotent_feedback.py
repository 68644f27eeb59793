"""An ``Idempotency-Key`` on feedback and persona POSTs: a retry answers as
the first request did (about the same row, with the same status) and changes
nothing: a retried heart is not withdrawn, nor learnt twice; a retried
persona POST makes no second persona. The same key with another request is
409, and a duplicate that loses a race is answered as a retry."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import func, select

from app.api import responses as r
from app.domain.models import GenerationFeedback, Persona
from app.platform.queue import LAST
from tests.support.pipeline import services
from tests.support.procs import together
from tests.test_api_generations import assert_error, completed, conforms
from tests.test_personas_api import BODY as PERSONA

NONE = {"heart": False, "rating": None, "outlier": False}


def post(client, user, gid: str, key: str | None, kind: str = "heart", **body):
    headers = {**user.headers, **({"Idempotency-Key": key} if key else {})}
    body["feedbackType"] = kind
    return client.post(f"/api/generate/{gid}/feedback", json=body, headers=headers)


def learning(app, monkeypatch) -> list[int]:
    """The feedback ids ``app`` sends to the learner (``feedback.apply``) from now on."""
    celery, sent = services(app).celery, []
    real = celery.send_task  # the pipeline's chains go on as ever

    def send_task(name: str, *args, **kwargs):
        if name != "feedback.apply":
            return real(name, *args, **kwargs)
        # (Checked here, not asserted: the route swallows a failed send.)
        if kwargs.get("priority") == LAST:  # behind every stage of everyone's jobs
            sent.append(kwargs["args"][0])

    monkeypatch.setattr(celery, "send_task", send_task)
    return sent


@pytest.fixture
def learnt(app, monkeypatch) -> list[int]:
    return learning(app, monkeypatch)


def feedback_rows(app, gid: str) -> int:
    with services(app).db.session() as session:
        q = select(func.count()).where(GenerationFeedback.generation_id == gid)
        return session.scalar(q)


def test_a_retried_heart_stays_given_and_is_learnt_once(app, client, user, learnt):
    gid = completed(app, client, user)
    first = post(client, user, gid, "heart-1")
    assert first.status_code == 201 and first.json["feedback"] == {**NONE, "heart": True}
    again = post(client, user, gid, "heart-1")  # the network ate the first answer
    assert again.status_code == 201, again.json
    conforms(again.json, r.FeedbackOut)
    assert again.json == first.json  # the same row, still standing
    shown = client.get(f"/api/generate/{gid}", headers=user.headers).json
    assert shown["feedback"] == {**NONE, "heart": True}
    assert learnt == [first.json["id"]] and feedback_rows(app, gid) == 1


def test_a_retried_withdrawal_stays_withdrawn(app, client, user, learnt):
    gid = completed(app, client, user)
    given = post(client, user, gid, "on")
    taken = post(client, user, gid, "off")  # a second heart withdraws the first
    assert taken.status_code == 200 and taken.json["id"] == given.json["id"]
    again = post(client, user, gid, "off")
    assert again.status_code == 200, again.json
    assert again.json == taken.json and again.json["removedAt"]
    assert again.json["feedback"] == NONE
    # The first click's retry, late: about its row (withdrawn since), toggling nothing.
    late = post(client, user, gid, "on")
    assert late.status_code == 201 and late.json["id"] == given.json["id"]
    assert late.json["removedAt"] and late.json["feedback"] == NONE
    assert learnt == [given.json["id"]] * 2  # applied, then undone: nothing more
    assert feedback_rows(app, gid) == 1


def test_a_retried_rating_or_comment_is_not_recorded_twice(app, client, user, learnt):
    gid = completed(app, client, user)
    for kind, body in (("rating", {"rating": 4}), ("comment", {"comment": "lovely drape"})):
        first = post(client, user, gid, f"k-{kind}", kind, **body)
        again = post(client, user, gid, f"k-{kind}", kind, **body)
        assert first.status_code == again.status_code == 201
        assert again.json == first.json
    assert feedback_rows(app, gid) == 2 and len(learnt) == 2


def test_the_same_key_with_another_request_is_409(app, client, user, learnt):
    gid, other = completed(app, client, user), completed(app, client, user)
    assert post(client, user, gid, "k").status_code == 201
    assert_error(post(client, user, gid, "k", "rating", rating=5), 409, "idempotency_conflict")
    assert_error(post(client, user, gid, "k", "outlier"), 409, "idempotency_conflict")
    assert_error(post(client, user, other, "k"), 409, "idempotency_conflict")  # another generation
    assert feedback_rows(app, gid) == 1 and feedback_rows(app, other) == 0
    assert len(learnt) == 1
    shown = client.get(f"/api/generate/{gid}", headers=user.headers).json
    assert shown["feedback"] == {**NONE, "heart": True}


def test_a_retry_racing_its_original_takes_its_turn_and_replays(any_db, monkeypatch):
    """Both arrive together: the generation's lock makes the second wait for
    the first's commit, then it finds the first's answer."""
    import app.domain.feedback as feedback

    app, user = any_db
    gid = completed(app, app.test_client(), user)
    learnt = learning(app, monkeypatch)
    real = feedback.utcnow
    # Widen the window between reading the standing rows and writing.
    monkeypatch.setattr(feedback, "utcnow", lambda: time.sleep(0.3) or real())
    answers = together(2, lambda _: post(app.test_client(), user, gid, f"race-{gid}"))
    assert [a.status_code for a in answers] == [201, 201], [a.json for a in answers]
    assert answers[0].json["id"] == answers[1].json["id"]
    shown = app.test_client().get(f"/api/generate/{gid}", headers=user.headers)
    assert shown.json["feedback"] == {**NONE, "heart": True}
    assert learnt == [answers[0].json["id"]]


@contextmanager
def _lookups_miss(monkeypatch, module, misses: int) -> Iterator[None]:
    """The next ``misses`` key look-ups find nothing, as when a concurrent
    request with the key has not committed yet: its insert then breaks the
    unique constraint."""
    real, left = module.replay, [misses]

    def replay(*args, **kwargs):
        if left[0] > 0:
            left[0] -= 1
            return None
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "replay", replay)
    yield
    assert left[0] == 0, "the look-ups to miss were never made"


def test_a_key_racing_on_another_generation_is_409(app, client, user, monkeypatch, learnt):
    """The unique key decides: the loser's row is rolled back and it is told why."""
    import app.api.feedback as feedback

    gid, other = completed(app, client, user), completed(app, client, user)
    assert post(client, user, gid, "k").status_code == 201
    with _lookups_miss(monkeypatch, feedback, 2):  # made by, withdrawn by
        assert_error(post(client, user, other, "k"), 409, "idempotency_conflict")
    assert feedback_rows(app, other) == 0 and len(learnt) == 1


def persona_count(app, user) -> int:
    with services(app).db.session() as session:
        return session.scalar(select(func.count()).where(Persona.user_id == user.id))


def post_persona(client, user, key: str, **over):
    headers = {**user.headers, "Idempotency-Key": key}
    return client.post("/api/personas", json={**PERSONA, **over}, headers=headers)


def test_a_retried_persona_post_makes_one_persona(app, client, user, other_user):
    first = post_persona(client, user, "p-1", isDefault=True)
    again = post_persona(client, user, "p-1", isDefault=True)
    assert first.status_code == again.status_code == 201
    conforms(again.json, r.PersonaOut)
    assert again.json == first.json
    assert again.headers["Location"] == first.headers["Location"]
    assert persona_count(app, user) == 1

    assert_error(post_persona(client, user, "p-1", name="Other"), 409, "idempotency_conflict")
    theirs = post_persona(client, other_user, "p-1", isDefault=True)  # keys are per user
    assert theirs.status_code == 201 and theirs.json["id"] != first.json["id"]
    plain = client.post("/api/personas", json=PERSONA, headers=user.headers)
    assert plain.status_code == 201 and persona_count(app, user) == 2  # no key: a new one


def test_a_persona_post_losing_the_race_answers_with_the_winner(app, client, user, monkeypatch):
    import app.api.personas as personas

    first = post_persona(client, user, "p-race")
    with _lookups_miss(monkeypatch, personas, 1):
        again = post_persona(client, user, "p-race")
    assert again.status_code == 201, again.json
    assert again.json["id"] == first.json["id"] and persona_count(app, user) == 1
