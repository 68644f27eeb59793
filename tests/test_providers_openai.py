"""The ``openai-dalle3`` and ``openai-gpt-image`` adapters: the real ``openai``
SDK against the fake Images API over HTTP (in-process)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from app.platform.config import Settings
from app.providers import ProviderRejected, ProviderTransient
from app.providers.base import ImageRequest, Job
from app.providers.catalog import DALLE3 as DallE3
from app.providers.catalog import GPT_IMAGE as GptImage
from app.providers.registry import get_provider
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


DALLE3 = {"model": "dall-e-3", "n": 1, "style": "natural", "response_format": "url"}


@pytest.mark.parametrize(
    ("cls", "ratio", "quality", "size", "sent_quality", "price"),
    [
        (DallE3, "1:1", "standard", "1024x1024", "standard", 0.04),
        (DallE3, "1:1", "hd", "1024x1024", "hd", 0.08),
        (DallE3, "16:9", "standard", "1792x1024", "standard", 0.08),
        (DallE3, "4:3", "hd", "1792x1024", "hd", 0.12),
        (DallE3, "9:16", "hd", "1024x1792", "hd", 0.12),
        (DallE3, "3:4", "standard", "1024x1792", "standard", 0.08),
        (GptImage, "1:1", "standard", "1024x1024", "medium", 0.042),
        (GptImage, "1:1", "hd", "1024x1024", "high", 0.167),
        (GptImage, "16:9", "standard", "1536x1024", "medium", 0.063),
        (GptImage, "3:4", "hd", "1024x1536", "high", 0.25),
    ],
)
def test_size_and_quality_are_mapped_and_priced(
    fake, cls, ratio, quality, size, sent_quality, price
):
    """dall-e-3: one image, a URL and a revised prompt; gpt-image-1: n images as bytes."""
    count = 1 if cls is DallE3 else 2
    req = request(aspect_ratio=ratio, quality=quality, count=count)
    result = get_provider(cls.id, settings(fake), Job()).generate(req)
    extra = DALLE3 if cls is DallE3 else {"model": "gpt-image-1", "n": 2}
    [body] = fake.bodies
    assert body == {"prompt": "linen suit", "size": size, "quality": sent_quality, **extra}
    assert result.sent["size"] == size and result.sent["quality"] == sent_quality
    assert len(result.outputs) == count
    if cls is DallE3:
        assert result.outputs[0].url.startswith(fake.url + "/files/")
        assert result.outputs[0].meta["revisedPrompt"] == "A photograph: linen suit"
    else:
        assert Image.open(io.BytesIO(result.outputs[0].data)).format == "PNG"
        assert result.meta["usage"]["total_tokens"] > 0
    assert cls.price_for(req) == price


def test_dalle3_count_is_several_single_image_calls_each_saved(fake):
    saved: list[dict] = []
    job = Job(saver=lambda s: saved.append(dict(s)))
    result = get_provider(DallE3.id, settings(fake), job).generate(request(count=3))
    assert fake.calls("dall-e-3") == 3 and len(result.outputs) == 3
    assert [len(s["images"]) for s in saved] == [1, 2, 3]
    # A retry after the second call resumes: one more call, not three.
    fake.reset()
    again = get_provider(DallE3.id, settings(fake), Job(state=saved[1])).generate(request(count=3))
    assert fake.calls("dall-e-3") == 1 and len(again.outputs) == 3


def test_negative_prompt_is_folded_and_recorded(fake):
    result = get_provider(GptImage.id, settings(fake), Job()).generate(
        request(negative_prompt="logos")
    )
    assert fake.bodies[0]["prompt"] == "linen suit. Avoid: logos"
    assert "folded" in result.sent["negativePromptHandling"]


@pytest.mark.parametrize(
    ("cls", "inject", "raised", "match"),
    [
        (GptImage, "rate_limit", ProviderTransient, "429"),
        (DallE3, "server_error", ProviderTransient, "500"),
        (DallE3, "content_policy", ProviderRejected, "safety system"),
    ],
)
def test_provider_errors_are_classified_and_not_retried_by_the_sdk(
    fake, cls, inject, raised, match
):
    fake.inject(inject, ms=1500)
    with pytest.raises(raised, match=match) as exc:
        get_provider(cls.id, settings(fake), Job()).generate(request())
    assert len(fake.bodies) == 1, "the SDK must not retry on its own"
    if inject == "rate_limit":
        assert exc.value.retry_after == 1.5  # from retry-after-ms


def test_bad_key_is_rejected_naming_the_variable_not_the_key(fake):
    """OpenAI's 401 shows the refused key, masked; users see the error."""
    key = "sk-proj-Wr0ngKeyAbCdEfGhIjKlMn1234"
    with pytest.raises(ProviderRejected, match="OPENAI_API_KEY") as exc:
        get_provider(GptImage.id, settings(fake, key=key), Job()).generate(request())
    assert "Incorrect API key provided: sk-…." in str(exc.value)
    assert "sk-proj" not in str(exc.value) and "1234" not in str(exc.value)


def test_unreachable_is_transient():
    s = Settings.from_env({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    with pytest.raises(ProviderTransient, match="unreachable"):
        get_provider(DallE3.id, s, Job()).generate(request())


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
