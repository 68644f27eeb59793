"""An ``Idempotency-Key`` on cancel and retry POSTs: a client that retries
after losing the answer gets the first answer again, not a 409 for the state
its own first request made; a retried retry resumes nothing twice. Another
request with the same key is 409; a new key acts anew."""

from __future__ import annotations

from tests.support.pipeline import load, run_all
from tests.test_api_generations import assert_error, failed, submit_prompt


def post(client, user, gen_id: str, action: str, key: str | None):
    headers = {**user.headers, **({"Idempotency-Key": key} if key else {})}
    return client.post(f"/api/generate/{gen_id}/{action}", headers=headers)


def dispatched(monkeypatch) -> list[str]:
    """The first stages of the chains ``app`` sends from now on."""
    from app.api import generations

    firsts: list[str] = []
    real = generations.dispatch

    def dispatch(celery, gen_id, first, **kwargs):
        firsts.append(first)
        return real(celery, gen_id, first, **kwargs)

    monkeypatch.setattr(generations, "dispatch", dispatch)
    return firsts


def test_a_retried_cancel_is_answered_again(app, client, user):
    gen_id = submit_prompt(client, user.headers)
    first = post(client, user, gen_id, "cancel", "c-1")
    assert first.status_code == 200 and first.get_json()["status"] == "canceled"
    again = post(client, user, gen_id, "cancel", "c-1")
    assert again.status_code == 200 and again.get_json() == first.get_json()
    assert_error(post(client, user, gen_id, "cancel", "c-2"), 409)  # a new cancel: too late
    assert_error(post(client, user, gen_id, "cancel", None), 409)
    assert_error(post(client, user, gen_id, "retry", "c-1"), 409, "idempotency_conflict")


def test_a_retried_retry_resumes_the_generation_once(app, client, user, monkeypatch):
    gen_id = failed(app, client, user, monkeypatch)
    firsts = dispatched(monkeypatch)
    first = post(client, user, gen_id, "retry", "r-1")
    assert first.status_code == 202 and first.get_json()["status"] == "pending"
    again = post(client, user, gen_id, "retry", "r-1")
    assert again.status_code == 202 and again.headers["Location"] == f"/api/generate/{gen_id}"
    assert again.get_json()["status"] == "pending"
    assert firsts == ["generate"]  # sent once
    assert_error(post(client, user, gen_id, "retry", "r-2"), 409)  # pending: nothing to retry

    assert_error(post(client, user, gen_id, "cancel", "r-1"), 409, "idempotency_conflict")
    run_all(app, gen_id)
    assert load(app, gen_id)["status"] == "completed"
    late = post(client, user, gen_id, "retry", "r-1")  # still its retry: answered, not a 409
    assert late.status_code == 202 and late.get_json()["status"] == "completed"
    assert firsts == ["generate"]
