"""Replicate webhooks: what the adapter sends, how the route verifies and
answers (signed by the fake Replicate, by hand, as Replicate signs), and how
a wake-up takes a waiting stage. End to end over real services:
tests/integration/test_replicate_webhooks_services.py."""

from __future__ import annotations

import json
import time

import pytest

from app import create_app
from app.domain.generations import new_stage
from app.domain.models import Generation
from app.pipeline import STAGES, wake
from app.pipeline.context import StageContext, StageResult, StageWaiting
from app.pipeline.runner import STAGE_FUNCS, run_stage
from app.platform.config import Settings
from app.providers import replicate_webhooks
from app.providers.base import ImageRequest, Job, ProviderPending
from app.providers.refiners import RefineOp, ReplicateRefiner, Task
from app.providers.registry import get_provider
from tests.conftest import REPLICATE_TOKEN as TOKEN
from tests.fakes.replicate import FakeReplicate
from tests.support.pipeline import claimed, new_generation, run_all, services, submit_prompt

URL = "/api/providers/replicate/webhook"


@pytest.fixture
def fake(replicate_fake):
    replicate_fake.latency = 0.2
    return replicate_fake


@pytest.fixture
def app_config(app_config, fake):
    return {**app_config, "REPLICATE_API_TOKEN": TOKEN, "REPLICATE_BASE_URL": fake.url}


@pytest.fixture
def woken(monkeypatch) -> list[tuple[str, str, str | None]]:
    """The wake-ups the route sent: (generation id, stage, first task id)."""
    sent = []

    def dispatch(_celery, gen_id, stage, first_task_id=None, background=False, stages=()) -> bool:
        sent.append((gen_id, stage, first_task_id))
        return True

    monkeypatch.setattr(wake, "dispatch", dispatch)
    return sent


def created(fake: FakeReplicate, **env: str) -> dict:
    settings = Settings.from_env(
        {"REPLICATE_API_TOKEN": TOKEN, "REPLICATE_BASE_URL": fake.url, **env}
    )
    adapter = get_provider("google-imagen", settings, Job())
    fake.latency = 30.0  # still running at the first look, however slow the machine
    with pytest.raises(ProviderPending):
        adapter.generate(ImageRequest(generation_id="gen_1", prompt="red silk dress"))
    [body] = fake.create_bodies
    return body


def test_webhooks_are_asked_for_only_with_a_public_url(fake):
    assert "webhook" not in created(fake)  # the loopback default: Replicate cannot reach it
    fake.reset()
    for local in ("localhost:3001", "0.0.0.0:3001", "[::ffff:127.0.0.1]:3001", "app.localhost"):
        assert "webhook" not in created(fake, BFF_PUBLIC_URL=f"http://{local}"), local
        fake.reset()
    assert "webhook" in created(
        fake, BFF_PUBLIC_URL="http://127.0.0.1:9", BFF_REPLICATE_WEBHOOKS="on"
    )
    fake.reset()
    assert "webhook" not in created(
        fake, BFF_PUBLIC_URL="https://bff.example", BFF_REPLICATE_WEBHOOKS="off"
    )
    fake.reset()
    body = created(fake, BFF_PUBLIC_URL="https://bff.example/")
    assert body["webhook"] == f"https://bff.example{URL}?generation=gen_1"
    assert body["webhook_events_filter"] == ["completed"]


def test_refine_predictions_ask_for_the_webhook_too(fake):
    public = {"REPLICATE_API_TOKEN": TOKEN, "REPLICATE_BASE_URL": fake.url}
    settings = Settings.from_env({**public, "BFF_PUBLIC_URL": "https://bff.example"})
    task = Task("7:upscaled-x2", RefineOp("upscaled", 2), lambda: fake_png())
    fake.latency = 30.0  # still running at the first look
    with pytest.raises(ProviderPending):
        ReplicateRefiner(settings, Job(), "gen_9").run([task])
    [body] = fake.create_bodies
    assert body["webhook"] == f"https://bff.example{URL}?generation=gen_9"
    assert body["webhook_events_filter"] == ["completed"]


def fake_png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 24), "white").save(out, "PNG")
    return out.getvalue()


def test_the_look_is_rarer_while_webhooks_wake_the_stage():
    public = {"BFF_PUBLIC_URL": "https://bff.example"}
    assert Settings.from_env({}).provider_poll_seconds == 2.0
    assert Settings.from_env(public).provider_poll_seconds == 10.0
    assert (
        Settings.from_env({**public, "BFF_PROVIDER_POLL_SECONDS": "3"}).provider_poll_seconds == 3
    )


def waiting_generation(app, user) -> str:
    """A generation whose generate stage is parked, waiting on prediction p1."""
    gen_id = new_generation(app, user)
    claimed(app, gen_id, 1, "t-generate", "generate")
    with services(app).db.session() as session:
        parked = session.get(Generation, gen_id).stage("generate")
        parked.output = {"predictions": ["p1"], "checkpoint": True, "waiting": "w"}
    return gen_id


def deliver(client, fake, gen_id: str, pid: str = "p1", msg_id: str = "m1", age: float = 0, **hdr):
    body = json.dumps({"id": pid, "status": "succeeded", "output": "https://x/y.png"})
    headers = fake.signed(msg_id, int(time.time() - age), body)
    return client.post(f"{URL}?generation={gen_id}", data=body, headers={**headers, **hdr})


def test_a_signed_webhook_wakes_the_waiting_stage_once(client, fake, app, user, woken):
    gen_id = waiting_generation(app, user)
    first = deliver(client, fake, gen_id)
    assert first.status_code == 200 and first.json == {
        "received": True,
        "woken": True,
        "reason": None,
    }
    [(gid, stage, task_id)] = woken
    assert (gid, stage) == (gen_id, "generate") and task_id.startswith("wake-")
    again = deliver(client, fake, gen_id)  # Replicate retrying: acknowledged, not acted on
    assert again.status_code == 200 and again.json["woken"] is False
    assert "replayed" in again.json["reason"] and len(woken) == 1


def test_unsigned_forged_and_stale_deliveries_are_refused(client, fake, app, user, woken):
    gen_id = waiting_generation(app, user)
    unsigned = client.post(f"{URL}?generation={gen_id}", json={"id": "p1", "status": "succeeded"})
    forged = deliver(client, fake, gen_id, msg_id="m2", **{"webhook-signature": "v1,AAAA"})
    stale = deliver(client, fake, gen_id, msg_id="m3", age=6 * 60)
    for answer in (unsigned, forged, stale):
        assert answer.status_code == 401 and answer.json["error"]["code"] == "unauthorized"
    assert "too old" in stale.json["error"]["message"]
    assert woken == []
    assert (
        deliver(client, fake, gen_id, msg_id="m3").status_code == 200
    )  # refused ids are not spent


def test_a_rotated_secret_is_fetched_again(client, fake, app, user, woken, monkeypatch):
    gen_id = waiting_generation(app, user)
    assert deliver(client, fake, gen_id, pid="nope", msg_id="r1").status_code == 200  # cached
    fake.webhook_secret = "whsec_" + "QUFB" * 11  # 33 bytes
    monkeypatch.setattr(replicate_webhooks, "REFETCH_EVERY", 0.0)
    assert deliver(client, fake, gen_id, msg_id="r2").json["woken"] is True


def test_deliveries_no_stage_waits_on_are_acknowledged_without_effect(
    client, fake, app, user, woken
):
    gen_id = waiting_generation(app, user)
    for i, (gid, pid) in enumerate((("gen_unknown", "p1"), (gen_id, "p-other"))):
        answer = deliver(client, fake, gid, pid=pid, msg_id=f"u{i}")
        assert answer.status_code == 200 and answer.json["woken"] is False, answer.json
    with services(app).db.session() as session:
        session.get(Generation, gen_id).stage("generate").output = {"predictions": ["p1"]}
    answer = deliver(client, fake, gen_id, msg_id="u9")  # running now, not parked
    assert answer.json == {
        "received": True,
        "woken": False,
        "reason": "no stage of it waits on this prediction",
    }
    assert woken == []


def test_a_late_refine_parked_on_a_completed_generation_is_woken(client, fake, app, user, woken):
    gen_id = new_generation(app, user)
    claimed(app, gen_id, 1, "t-refine", "generate")  # writes the stage rows
    with services(app).db.session() as session:
        gen = session.get(Generation, gen_id)
        gen.status = "completed"  # refined after the fact: it stays completed
        gen.stages.append(new_stage("refine"))
        session.flush()
        gen.stage("generate").status = "completed"
        refine = gen.stage("refine")
        refine.status, refine.task_id = "running", "t-refine"
        refine.output = {"predictions": {"7:cutout": "p7"}, "checkpoint": True, "waiting": "w"}
    assert deliver(client, fake, gen_id, pid="p7", msg_id="late").json["woken"] is True
    [(gid, stage, task_id)] = woken
    assert (gid, stage) == (gen_id, "refine") and task_id.startswith("wake-")
    with services(app).db.session() as session:
        session.get(Generation, gen_id).status = "canceled"
    ended = deliver(client, fake, gen_id, pid="p7", msg_id="late-2").json
    assert ended["woken"] is False and ended["reason"] == "the generation has ended"


def test_a_wake_up_takes_a_parked_stage_and_its_parked_copy_stops(app, client, user, monkeypatch):
    looks = []

    def provider(ctx: StageContext) -> StageResult:
        looks.append(ctx.previous.get("predictions"))
        if not ctx.previous:
            ctx.checkpoint({"predictions": ["p1"]})
            raise StageWaiting(60, "waiting for p1")
        return StageResult({"done": True})

    monkeypatch.setitem(STAGE_FUNCS, "generate", provider)
    gen_id = submit_prompt(client, user.headers)
    run_all(app, gen_id, STAGES[: STAGES.index("generate")])
    s = services(app)

    def run(task_id: str):
        return run_stage(s.db, s.settings, s.storage, gen_id, "generate", task_id=task_id)

    assert run("t-parked").retry_in is not None  # parked, countdown pending
    assert run("t-stale").proceed is False  # a stale copy does not take it
    woke = run("wake-1")
    assert woke.proceed and woke.retry_in is None and looks == [None, ["p1"]]
    assert run("t-parked").proceed  # the countdown copy: the stage is done, it moves on
    with s.db.session() as session:
        stage = session.get(Generation, gen_id).stage("generate")
        assert stage.status == "completed" and stage.attempts == 1


def test_a_delivery_the_broker_refused_is_answered_503_and_its_retry_wakes(
    client, fake, app, user, woken, monkeypatch
):
    gen_id = waiting_generation(app, user)
    monkeypatch.setattr(wake, "dispatch", lambda *_a, **_k: False)  # the broker is down
    down = deliver(client, fake, gen_id, msg_id="m-broker-down")
    assert down.status_code == 503 and down.json["error"]["code"] == "service_unavailable"
    monkeypatch.setattr(wake, "dispatch", lambda *_a, **_k: woken.append(_a) or True)
    again = deliver(client, fake, gen_id, msg_id="m-broker-down")  # Replicate's retry
    assert again.status_code == 200 and again.json["woken"] is True and len(woken) == 1


def test_a_delivery_while_replicate_is_unreachable_is_503_not_401(app_config, fake):
    """The secret cannot be fetched: Replicate retries a 503, never a 401."""
    app = create_app({**app_config, "REPLICATE_BASE_URL": "http://127.0.0.1:9"})  # nothing there
    resp = deliver(app.test_client(), fake, "gen_x", msg_id="m-unreachable")
    assert resp.status_code == 503, resp.json
    assert resp.json["error"]["code"] == "service_unavailable" and resp.headers["Retry-After"]


def test_a_retried_stage_is_not_taken_by_a_wake_up_while_it_works(app, client, user, monkeypatch):
    """A generation that failed while parked keeps its checkpoint; its retry's
    copy, once it runs, is no parked stage for a wake-up to take."""
    gen_id = waiting_generation(app, user)
    with services(app).db.session() as session:
        gen = session.get(Generation, gen_id)
        for st in gen.stages[: STAGES.index("generate")]:
            st.status = "completed"
        gen.status, gen.stage("generate").status = "failed", "failed"
    assert client.post(f"/api/generate/{gen_id}/retry", headers=user.headers).status_code == 202
    s, woken = services(app), []

    def works(ctx: StageContext) -> StageResult:
        woken.append(run_stage(s.db, s.settings, s.storage, gen_id, "generate", "wake-1"))
        return StageResult({"done": True})

    monkeypatch.setitem(STAGE_FUNCS, "generate", works)
    assert run_stage(s.db, s.settings, s.storage, gen_id, "generate", "t-retry").proceed
    assert woken[0].proceed is False  # "already running elsewhere"
    with s.db.session() as session:
        stage = session.get(Generation, gen_id).stage("generate")
        assert (stage.status, stage.task_id) == ("completed", "t-retry")


def test_two_wake_ups_do_not_take_a_parked_stage_from_each_other(app, client, user, monkeypatch):
    """Two predictions' webhooks wake the stage twice; the first wake-up's own
    countdown (a Celery retry, the same task id) must not take it back."""

    def still_running(ctx: StageContext) -> StageResult:
        if not ctx.previous:
            ctx.checkpoint({"predictions": ["p1", "p2"]})
        raise StageWaiting(5, "waiting for p1, p2")

    monkeypatch.setitem(STAGE_FUNCS, "generate", still_running)
    gen_id = submit_prompt(client, user.headers)
    run_all(app, gen_id, STAGES[: STAGES.index("generate")])
    s = services(app)

    def run(task_id: str, retried: bool = False):
        return run_stage(s.db, s.settings, s.storage, gen_id, "generate", task_id, retried)

    assert run("t-chain").retry_in is not None  # parked on its countdown
    assert run("wake-1").retry_in is not None  # p1's webhook: taken, parked again
    assert run("wake-2").retry_in is not None  # p2's webhook: taken
    assert run("wake-1", retried=True).proceed is False  # wake-1's countdown stops
    with s.db.session() as session:
        assert session.get(Generation, gen_id).stage("generate").task_id == "wake-2"


def test_a_flood_while_replicate_is_unreachable_asks_it_once(app_config, fake, monkeypatch):
    """The route needs no key: unsigned junk must not make us call Replicate each time."""
    app = create_app({**app_config, "REPLICATE_BASE_URL": "http://127.0.0.1:9"})
    monkeypatch.setattr(replicate_webhooks, "_failed", {})  # (an earlier test's failure)
    calls = []
    real = replicate_webhooks.webhook_secret
    monkeypatch.setattr(replicate_webhooks, "webhook_secret", lambda s: calls.append(1) or real(s))
    client = app.test_client()
    answers = [deliver(client, fake, "gen_x", msg_id=f"m-flood-{i}") for i in range(20)]
    assert {a.status_code for a in answers} == {503} and len(calls) == 1
    assert "unreachable" in answers[-1].json["error"]["message"]
    monkeypatch.setattr(replicate_webhooks, "RETRY_FAILED_AFTER", 0.0)  # later: asked again
    assert deliver(client, fake, "gen_x", msg_id="m-later").status_code == 503 and len(calls) == 2
