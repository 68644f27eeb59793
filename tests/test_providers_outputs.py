"""Around the adapters: the registry, the download allow-list, expired outputs, prices."""

from __future__ import annotations

import pytest

from app.pipeline.context import StageFailed
from app.pipeline.route import choose, routing_request
from app.pipeline.store import download
from app.platform.config import Settings
from app.providers import PROVIDERS, get_provider, unavailable_reason
from app.providers.base import ImageRequest, Job
from app.providers.pricing import price
from app.providers.registry import is_output_url_allowed
from tests.fakes.replicate import FakeReplicate


def test_registry_has_every_provider_with_its_declarations():
    assert set(PROVIDERS) == {
        "google-imagen",
        "flux-pro",
        "nano-banana",
        "openai-dalle3",
        "openai-gpt-image",
        "local",
    }
    for pid, cls in PROVIDERS.items():
        assert cls.id == pid and cls.model and cls.capabilities
        assert cls.price_for(ImageRequest(generation_id="g", prompt="p")) >= 0
    s = Settings.from_env({"REPLICATE_API_TOKEN": "t", "OPENAI_API_KEY": "k"})
    assert get_provider("google-imagen", s, Job()).model == "google/imagen-4-ultra"
    assert get_provider("openai-gpt-image", s, Job()).model == "gpt-image-1"


def test_missing_keys_make_providers_unavailable_and_auto_skips_them():
    s = Settings.from_env({})
    assert unavailable_reason("google-imagen", s) == "REPLICATE_API_TOKEN not configured"
    assert unavailable_reason("openai-dalle3", s) == "OPENAI_API_KEY not configured"
    decision = choose(routing_request({}), s)
    assert decision["provider"] == "local"
    assert decision["excluded"]["google-imagen"] == "REPLICATE_API_TOKEN not configured"
    keyed = choose(routing_request({}), Settings.from_env({"REPLICATE_API_TOKEN": "t"}))
    assert "google-imagen" not in keyed["excluded"] and "google-imagen" in keyed["scores"]


def test_prices():
    assert price("local", "hd") == 0.0
    assert price("openai-dalle3", "hd", "1792x1024") == 0.12
    assert price("openai-gpt-image", "medium", "1024x1536") == 0.063
    with pytest.raises(KeyError):
        price("openai-gpt-image", "ultra", "1024x1024")


def test_outputs_are_only_fetched_from_provider_hosts():
    s = Settings.from_env({"REPLICATE_BASE_URL": "http://127.0.0.1:8701"})
    ok = is_output_url_allowed
    assert ok(s, "https://replicate.delivery/xezq/abc/out.png")
    assert ok(s, "https://pbxt.replicate.delivery/abc/out.png")
    assert ok(s, "https://oaidalleapiprodscus.blob.core.windows.net/private/x.png")
    assert ok(s, "http://127.0.0.1:8701/files/x.png"), "the configured endpoint's host"
    assert not ok(s, "http://replicate.delivery/x.png"), "plain http only for configured hosts"
    assert not ok(s, "https://evil.example/x.png")
    assert not ok(s, "https://replicate.delivery.evil.example/x.png")
    assert not ok(s, "https://attacker.blob.core.windows.net/x.png")
    assert not ok(s, "http://169.254.169.254/latest/meta-data")
    # Read one way by urllib, another by the HTTP client: the host called is not the one checked.
    assert not ok(s, "https://127.0.0.1:3919\\@replicate.delivery/out.png")
    assert not ok(s, "http://169.254.169.254\\@127.0.0.1:8701/files/x.png")
    assert not ok(s, "https://user@replicate.delivery/out.png")
    v6 = Settings.from_env({"REPLICATE_BASE_URL": "http://[::1]:8701"})
    assert ok(v6, "http://[::1]:8701/files/x.png"), "an IPv6 gateway's own outputs"
    with pytest.raises(StageFailed, match="unexpected host"):
        download(s, "http://169.254.169.254/latest/meta-data")


def test_expired_output_fails_with_a_clear_message():
    with FakeReplicate() as fake:
        fake.latency = fake.starting_s = 0.0
        s = Settings.from_env({"REPLICATE_API_TOKEN": "t", "REPLICATE_BASE_URL": fake.url})
        adapter = get_provider("google-imagen", s, Job())
        url = adapter.generate(ImageRequest(generation_id="g", prompt="p")).outputs[0].url
        assert download(s, url)[:8] == b"\x89PNG\r\n\x1a\n"
        fake.expire_outputs()
        with pytest.raises(StageFailed, match="expired"):
            download(s, url)


def test_store_uploads_bytes_kept_inline_when_the_bucket_was_down():
    import base64
    from types import SimpleNamespace

    from app.pipeline.store import _fetch

    ctx = SimpleNamespace(settings=Settings.from_env({}), storage=None)
    data = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8
    assert _fetch(ctx, {"data": base64.b64encode(data).decode()}) == data
    with pytest.raises(StageFailed, match="corrupt"):
        _fetch(ctx, {"data": "not base64!"})
    with pytest.raises(StageFailed, match="no image reference"):
        _fetch(ctx, {})
