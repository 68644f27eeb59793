"""The ``openai-dalle3`` and ``openai-gpt-image`` adapters: the real ``openai``
SDK against the fake Images API over HTTP (in-process)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from app.platform.config import Settings
from app.providers import ProviderRejected, ProviderTransient
from app.providers.base import ImageRequest, Job
from app.providers.openai_images import DallE3, GptImage
from tests.fakes.openai_images import FakeOpenAIImages

KEY = "sk-unit-test"


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIImages(key=KEY) as fake:
        yield fake


@pytest.fixture
def fake(server):
    server.reset()
    server.bodies.clear()
    return server


def settings(fake, key: str = KEY) -> Settings:
    return Settings.from_env({"OPENAI_API_KEY": key, "OPENAI_BASE_URL": fake.url + "/v1"})


def request(**kw) -> ImageRequest:
    return ImageRequest(generation_id="gen_test", prompt="linen suit", **kw)


@pytest.mark.parametrize(
    ("ratio", "quality", "size", "sent_quality", "price"),
    [
        ("1:1", "standard", "1024x1024", "standard", 0.04),
        ("1:1", "hd", "1024x1024", "hd", 0.08),
        ("16:9", "standard", "1792x1024", "standard", 0.08),
        ("4:3", "hd", "1792x1024", "hd", 0.12),
        ("9:16", "hd", "1024x1792", "hd", 0.12),
        ("3:4", "standard", "1024x1792", "standard", 0.08),
    ],
)
def test_dalle3_maps_size_and_quality(fake, ratio, quality, size, sent_quality, price):
    req = request(aspect_ratio=ratio, quality=quality)
    result = DallE3(settings(fake), Job()).generate(req)
    [body] = fake.bodies
    assert body == {
        "model": "dall-e-3",
        "prompt": "linen suit",
        "n": 1,
        "size": size,
        "quality": sent_quality,
        "style": "natural",
        "response_format": "url",
    }
    assert result.sent["size"] == size and result.sent["quality"] == sent_quality
    assert result.outputs[0].url.startswith(fake.url + "/files/")
    assert result.outputs[0].meta["revisedPrompt"] == "A photograph: linen suit"
    assert DallE3.price_for(req) == price


def test_dalle3_count_is_several_single_image_calls_each_saved(fake):
    saved: list[dict] = []
    job = Job(saver=lambda s: saved.append(dict(s)))
    result = DallE3(settings(fake), job).generate(request(count=3))
    assert fake.calls("dall-e-3") == 3 and len(result.outputs) == 3
    assert [len(s["images"]) for s in saved] == [1, 2, 3]
    # A retry after the second call resumes: one more call, not three.
    fake.reset()
    again = DallE3(settings(fake), Job(state=saved[1])).generate(request(count=3))
    assert fake.calls("dall-e-3") == 1 and len(again.outputs) == 3


@pytest.mark.parametrize(
    ("ratio", "quality", "size", "sent_quality", "price"),
    [
        ("1:1", "standard", "1024x1024", "medium", 0.042),
        ("1:1", "hd", "1024x1024", "high", 0.167),
        ("16:9", "standard", "1536x1024", "medium", 0.063),
        ("3:4", "hd", "1024x1536", "high", 0.25),
    ],
)
def test_gpt_image_maps_size_and_quality_and_returns_bytes(
    fake, ratio, quality, size, sent_quality, price
):
    req = request(aspect_ratio=ratio, quality=quality, count=2)
    result = GptImage(settings(fake), Job()).generate(req)
    [body] = fake.bodies
    assert body == {
        "model": "gpt-image-1",
        "prompt": "linen suit",
        "n": 2,
        "size": size,
        "quality": sent_quality,
    }
    assert len(result.outputs) == 2
    img = Image.open(io.BytesIO(result.outputs[0].data))
    assert img.format == "PNG"
    assert result.meta["usage"]["total_tokens"] > 0
    assert GptImage.price_for(req) == price


def test_negative_prompt_is_folded_and_recorded(fake):
    result = GptImage(settings(fake), Job()).generate(request(negative_prompt="logos"))
    assert fake.bodies[0]["prompt"] == "linen suit. Avoid: logos"
    assert "folded" in result.sent["negativePromptHandling"]


def test_rate_limit_is_transient_with_retry_after_ms_and_no_hidden_retry(fake):
    fake.inject("rate_limit", ms=1500)
    with pytest.raises(ProviderTransient) as exc:
        GptImage(settings(fake), Job()).generate(request())
    assert exc.value.retry_after == 1.5
    assert len(fake.bodies) == 1, "the SDK must not retry on its own"


def test_server_error_is_transient(fake):
    fake.inject("server_error")
    with pytest.raises(ProviderTransient, match="500"):
        DallE3(settings(fake), Job()).generate(request())
    assert len(fake.bodies) == 1


def test_content_policy_is_rejected_with_openais_words(fake):
    fake.inject("content_policy")
    with pytest.raises(ProviderRejected) as exc:
        DallE3(settings(fake), Job()).generate(request())
    assert "safety system" in str(exc.value)


def test_bad_key_is_rejected_naming_the_variable(fake):
    with pytest.raises(ProviderRejected, match="OPENAI_API_KEY"):
        GptImage(settings(fake, key="sk-wrong"), Job()).generate(request())


def test_unreachable_is_transient():
    s = Settings.from_env({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    with pytest.raises(ProviderTransient, match="unreachable"):
        DallE3(s, Job()).generate(request())


def test_style_and_safety_level_are_settings_the_api_validates(client, user):
    ok = {"prompt": "x", "settings": {"style": "vivid", "safetyLevel": "block_low_and_above"}}
    assert (
        client.post("/api/generate/from-prompt", json=ok, headers=user.headers).status_code == 202
    )
    for bad in ({"style": "moody"}, {"safetyLevel": "off"}):
        resp = client.post(
            "/api/generate/from-prompt", json={"prompt": "x", "settings": bad}, headers=user.headers
        )
        assert resp.status_code == 422 and resp.get_json()["error"]["details"][0][
            "field"
        ].startswith("settings.")


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),
        ({"retry-after": "7"}, 7.0),
        ({}, None),
    ],
)
def test_retry_after_reads_the_ms_header_else_the_standard_one(headers, seconds):
    import httpx

    from app.providers.openai_images import _retry_after

    assert _retry_after(httpx.Headers(headers)) == seconds
