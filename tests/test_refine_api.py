"""POST /api/generate/<id>/assets/<assetId>/refine: a refine after the fact,
a small job of its own that leaves the generation completed and adds
variants, shown in its stages and on its event stream."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from app.api import batches as batches_route
from app.api import refine as route
from app.domain.models import Generation, utcnow
from app.pipeline import ALL_STAGES, STAGES, maintenance
from app.platform import events
from app.platform.queue import BACKGROUND, stage_chain
from app.webhooks import WebhookDelivery
from tests.support.pipeline import load, run_all, services, stage, stages_by_name, submit_prompt


class Sent(list):
    """The chains sent: (generation id, first stage, stages); and whether each
    went in the background (a batch's)."""

    def __init__(self) -> None:
        super().__init__()
        self.backgrounds: list[bool] = []


@pytest.fixture
def sent(monkeypatch) -> Sent:
    calls = Sent()

    def dispatch(_celery, gen_id, from_stage, first_task_id=None, background=False, stages=()):
        calls.append((gen_id, from_stage, tuple(stages)))
        calls.backgrounds.append(background)
        return True

    monkeypatch.setattr(route, "dispatch", dispatch)
    return calls


def completed(app, user, webhook_url: str | None = None) -> tuple[str, int]:
    if webhook_url:
        body = {"prompt": "red silk dress", "webhookUrl": webhook_url}
        resp = app.test_client().post("/api/generate/from-prompt", json=body, headers=user.headers)
        assert resp.status_code == 202, resp.get_json()
        gen_id = resp.get_json()["id"]
    else:
        gen_id = submit_prompt(app.test_client(), user.headers, "red silk dress", provider="local")
    run_all(app, gen_id)
    gen = load(app, gen_id)
    assert gen["status"] == "completed"
    return gen_id, gen["assets"][0]["id"]


def url(gen_id: str, asset_id) -> str:
    return f"/api/generate/{gen_id}/assets/{asset_id}/refine"


def test_a_late_refine_is_accepted_queued_and_adds_a_variant(app, client, user, sent):
    gen_id, asset_id = completed(app, user)
    resp = client.post(url(gen_id, asset_id), json={"removeBackground": True}, headers=user.headers)
    assert resp.status_code == 202, resp.json
    assert resp.headers["Location"] == f"/api/generate/{gen_id}"
    body = resp.json
    assert body["status"] == "completed"  # the generation stays completed
    assert stages_by_name(body)["refine"]["status"] == "pending"
    assert sent == [(gen_id, "refine", (*[s["name"] for s in body["stages"]],))]
    assert sent[0][2][-1] == "refine"

    out = stage(app, gen_id, "refine")  # what the worker runs
    assert out.error is None
    gen = load(app, gen_id)
    assert gen["status"] == "completed" and stages_by_name(gen)["refine"]["status"] == "completed"
    [orig, cut] = gen["assets"]
    assert (orig["variant"], orig["sourceAssetId"]) == ("original", None)
    assert (cut["variant"], cut["sourceAssetId"]) == ("cutout", asset_id)
    assert (cut["width"], cut["height"]) == (orig["width"], orig["height"])

    # The same again: nothing to make. Another variant: a second late refine.
    again = client.post(
        url(gen_id, asset_id), json={"removeBackground": True}, headers=user.headers
    )
    assert again.status_code == 409
    up = client.post(url(gen_id, cut["id"]), json={"upscale": 2}, headers=user.headers)
    assert up.status_code == 202
    stage(app, gen_id, "refine")
    assets = load(app, gen_id)["assets"]
    assert [(a["variant"], a["sourceAssetId"]) for a in assets][-1] == ("upscaled", cut["id"])
    assert assets[-1]["width"] == 2 * cut["width"]


def test_the_event_stream_follows_a_late_refine_to_its_end(app, client, user, sent):
    gen_id, asset_id = completed(app, user)
    client.post(url(gen_id, asset_id), json={"upscale": 2}, headers=user.headers)
    gen = load(app, gen_id)
    assert events.late_refine_open(gen)  # still to run: the stream would go on
    stage(app, gen_id, "refine")
    s = services(app)
    body = "".join(events.stream(s.db, s.settings, user.id, gen_id))
    assert '"stage":"refine","status":"running"' in body
    assert '"stage":"refine","status":"completed"' in body
    assert body.rstrip().split("\n")[-2].startswith("event: done") or "event: done" in body


def test_another_users_generation_or_image_is_404(app, client, user, other_user, sent):
    gen_id, asset_id = completed(app, user)
    theirs = client.post(url(gen_id, asset_id), json={"upscale": 2}, headers=other_user.headers)
    assert theirs.status_code == 404 and theirs.json["error"]["code"] == "not_found"
    other_gen, other_asset = completed(app, other_user)
    for aid in (other_asset, 999999, "abc", 2**40, "%C2%B2", "%D9%A3"):  # "²", Arabic 3
        resp = client.post(url(gen_id, aid), json={"upscale": 2}, headers=user.headers)
        assert resp.status_code == 404, aid
    assert sent == []


@pytest.mark.parametrize(
    "body",
    [{}, {"upscale": 3}, {"upscale": "2"}, {"removeBackground": "yes"}, {"upscale": 2, "x": 1}],
)
def test_bad_options_are_422(app, client, user, sent, body):
    gen_id, asset_id = completed(app, user)
    resp = client.post(url(gen_id, asset_id), json=body, headers=user.headers)
    assert resp.status_code == 422 and resp.json["error"]["code"] == "validation_error"
    assert sent == []


def test_an_upscale_bigger_than_an_accepted_image_is_422(app_config, sent):
    """An upscaled variant upscaled again would take gigabytes to make."""
    from app import create_app
    from tests.conftest import make_user

    app = create_app({**app_config, "BFF_MAX_IMAGE_PIXELS": "5000000"})
    user = make_user(app, "uma")
    gen_id, asset_id = completed(app, user)
    asset = load(app, gen_id)["assets"][0]
    assert asset["width"] * asset["height"] * 16 > 5_000_000 >= asset["width"] * asset["height"] * 4
    client = app.test_client()
    big = client.post(url(gen_id, asset_id), json={"upscale": 4}, headers=user.headers)
    assert big.status_code == 422, big.json
    assert big.json["error"]["details"][0]["field"] == "upscale"
    assert "BFF_MAX_IMAGE_PIXELS" in big.json["error"]["message"]
    assert "the original" not in big.json["error"]["message"]  # this one is the original
    assert sent == []
    ok = client.post(url(gen_id, asset_id), json={"upscale": 2}, headers=user.headers)
    assert ok.status_code == 202


def test_a_submitted_upscale_past_the_limit_fails_its_refine_unmade(app_config):
    from app import create_app
    from tests.conftest import make_user

    app = create_app({**app_config, "BFF_MAX_IMAGE_PIXELS": "5000000"})
    user = make_user(app, "ulla")
    gen_id = submit_prompt(app.test_client(), user.headers, provider="local", upscale=4)
    run_all(app, gen_id, ALL_STAGES)
    gen = load(app, gen_id)
    refine = stages_by_name(gen)["refine"]
    assert refine["status"] == "failed" and refine["attempts"] == 1
    assert "BFF_MAX_IMAGE_PIXELS" in gen["error"]["message"]
    assert [a["variant"] for a in gen["assets"]] == ["original"]


def test_only_a_completed_generation_is_refined_and_one_refine_at_a_time(app, client, user, sent):
    pending = submit_prompt(client, user.headers, "red dress", provider="local")
    resp = client.post(url(pending, 1), json={"upscale": 2}, headers=user.headers)
    assert resp.status_code in (404, 409)  # no images yet
    gen_id, asset_id = completed(app, user)
    assert (
        client.post(url(gen_id, asset_id), json={"upscale": 2}, headers=user.headers).status_code
        == 202
    )
    busy = client.post(url(gen_id, asset_id), json={"upscale": 4}, headers=user.headers)
    assert busy.status_code == 409 and "already running" in busy.json["error"]["message"]


def test_settings_validation_of_the_refine_options(client, user):
    for settings in ({"upscale": 3}, {"removeBackground": 1}, {"upscale": None, "x": 1}):
        resp = client.post(
            "/api/generate/from-prompt",
            json={"prompt": "red dress", "settings": settings},
            headers=user.headers,
        )
        assert resp.status_code == 422, settings
    ok = client.post(
        "/api/generate/from-prompt",
        json={"prompt": "red dress", "settings": {"upscale": 4, "removeBackground": True}},
        headers=user.headers,
    )
    assert ok.status_code == 202
    gen = client.get(f"/api/generate/{ok.json['id']}", headers=user.headers).json
    assert gen["settings"]["upscale"] == 4 and gen["settings"]["removeBackground"] is True
    assert [s["name"] for s in gen["stages"]][-2:] == ["store", "refine"]


def test_refining_a_providers_images_needs_the_replicate_token(app_config, client, user):
    from app import create_app

    with_openai = create_app({**app_config, "OPENAI_API_KEY": "sk-test"})
    from tests.conftest import make_user

    u = make_user(with_openai, "olga")
    resp = with_openai.test_client().post(
        "/api/generate/from-prompt",
        json={"prompt": "red dress", "settings": {"provider": "openai-dalle3", "upscale": 2}},
        headers=u.headers,
    )
    assert resp.status_code == 422 and "REPLICATE_API_TOKEN" in resp.json["error"]["message"]


# ------------------------------------------------------------------ batches


def test_a_batch_item_asking_for_refine_has_it_in_its_chain_at_batch_priority(
    app, client, user, monkeypatch
):
    groups = []

    def dispatch_group(_celery, ids, stages=None):
        groups.append((list(ids), dict(stages or {})))
        return True

    monkeypatch.setattr(batches_route, "dispatch_group", dispatch_group)
    body = {
        "items": [
            {"prompt": "red dress", "settings": {"provider": "local", "upscale": 2}},
            {"prompt": "blue skirt", "settings": {"provider": "local"}},
        ]
    }
    resp = client.post("/api/batches", json=body, headers=user.headers)
    assert resp.status_code == 202, resp.get_json()
    [(ids, stages)] = groups
    assert stages[ids[0]] == ALL_STAGES and stages[ids[1]] == STAGES

    chain = stage_chain(services(app).celery, ids[0], background=True, stages=stages[ids[0]])
    last = chain.tasks[-1]
    assert last.task == "pipeline.refine" and last.options["priority"] == BACKGROUND
    assert all(t.options["priority"] >= BACKGROUND for t in chain.tasks)


def test_a_late_refine_of_a_batch_member_goes_in_the_background(app, client, user, sent):
    body = {"items": [{"prompt": "red dress", "settings": {"provider": "local"}}]}
    resp = client.post("/api/batches", json=body, headers=user.headers)
    assert resp.status_code == 202, resp.get_json()
    listed = client.get(f"/api/generate?batchId={resp.get_json()['id']}", headers=user.headers)
    [member] = listed.get_json()["items"]
    with app.app_context():
        run_all(app, member["id"])
    gen = load(app, member["id"])
    assert gen["status"] == "completed" and gen["batchId"] == resp.get_json()["id"]
    refined = client.post(
        url(member["id"], gen["assets"][0]["id"]), json={"upscale": 2}, headers=user.headers
    )
    assert refined.status_code == 202, refined.get_json()
    assert refined.get_json()["batchId"] == gen["batchId"]
    assert sent == [(member["id"], "refine", ALL_STAGES)] and sent.backgrounds == [True]


def test_a_late_refine_of_a_single_job_is_not_in_the_background(app, client, user, sent):
    gen_id, asset_id = completed(app, user)
    assert (
        client.post(url(gen_id, asset_id), json={"upscale": 2}, headers=user.headers).status_code
        == 202
    )
    assert sent.backgrounds == [False]


def test_a_late_refine_that_never_ends_times_out_and_the_next_is_accepted(
    app, client, user, sent, monkeypatch
):
    gen_id, asset_id = completed(app, user)
    assert (
        client.post(url(gen_id, asset_id), json={"upscale": 2}, headers=user.headers).status_code
        == 202
    )
    s = services(app)
    with s.db.session() as session:  # as a copy parked on a provider's countdown leaves it
        row = session.get(Generation, gen_id).stage("refine")
        row.status, row.task_id = "running", "t-refine"
        row.started_at = utcnow() - timedelta(seconds=5)
    assert maintenance.expire_overdue(s.db, s.settings) == 0  # not overdue yet
    later = utcnow() + timedelta(seconds=s.settings.generation_timeout + 1)
    monkeypatch.setattr(maintenance, "utcnow", lambda: later)  # the beat, past the deadline
    assert maintenance.expire_overdue(s.db, s.settings) == 1
    gen = load(app, gen_id)
    refine = stages_by_name(gen)["refine"]
    assert gen["status"] == "completed" and refine["status"] == "failed"
    assert "timed out" in refine["error"] and "BFF_GENERATION_TIMEOUT" in refine["error"]
    assert refine["durationMs"] >= 5_000  # how long it ran, as any failed attempt
    assert maintenance.expire_overdue(s.db, s.settings) == 0  # once
    # The parked copy's countdown comes due: it stops, making nothing.
    assert not stage(app, gen_id, "refine").proceed
    assert len(load(app, gen_id)["assets"]) == len(gen["assets"])
    again = client.post(url(gen_id, asset_id), json={"upscale": 2}, headers=user.headers)
    assert again.status_code == 202, again.json


def test_a_refine_counts_against_the_submission_rate(app_config, sent):
    """A refine is a paid call: it counts as one submission (429 and
    Retry-After over the rate, nothing queued); its Idempotency-Key replay
    is no new one."""
    from app import create_app
    from tests.conftest import make_user

    app = create_app({**app_config, "BFF_SUBMIT_RATE_LIMIT": "3/60"})
    client, user = app.test_client(), make_user(app, "rita")
    (first, asset), (second, other) = completed(app, user), completed(app, user)
    keyed = {**user.headers, "Idempotency-Key": "up-1"}
    for _ in range(2):
        resp = client.post(url(first, asset), json={"upscale": 2}, headers=keyed)
        assert resp.status_code == 202, resp.json
    resp = client.post(url(second, other), json={"upscale": 2}, headers=user.headers)
    assert resp.status_code == 429 and resp.json["error"]["code"] == "rate_limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert "refine" not in stages_by_name(load(app, second)) and len(sent) == 1
    more = client.post("/api/generate/from-prompt", json={"prompt": "x"}, headers=user.headers)
    assert more.status_code == 429


def test_a_retried_refine_with_its_key_is_answered_not_refused(app, client, user, sent):
    """Without the key a retry meets its own refine's 409 and the client
    cannot tell it was taken; with it, the first answer again, nothing queued."""
    gen_id, asset_id = completed(app, user)
    headers = {**user.headers, "Idempotency-Key": "up-1"}
    first = client.post(url(gen_id, asset_id), json={"upscale": 2}, headers=headers)
    again = client.post(url(gen_id, asset_id), json={"upscale": 2}, headers=headers)
    assert first.status_code == again.status_code == 202, again.json
    assert again.json["id"] == gen_id and len(sent) == 1  # queued once
    other = client.post(url(gen_id, asset_id), json={"upscale": 4}, headers=headers)
    assert other.status_code == 409 and other.json["error"]["code"] == "idempotency_conflict"
    stage(app, gen_id, "refine")  # done: a late retry still answers, and queues nothing
    late = client.post(url(gen_id, asset_id), json={"upscale": 2}, headers=headers)
    assert late.status_code == 202 and len(sent) == 1
    assert stages_by_name(late.json)["refine"]["status"] == "completed"
    plain = client.post(url(gen_id, asset_id), json={"upscale": 2}, headers=user.headers)
    assert plain.status_code == 409  # no key: as before, the variant exists


def test_a_poller_is_told_to_come_back_while_a_late_refine_runs(app, client, user, sent):
    """The generation stays completed; a poller still needs the hint that it
    will change (``Retry-After``), until the refine ends."""
    gen_id, asset_id = completed(app, user)
    assert "Retry-After" not in client.get(f"/api/generate/{gen_id}", headers=user.headers).headers
    resp = client.post(url(gen_id, asset_id), json={"upscale": 2}, headers=user.headers)
    assert resp.status_code == 202
    polled = client.get(f"/api/generate/{gen_id}", headers=user.headers)
    assert polled.json["status"] == "completed" and polled.headers["Retry-After"] == "1"
    stage(app, gen_id, "refine")
    assert "Retry-After" not in client.get(f"/api/generate/{gen_id}", headers=user.headers).headers


def messages(app, gen_id: str) -> list[tuple[str, dict]]:
    """The generation's webhook messages, oldest first: (event, body)."""
    with services(app).db.session() as session:
        rows = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.generation_id == gen_id)
            .order_by(WebhookDelivery.created_at)
        ).all()
        return [(d.event_type, json.loads(d.payload)) for d in rows]


HOOK = "https://93.184.216.34/bff"  # an address literal: no lookup


def test_a_late_refine_sends_the_generation_again_with_its_variant(app, client, user, sent):
    """A receiver of webhooks learns of the variants without polling."""
    gen_id, asset_id = completed(app, user, HOOK)
    client.post(url(gen_id, asset_id), json={"upscale": 2}, headers=user.headers)
    stage(app, gen_id, "refine")
    [(first, _), (event, body)] = messages(app, gen_id)
    assert (first, event) == ("generation.completed", "generation.refined")
    assert body["status"] == "completed"
    assert stages_by_name(body)["refine"]["status"] == "completed"
    assert [a["variant"] for a in body["assets"]] == ["original", "upscaled"]


def test_a_late_refine_that_fails_or_times_out_is_sent_too(app, client, user, sent, monkeypatch):
    from app.pipeline import runner
    from app.pipeline.context import StageFailed

    gen_id, asset_id = completed(app, user, HOOK)
    client.post(url(gen_id, asset_id), json={"upscale": 2}, headers=user.headers)

    def broken(ctx):
        raise StageFailed("the upscaler refused the image")

    with monkeypatch.context() as m:
        m.setitem(runner.STAGE_FUNCS, "refine", broken)
        stage(app, gen_id, "refine")
    event, body = messages(app, gen_id)[-1]
    assert event == "generation.refined" and body["status"] == "completed"
    assert stages_by_name(body)["refine"]["error"] == "the upscaler refused the image"

    # Asked again, and never ending: the beat times it out, and says so.
    client.post(url(gen_id, asset_id), json={"upscale": 2}, headers=user.headers)
    later = utcnow() + timedelta(seconds=services(app).settings.generation_timeout + 1)
    monkeypatch.setattr(maintenance, "utcnow", lambda: later)
    assert maintenance.expire_overdue(services(app).db, services(app).settings) == 1
    event, body = messages(app, gen_id)[-1]
    assert event == "generation.refined" and len(messages(app, gen_id)) == 3
    assert "timed out" in stages_by_name(body)["refine"]["error"]


def test_a_failed_refine_hands_on_only_its_own_paid_predictions_while_fresh(app, user):
    """Made and paid (the cut-out): handed on; never paid (the upscale the
    timeout canceled): a new one is made; handed on already, or asked for
    an hour ago (Replicate no longer serves it): not again."""
    from app.domain import spend
    from app.domain.generations import new_stage

    gen_id, _ = completed(app, user)
    with services(app).db.Session() as session:  # (spend.pay commits)
        gen = session.get(Generation, gen_id)
        gen.stages.append(refine := new_stage("refine"))
        predictions = {"1:cutout": "p-cut", "1:upscaled-x2": "p-up"}
        refine.status, refine.output = "failed", {"predictions": predictions, "checkpoint": True}
        asked = {"assetId": 1, "upscale": 2, "removeBackground": True}
        gen.pipeline_data = {"refine": {**asked, "askedAt": utcnow().isoformat()}}
        session.flush()
        spend.pay(session, gen, Decimal("0.01"), "replicate", "refine", ["p-cut"])
        assert route._paid_for(session, gen, refine) == {
            "predictions": {"1:cutout": "p-cut"}, "inherited": ["p-cut"], "checkpoint": True,
        }  # fmt: skip
        refine.output = {**refine.output, "inherited": ["p-cut"]}
        assert route._paid_for(session, gen, refine) is None
        refine.output = {"predictions": predictions, "checkpoint": True}
        an_hour_ago = (utcnow() - timedelta(hours=1)).isoformat()
        gen.pipeline_data = {"refine": {**asked, "askedAt": an_hour_ago}}
        assert route._paid_for(session, gen, refine) is None
