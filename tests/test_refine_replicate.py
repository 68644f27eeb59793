"""Stage 7 on Replicate: the real ``replicate`` SDK against the fake, which
serves the refine models by version with their documented input schemas
(and refuses anything else), and takes their images through the files API."""

from __future__ import annotations

import io
import time
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from PIL import Image
from replicate.exceptions import ReplicateError
from sqlalchemy import select

from app.domain import batch_flows
from app.domain.models import Generation, User, utcnow
from app.domain.spend import Charge
from app.pipeline import ALL_STAGES, maintenance, stops
from app.pipeline.runner import run_stage
from app.platform.config import Settings
from app.providers import ProviderRejected, pricing
from app.providers.base import Job, ProviderPending
from app.providers.refiners import BACKGROUND_REMOVER, UPSCALER, RefineOp, ReplicateRefiner, Task
from app.providers.replicate import ReplicateModel, client_for, replicate_errors
from tests.conftest import REPLICATE_TOKEN as TOKEN
from tests.conftest import on_replicate
from tests.fakes import replicate_models as versions
from tests.support.pipeline import load, run_through, services, stages_by_name, submit_prompt

# A stopped job's predictions are canceled by a task the generator runs.
pytestmark = pytest.mark.usefixtures("generator_tasks")


@pytest.fixture
def app_config(app_config, fake):
    return on_replicate(app_config, fake)


IMAGE = object()  # stands for the URL of an uploaded file


def png(size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "teal").save(buf, "PNG")
    return buf.getvalue()


def settings(fake) -> Settings:
    return Settings.from_env({"REPLICATE_API_TOKEN": TOKEN, "REPLICATE_BASE_URL": fake.url})


def refine_until_done(fake, tasks, job=None):
    job = job or Job(poll_every=0.05)
    while True:
        try:
            return ReplicateRefiner(settings(fake), job, "gen_1").run(tasks), job
        except ProviderPending as exc:
            time.sleep(exc.retry_in)


def test_the_pinned_versions_are_the_ones_the_fake_serves():
    assert UPSCALER.version == versions.REAL_ESRGAN
    assert BACKGROUND_REMOVER.version == versions.BACKGROUND_REMOVER
    for model in (UPSCALER, BACKGROUND_REMOVER):
        row = pricing.table().price(model.price_id, "*")
        assert row.model == model.name and row.usd > 0 and row.source.startswith("https://")


def test_versioned_predictions_upload_the_image_and_send_only_schema_inputs(fake):
    tasks = [
        Task("1:upscaled-x4", RefineOp("upscaled", 4), png),
        Task("1:cutout", RefineOp("cutout"), png),
    ]
    done, job = refine_until_done(fake, tasks)
    assert fake.creates == 2 and fake.counters["upload"] == 2
    up, cut = fake.create_bodies
    assert up["version"] == UPSCALER.version and "model" not in up
    assert set(up["input"]) == {"image", "scale", "face_enhance"} and up["input"]["scale"] == 4
    assert up["input"]["image"].startswith(fake.url + "/v1/files/")  # uploaded, not inlined
    assert cut["version"] == BACKGROUND_REMOVER.version
    assert cut["input"] | {"image": None} == {
        "image": None,
        "threshold": 0.0,
        "reverse": False,
        "background_type": "rgba",
        "format": "png",
    }
    assert set(job.state["predictions"]) == {"1:upscaled-x4", "1:cutout"}
    big = Image.open(io.BytesIO(httpx.get(done["1:upscaled-x4"]["output"]).content))
    assert big.size == (256, 192)
    cutout = Image.open(io.BytesIO(httpx.get(done["1:cutout"]["output"]).content))
    assert cutout.mode == "RGBA" and cutout.getpixel((0, 0))[3] == 0


@pytest.mark.parametrize(
    "version, inputs, field",
    [
        (versions.REAL_ESRGAN, {"scale": 2}, "input"),  # no image
        (versions.REAL_ESRGAN, {"image": IMAGE, "scale": 11}, "input.scale"),
        (versions.REAL_ESRGAN, {"image": IMAGE, "scale": "2"}, "input.scale"),
        (versions.REAL_ESRGAN, {"image": IMAGE, "prompt": "x"}, "input"),
        (versions.REAL_ESRGAN, {"image": "https://elsewhere.example/a.png"}, "input.image"),
        (versions.BACKGROUND_REMOVER, {"image": IMAGE, "threshold": 2}, "input.threshold"),
        (
            versions.BACKGROUND_REMOVER,
            {"image": IMAGE, "background_type": "x"},
            "input.background_type",
        ),
        ("0" * 64, {"image": IMAGE}, "version"),
    ],
)
def test_the_fake_refuses_what_the_schema_refuses(fake, version, inputs, field):
    client = client_for(TOKEN, fake.url)
    image = client.files.create(io.BytesIO(png()), filename="a.png").urls["get"]
    inputs = {k: image if v is IMAGE else v for k, v in inputs.items()}
    with pytest.raises(ReplicateError) as err:
        client.predictions.create(version=version, input=inputs)
    assert err.value.status == 422
    assert field in {f["field"] for f in fake.last_invalid}
    assert fake.creates == 0
    with pytest.raises(ProviderRejected), replicate_errors("create"):  # and we say so, once
        client.predictions.create(version=version, input=inputs)


def test_a_resumed_refine_polls_its_saved_prediction_and_pays_once(fake):
    tasks = [Task("7:upscaled-x2", RefineOp("upscaled", 2), png)]
    job = Job(poll_every=0.05)
    with pytest.raises(ProviderPending):
        ReplicateRefiner(settings(fake), job, "gen_1").run(tasks)
    saved = dict(job.state)  # what the checkpoint holds
    fresh = Job(state=saved, poll_every=0.05)  # a redelivered run starts from it
    done, _ = refine_until_done(fake, tasks, fresh)
    assert (
        fake.creates == 1 and done["7:upscaled-x2"]["id"] == saved["predictions"]["7:upscaled-x2"]
    )


def test_the_chain_refines_an_imagen_image_priced_and_paid_once(app, user, fake):
    gen_id = submit_prompt(
        app.test_client(),
        user.headers,
        "red silk dress",
        provider="google-imagen",
        upscale=2,
        removeBackground=True,
    )
    run_through(app, gen_id)
    gen = load(app, gen_id)
    assert gen["status"] == "completed", gen["error"]
    assert fake.creates == 3  # the image, its upscale, its cut-out
    [orig] = [a for a in gen["assets"] if a["variant"] == "original"]
    by_variant = {a["variant"]: a for a in gen["assets"]}
    assert by_variant["upscaled"]["sourceAssetId"] == orig["id"]
    assert by_variant["upscaled"]["width"] == 2 * orig["width"]
    assert by_variant["cutout"]["sourceAssetId"] == orig["id"]
    refine = stages_by_name(gen)["refine"]["output"]
    assert refine["engine"] == "replicate" and len(refine["predictions"]) == 2
    expected = (
        Decimal("0.06") + Decimal(str(UPSCALER.price)) + Decimal(str(BACKGROUND_REMOVER.price))
    )
    assert gen["cost"] == pytest.approx(float(expected))
    run_stage(*_s(app), gen_id, "refine", task_id="redelivered")  # done: nothing again
    assert fake.creates == 3 and len(load(app, gen_id)["assets"]) == 3


def _s(app):
    s = services(app)
    return s.db, s.settings, s.storage


def test_the_budget_is_checked_before_the_paid_refine(app, user, fake):
    gen_id = submit_prompt(
        app.test_client(), user.headers, "red dress", provider="google-imagen", upscale=4
    )
    run_through(app, gen_id, ALL_STAGES[:-1])  # the image is made and paid: $0.06
    with services(app).db.session() as session:
        session.get(User, user.id).daily_spend_cap = Decimal("0.061")
    run_through(app, gen_id, ["refine"])
    gen = load(app, gen_id)
    assert gen["status"] == "failed" and gen["error"]["stage"] == "refine"
    assert "daily cap" in gen["error"]["message"]
    assert fake.creates == 1  # the refine never paid
    assert [a["variant"] for a in gen["assets"]] == ["original"]  # kept and shown


def test_jobs_accepted_together_are_each_checked_against_the_cap_before_paying(app, user, fake):
    """Both fit the cap alone and were accepted before either spent; the
    second is refused once the first has paid, before its own create."""
    with services(app).db.session() as session:
        session.get(User, user.id).daily_spend_cap = Decimal("0.09")  # one $0.06 image
    client = app.test_client()
    first, second = (
        submit_prompt(client, user.headers, "red dress", provider="google-imagen") for _ in range(2)
    )
    run_through(app, first)
    assert load(app, first)["status"] == "completed" and fake.creates == 1
    run_through(app, second)
    gen = load(app, second)
    assert gen["status"] == "failed" and gen["error"]["stage"] == "generate"
    assert "this image may cost" in gen["error"]["message"], gen["error"]
    assert fake.creates == 1  # refused before paying


def test_canceling_a_generation_cancels_its_running_refine_predictions(app, user, fake):
    gen_id = submit_prompt(
        app.test_client(), user.headers, "red dress", provider="google-imagen", upscale=2
    )
    run_through(app, gen_id, ALL_STAGES[:-1])
    fake.latency = 5.0  # the refine's prediction runs on
    out = run_stage(*_s(app), gen_id, "refine", task_id="t-refine")
    assert out.retry_in is not None  # parked on its prediction
    resp = app.test_client().post(f"/api/generate/{gen_id}/cancel", headers=user.headers)
    assert resp.status_code == 200 and resp.json["status"] == "canceled"
    assert fake.counters["cancel"] == 1
    [refine_pid] = [p for p, v in fake.predictions.items() if v["model"] == UPSCALER.name]
    assert fake.render(refine_pid)["status"] == "canceled"


def _refining(app, user, fake, latency: float, gen_id: str | None = None) -> tuple[str, str]:
    """A completed generation (``gen_id``, or a new one) whose upscale, asked
    for afterwards, is parked on its prediction: (generation id, refine URL)."""
    client = app.test_client()
    gen_id = gen_id or submit_prompt(client, user.headers, "red dress", provider="google-imagen")
    run_through(app, gen_id)
    asset_id = load(app, gen_id)["assets"][0]["id"]
    url = f"/api/generate/{gen_id}/assets/{asset_id}/refine"
    assert client.post(url, json={"upscale": 2}, headers=user.headers).status_code == 202
    fake.latency = latency  # the refine's prediction runs on
    assert run_stage(*_s(app), gen_id, "refine", task_id="late").retry_in is not None
    return gen_id, url


def _upscales(fake) -> list[str]:
    return [p for p, v in fake.predictions.items() if v["model"] == UPSCALER.name]


def test_canceling_a_completed_generation_stops_its_late_refine_and_keeps_it(app, user, fake):
    """The cancel of a completed generation whose refine, asked for
    afterwards, runs: the refine fails "canceled" (its prediction canceled,
    its parked copy fenced off), the generation stays completed with its
    images, and a second cancel finds nothing to stop."""
    client = app.test_client()
    gen_id, url = _refining(app, user, fake, latency=30.0)
    resp = client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers)
    assert resp.status_code == 200 and resp.json["status"] == "completed"
    refine = stages_by_name(resp.json)["refine"]
    assert (refine["status"], refine["error"]) == ("failed", "canceled while running")
    assert [fake.render(p)["status"] for p in _upscales(fake)] == ["canceled"]
    parked = run_stage(*_s(app), gen_id, "refine", task_id="late")  # its countdown's run
    assert not parked.proceed and parked.retry_in is None and len(_upscales(fake)) == 1
    again = client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers)
    assert again.status_code == 409
    assert client.post(url, json={"upscale": 2}, headers=user.headers).status_code == 202


def test_a_late_refine_working_as_its_generation_is_deleted_pays_for_nothing_more(
    app, user, fake, monkeypatch
):
    """Between the delete's first commit and its rows going, the refine's
    copy ran on: it found its prediction canceled, took that for a hiccup and
    created another, which nothing ever canceled. The delete now fences it."""
    from app.api import generations as api

    client = app.test_client()
    gen_id, _ = _refining(app, user, fake, latency=30.0)
    real, runs = api.delete_with_objects, []

    def the_copy_runs_meanwhile(*args):  # the stop is made; the rows are still there
        runs.append(run_stage(*_s(app), gen_id, "refine", task_id="late"))
        return real(*args)

    monkeypatch.setattr(api, "delete_with_objects", the_copy_runs_meanwhile)
    assert client.delete(f"/api/generate/{gen_id}", headers=user.headers).status_code == 204
    [run] = runs
    assert not run.proceed and run.retry_in is None  # it stopped
    assert [fake.render(p)["status"] for p in _upscales(fake)] == ["canceled"]


def test_a_retry_or_a_refine_waits_for_the_stop_its_last_run_is_owed(app, user, fake):
    """A timed-out run's stop is made by a task: a retry before it would
    resume the predictions it is about to cancel, a refine asked again would
    pay for an image made but not yet recorded. Both are 409 till it is made."""
    client = app.test_client()
    s = services(app)
    gen_id = submit_prompt(client, user.headers, "red dress", provider="google-imagen")
    run_through(app, gen_id, ALL_STAGES[:5])
    fake.latency = 30.0
    assert run_stage(*_s(app), gen_id, "generate", task_id="t-1").retry_in is not None
    with s.db.session() as session:
        session.get(Generation, gen_id).deadline_at = utcnow() - timedelta(seconds=1)
    assert maintenance.expire_overdue(s.db, s.settings) == 1  # the stop owed, not yet made
    early = client.post(f"/api/generate/{gen_id}/retry", headers=user.headers)
    assert early.status_code == 409 and early.headers["Retry-After"] == "5"
    assert "being stopped" in early.json["error"]["message"]
    assert stops.resend_owed(s.db, s.celery) == 1  # made
    assert client.post(f"/api/generate/{gen_id}/retry", headers=user.headers).status_code == 202


def test_a_refine_asked_again_waits_for_the_stop_its_timeout_owes(app, user, fake, monkeypatch):
    client, s = app.test_client(), services(app)
    _, url = _refining(app, user, fake, latency=30.0)
    later = utcnow() + timedelta(seconds=s.settings.generation_timeout + 1)
    monkeypatch.setattr(maintenance, "utcnow", lambda: later)
    assert maintenance.expire_overdue(s.db, s.settings) == 1
    early = client.post(url, json={"upscale": 2}, headers=user.headers)
    assert early.status_code == 409 and "being stopped" in early.json["error"]["message"]
    assert stops.resend_owed(s.db, s.celery) == 1  # made
    assert client.post(url, json={"upscale": 2}, headers=user.headers).status_code == 202


def _batch_member_refining(app, user, fake, latency: float) -> tuple[str, str]:
    """A one-member batch whose completed member's upscale, asked for
    afterwards, is parked on its prediction: (batch id, member id)."""
    client = app.test_client()
    item = {"prompt": "red dress", "settings": {"provider": "google-imagen"}}
    batch = client.post("/api/batches", json={"items": [item]}, headers=user.headers).json
    listed = client.get(f"/api/generate?batchId={batch['id']}", headers=user.headers).json
    [member] = listed["items"]
    _refining(app, user, fake, latency=latency, gen_id=member["id"])
    return batch["id"], member["id"]


@pytest.mark.parametrize("deleted", ["generation", "batch"])
def test_deleting_a_completed_generation_or_its_batch_stops_its_late_refine(
    app, user, fake, deleted
):
    """Completed, so nothing is canceled: its refine asked for afterwards
    still runs on Replicate, and would be billed for a variant nobody keeps."""
    if deleted == "generation":
        path = f"/api/generate/{_refining(app, user, fake, latency=5.0)[0]}"
    else:
        path = f"/api/batches/{_batch_member_refining(app, user, fake, latency=5.0)[0]}"
    assert app.test_client().delete(path, headers=user.headers).status_code == 204
    [refine_pid] = _upscales(fake)
    assert fake.render(refine_pid)["status"] == "canceled"


def test_canceling_a_finished_batch_stops_a_members_late_refine(app, user, fake):
    client = app.test_client()
    batch_id, member_id = _batch_member_refining(app, user, fake, latency=30.0)
    assert batch_flows.finish(services(app), batch_id)  # its member's own check
    canceled = client.post(f"/api/batches/{batch_id}/cancel", headers=user.headers)
    assert canceled.status_code == 200 and canceled.json["status"] == "completed"
    [refine_pid] = _upscales(fake)
    assert fake.render(refine_pid)["status"] == "canceled"
    kept = load(app, member_id)
    refine = stages_by_name(kept)["refine"]
    assert kept["status"] == "completed" and len(kept["assets"]) == 1
    assert (refine["status"], refine["error"]) == ("failed", "canceled while running")
    again = client.post(f"/api/batches/{batch_id}/cancel", headers=user.headers)
    assert again.status_code == 409  # nothing runs now


def test_canceling_while_generate_runs_cancels_its_predictions_when_a_refine_waits(app, user, fake):
    """A refine asked for at submit is pending while generate's prediction runs:
    the cancel must still stop that prediction."""
    gen_id = submit_prompt(
        app.test_client(), user.headers, "red dress", provider="google-imagen", upscale=2
    )
    run_through(app, gen_id, ALL_STAGES[:5])
    fake.latency = 5.0  # generate's prediction runs on
    out = run_stage(*_s(app), gen_id, "generate", task_id="t-generate")
    assert out.retry_in is not None  # parked on its prediction
    assert stages_by_name(load(app, gen_id))["refine"]["status"] == "pending"
    resp = app.test_client().post(f"/api/generate/{gen_id}/cancel", headers=user.headers)
    assert resp.status_code == 200 and resp.json["status"] == "canceled"
    [pid] = fake.predictions
    assert fake.counters["cancel"] == 1 and fake.render(pid)["status"] == "canceled"


def test_a_timed_out_generation_retried_starts_a_new_prediction(app, user, fake):
    """The timeout cancels the running prediction; the retry must not fail on it."""
    client = app.test_client()
    gen_id = submit_prompt(client, user.headers, "red dress", provider="google-imagen")
    run_through(app, gen_id, ALL_STAGES[:5])
    fake.latency = 5.0
    assert run_stage(*_s(app), gen_id, "generate", task_id="t-1").retry_in is not None
    s = services(app)
    with s.db.session() as session:
        session.get(Generation, gen_id).deadline_at = utcnow() - timedelta(seconds=1)
    assert maintenance.expire_overdue(s.db, s.settings) == 1
    assert stops.resend_owed(s.db, s.celery) == 1  # the beat sends the stop it owes
    assert fake.counters["cancel"] == 1 and load(app, gen_id)["status"] == "failed"
    assert client.post(f"/api/generate/{gen_id}/retry", headers=user.headers).status_code == 202
    fake.latency = 0.05
    run_through(app, gen_id, ["generate", "store"], task="retry")
    gen = load(app, gen_id)
    assert gen["status"] == "completed", gen["error"]
    assert fake.creates == 2 and len(gen["assets"]) == 1


@pytest.mark.parametrize("meanwhile", ["deleted", "taken over"])
def test_a_prediction_paid_for_as_its_stage_was_lost_is_canceled(
    app, user, fake, monkeypatch, meanwhile
):
    """The create succeeds but its id cannot be saved: nothing would ever read
    that prediction, so it is canceled instead of running on, billed."""
    gen_id = submit_prompt(app.test_client(), user.headers, "red dress", provider="google-imagen")
    run_through(app, gen_id, ALL_STAGES[:5])
    fake.latency = 5.0
    create = ReplicateModel._create

    def create_while_lost(self, request, fields):
        prediction = create(self, request, fields)
        with services(app).db.session() as session:
            gen = session.get(Generation, gen_id)
            if meanwhile == "deleted":
                session.delete(gen)
            else:
                gen.stage("generate").task_id = "another-copy"
        return prediction

    monkeypatch.setattr(ReplicateModel, "_create", create_while_lost)
    out = run_stage(*_s(app), gen_id, "generate", task_id="t-generate")
    assert not out.proceed and out.retry_in is None
    [pid] = fake.predictions
    assert fake.counters["cancel"] == 1 and fake.render(pid)["status"] == "canceled"


def test_a_copy_whose_stage_another_copy_finished_does_not_pay(app, user, fake, monkeypatch):
    """A copy taken over while it was stalled came back and finished the stage
    before the new owner's paid call: the new owner's fence stops it there,
    though the stage still names it (a record does not change the owner)."""
    from app.platform import ratelimit

    gen_id = submit_prompt(app.test_client(), user.headers, "red dress", provider="google-imagen")
    run_through(app, gen_id, ALL_STAGES[:5])
    acquire = ratelimit.acquire

    def finished_meanwhile(*args, **kw):
        with services(app).db.session() as session:  # as the old copy's record leaves it
            row = session.get(Generation, gen_id).stage("generate")
            row.status, row.output = "completed", {"outputs": []}
        return acquire(*args, **kw)

    monkeypatch.setattr(ratelimit, "acquire", finished_meanwhile)
    out = run_stage(*_s(app), gen_id, "generate", task_id="t-new-owner")
    assert not out.proceed and out.error is None
    assert fake.creates == 0  # nothing paid twice
    assert stages_by_name(load(app, gen_id))["generate"]["status"] == "completed"


def test_a_late_refine_of_an_imagen_image_is_not_stopped_by_its_completed_generation(
    app, user, fake
):
    """The checkpoint stops a stage whose generation ended, but a completed
    generation's late refine runs on: it saves its prediction and finishes."""
    client = app.test_client()
    gen_id = submit_prompt(client, user.headers, "red dress", provider="google-imagen")
    run_through(app, gen_id)
    gen = load(app, gen_id)
    assert gen["status"] == "completed", gen["error"]
    asset_id = gen["assets"][0]["id"]
    resp = client.post(
        f"/api/generate/{gen_id}/assets/{asset_id}/refine",
        json={"upscale": 2},
        headers=user.headers,
    )
    assert resp.status_code == 202, resp.get_json()
    run_through(app, gen_id, ["refine"], task="late")
    gen = load(app, gen_id)
    assert gen["status"] == "completed" and stages_by_name(gen)["refine"]["status"] == "completed"
    assert fake.creates == 2 and fake.counters["cancel"] == 0
    [up] = [a for a in gen["assets"] if a["variant"] == "upscaled"]
    assert up["sourceAssetId"] == asset_id and up["width"] == 2 * gen["assets"][0]["width"]


def test_an_upscale_on_replicate_is_bound_by_what_can_be_stored(app_config, fake, monkeypatch):
    """BFF_MAX_IMAGE_PIXELS bounds what our own worker would upscale; on
    Replicate (Imagen's 2K images by 4: 67 M pixels) the work is Replicate's,
    but an image store could not open would be paid for and lost."""
    from app import create_app
    from app.pipeline import refine
    from tests.conftest import make_user

    app = create_app({**app_config, "BFF_MAX_IMAGE_PIXELS": "100000"})
    user, client = make_user(app, "rita"), app.test_client()
    gen_id = submit_prompt(client, user.headers, "red dress", provider="google-imagen")
    run_through(app, gen_id)
    asset = load(app, gen_id)["assets"][0]
    pixels = asset["width"] * asset["height"]
    assert pixels * 16 > 100_000
    url = f"/api/generate/{gen_id}/assets/{asset['id']}/refine"
    monkeypatch.setattr(refine, "STORABLE_PIXELS", pixels * 8)  # (Pillow's: 179 M)
    too_big = client.post(url, json={"upscale": 4}, headers=user.headers)
    assert too_big.status_code == 422 and "what can be stored" in too_big.json["error"]["message"]
    assert client.post(url, json={"upscale": 2}, headers=user.headers).status_code == 202


def test_a_refine_asked_again_after_it_failed_half_way_pays_once_for_each_variant(app, user, fake):
    """Upscale and cut-out asked for; the cut-out was made (paid), the
    upscale refused, so the refine failed. Asked again, the cut-out is read
    again from its prediction, not made (and paid for) a second time."""
    client = app.test_client()
    gen_id = submit_prompt(client, user.headers, "red dress", provider="google-imagen")
    run_through(app, gen_id)
    asset_id = load(app, gen_id)["assets"][0]["id"]
    url = f"/api/generate/{gen_id}/assets/{asset_id}/refine"
    body = {"upscale": 2, "removeBackground": True}
    assert client.post(url, json=body, headers=user.headers).status_code == 202
    fake.latency = 60.0
    out = run_stage(*_s(app), gen_id, "refine", task_id="late-1")
    assert out.retry_in is not None  # both predictions made, the stage waits on them
    models = {pid: p["model"] for pid, p in fake.predictions.items()}
    for pid, p in fake.predictions.items():
        p.update(latency=0.0, starting_s=0.0)
        if models[pid] == UPSCALER.name:
            p["outcome"] = "safety"
    out = run_stage(*_s(app), gen_id, "refine", task_id="late-1", retried=True)
    assert stages_by_name(load(app, gen_id))["refine"]["status"] == "failed"
    creates, fake.latency = fake.creates, 0.05
    assert client.post(url, json=body, headers=user.headers).status_code == 202
    run_through(app, gen_id, ["refine"], task="late-2")
    gen = load(app, gen_id)
    assert stages_by_name(gen)["refine"]["status"] == "completed", gen["stages"]
    assert fake.creates == creates + 1  # the upscale only
    assert sorted(a["variant"] for a in gen["assets"]) == ["cutout", "original", "upscaled"]
    with services(app).db.session() as session:
        charges = session.scalars(
            select(Charge.amount).where(Charge.generation_id == gen_id, Charge.what == "refine")
        ).all()
    assert sorted(charges) == sorted([Decimal(str(BACKGROUND_REMOVER.price)),
                                      Decimal(str(UPSCALER.price))])  # fmt: skip
