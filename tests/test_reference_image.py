"""``settings.reference: image``: the designer's photo itself goes to a model
that takes reference images (nano-banana ``image_input``, FLUX
``image_prompt``, gpt-image-1's edits endpoint), uploaded the way each SDK
uploads files; routing considers only those models."""

from __future__ import annotations

import time

import pytest

from app import create_app
from app.pipeline import STAGES
from app.pipeline.context import StageFailed
from app.pipeline.route import choose, routing_request
from app.platform.config import Settings
from app.providers.base import ImageRequest, Job, Reference
from app.providers.registry import get_provider
from tests.conftest import REPLICATE_TOKEN, make_user
from tests.fakes.openai_images import FakeOpenAIImages
from tests.support.pipeline import load, png_bytes, stage, stages_by_name, submit_image

PHOTO = Reference(png_bytes(), "image/png")
KEYS = {"REPLICATE_API_TOKEN": "r8_x", "OPENAI_API_KEY": "sk-x"}


def request(**kw) -> ImageRequest:
    return ImageRequest("gen_ref", "the same dress in navy, studio light", **kw)


def replicate(fake, pid: str, req: ImageRequest):
    s = Settings.from_env({"REPLICATE_API_TOKEN": REPLICATE_TOKEN, "REPLICATE_BASE_URL": fake.url})
    job = Job(poll_every=0.05)
    while True:
        try:
            return get_provider(pid, s, job).generate(req)
        except Exception as exc:  # ProviderPending: look again, as the stage would
            if type(exc).__name__ != "ProviderPending":
                raise
            time.sleep(exc.retry_in)


# ------------------------------------------------------------------ adapters


def test_nano_banana_gets_the_photo_uploaded_by_the_sdk(replicate_fake):
    result = replicate(replicate_fake, "nano-banana", request(references=[PHOTO]))
    [upload] = replicate_fake.uploads.values()
    assert upload["data"] == PHOTO.data and upload["json"]["content_type"] == "image/png"
    [body] = replicate_fake.create_bodies
    assert body["input"]["image_input"] == [upload["url"]]  # the upload's URL, nothing public
    [described] = result.sent["input"]["image_input"]  # recorded: a description, no bytes
    assert described["bytes"] == len(PHOTO.data) and "data" not in described


def test_flux_gets_the_photo_as_its_image_prompt(replicate_fake):
    replicate(replicate_fake, "flux-pro", request(references=[PHOTO]))
    [upload] = replicate_fake.uploads.values()
    assert replicate_fake.create_bodies[0]["input"]["image_prompt"] == upload["url"]


def test_a_resumed_prediction_does_not_upload_or_create_again(replicate_fake):
    s = Settings.from_env(
        {"REPLICATE_API_TOKEN": REPLICATE_TOKEN, "REPLICATE_BASE_URL": replicate_fake.url}
    )
    job = Job(poll_every=0.05)
    with pytest.raises(Exception, match="waiting"):
        get_provider("nano-banana", s, job).generate(request(references=[PHOTO]))
    time.sleep(0.4)
    get_provider("nano-banana", s, Job(state=job.state)).generate(request(references=[PHOTO]))
    assert replicate_fake.creates == 1 and replicate_fake.counters["upload"] == 1


def test_gpt_image_takes_the_photo_through_the_edits_endpoint():
    with FakeOpenAIImages(key="sk-t") as fake:
        s = Settings.from_env({"OPENAI_API_KEY": "sk-t", "OPENAI_BASE_URL": fake.url + "/v1"})
        result = get_provider("openai-gpt-image", s, Job()).generate(
            request(references=[PHOTO], count=2, aspect_ratio="3:4")
        )
        [call] = fake.edits
        [(name, content_type, data)] = call["files"]
        assert data == PHOTO.data and content_type == "image/png" and name.endswith(".png")
        assert call["fields"] == {
            "model": "gpt-image-1",
            "prompt": "the same dress in navy, studio light",
            "size": "1024x1536",
            "quality": "medium",
            "n": 2,
        }
        assert len(result.outputs) == 2 and result.outputs[0].data.startswith(b"\x89PNG")
        assert result.sent["image"]["sha256"] and fake.calls("gpt-image-1") == 2


# ------------------------------------------------------------------ routing


def test_routing_considers_only_models_that_take_the_photo():
    decision = choose(routing_request({"reference": "image"}), Settings.from_env(KEYS))
    assert decision["provider"] in {"flux-pro", "nano-banana", "openai-gpt-image"}
    for pid in ("google-imagen", "openai-dalle3"):
        assert "reference image" in decision["excluded"][pid]
    portrait = choose(
        routing_request({"reference": "image", "size": "portrait"}), Settings.from_env(KEYS)
    )
    assert "nano-banana" in portrait["excluded"]  # square only
    with pytest.raises(StageFailed, match="takes no reference image"):
        choose(
            routing_request({"reference": "image", "provider": "openai-dalle3"}),
            Settings.from_env(KEYS),
        )


# ------------------------------------------------------------------ the API


@pytest.fixture
def keyed_app(app_config, replicate_fake):
    return create_app(
        {
            **app_config,
            "REPLICATE_API_TOKEN": REPLICATE_TOKEN,
            "REPLICATE_BASE_URL": replicate_fake.url,
            "OPENAI_API_KEY": "sk-x",
            "BFF_PROVIDER_POLL_SECONDS": "0.1",
        }
    )


def test_reference_image_needs_an_upload_and_a_model_that_takes_it(keyed_app):
    client, user = keyed_app.test_client(), make_user(keyed_app, "ref")
    as_json = {"settings": {"reference": "image"}}
    resp = client.post(
        "/api/generate/from-prompt", json={"prompt": "x", **as_json}, headers=user.headers
    )
    assert (
        resp.status_code == 422 and "reference" in resp.get_json()["error"]["details"][0]["field"]
    )
    spec = {"records": [{"garmentType": "dress"}]}
    resp = client.post(
        "/api/generate/from-image", json={"vltSpec": spec, **as_json}, headers=user.headers
    )
    assert resp.status_code == 422, "a spec has no photo to send"
    resp = submit_image(
        client, user.headers, settings='{"reference": "image", "provider": "openai-dalle3"}'
    )
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert error["code"] == "provider_unavailable" and "reference image" in error["message"]


def test_from_image_with_the_photo_itself_end_to_end(keyed_app, replicate_fake):
    """Embedded path (SQLite, local storage, stages in-process): the photo is
    analysed and enhanced as before, then sent itself, uploaded, to nano-banana."""
    client, user = keyed_app.test_client(), make_user(keyed_app, "ref2")
    photo = png_bytes((96, 96), "navy")
    resp = submit_image(
        client,
        user.headers,
        data=photo,
        settings='{"reference": "image", "provider": "nano-banana"}',
    )
    assert resp.status_code == 202, resp.get_json()
    gen_id = resp.get_json()["id"]
    for name in STAGES:
        for _ in range(100):  # a waiting stage runs again, as its countdown would
            out = stage(keyed_app, gen_id, name)
            if out.retry_in is None:
                break
            time.sleep(0.1)
    body = load(keyed_app, gen_id)
    assert body["status"] == "completed", body["error"]
    assert body["provider"] == "nano-banana" and body["model"] == "google/nano-banana"
    [upload] = replicate_fake.uploads.values()
    assert upload["data"] == photo, "the stored upload itself went to the model"
    [create] = replicate_fake.create_bodies
    assert create["input"]["image_input"] == [upload["url"]]
    final = body["prompt"]["final"]  # the enhanced prompt (its negative folded in)
    assert create["input"]["prompt"] == f"{final}. Avoid: {body['prompt']['negative']}"
    stages = stages_by_name(body)
    assert stages["analyze"]["status"] == "completed"
    assert stages["generate"]["output"]["sent"]["input"]["image_input"][0]["bytes"] == len(photo)
    assert len(body["assets"]) == 1 and body["cost"] == 0.039


def test_offline_the_local_renderer_stands_in_and_records_the_photo(app, client, user):
    """No keys (the embedded default): ``local`` draws from the photo's analysis."""
    photo = png_bytes((64, 64), "olive")
    resp = submit_image(client, user.headers, data=photo, settings='{"reference": "image"}')
    assert resp.status_code == 202, resp.get_json()
    gen_id = resp.get_json()["id"]
    for name in STAGES:
        assert stage(app, gen_id, name).retry_in is None
    body = load(app, gen_id)
    assert body["status"] == "completed" and body["provider"] == "local"
    sent = stages_by_name(body)["generate"]["output"]["sent"]
    assert sent["reference"]["bytes"] == len(photo) and body["settings"]["reference"] == "image"
