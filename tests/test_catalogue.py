"""The model catalogue as data: every entry consistent with its price row and
its model's documented schema; each new Replicate entry driven through the
one generic adapter and the real ``replicate`` SDK against the fake, which
refuses what Replicate refuses (unknown fields, wrong types, enum values,
out-of-range numbers)."""

from __future__ import annotations

import itertools
import time
from dataclasses import replace

import pytest

from app.platform.config import Settings
from app.providers import PROVIDERS, ProviderRejected, pricing
from app.providers.base import ASPECT_RATIOS, ImageRequest, Job, ProviderPending, Reference
from app.providers.catalog import CATALOGUE, FLUX_PRO, NANO_BANANA, ModelEntry
from app.providers.inputs import Const, Ref, reference_fields
from app.providers.replicate import ReplicateModel
from tests.conftest import REPLICATE_TOKEN as TOKEN
from tests.fakes.replicate_models import MODELS, validate

REPLICATE = [e for e in CATALOGUE.values() if e.api.startswith("replicate")]
PHOTO = Reference(b"\x89PNG fake photo bytes", "image/png")


def settings(fake) -> Settings:
    return Settings.from_env({"REPLICATE_API_TOKEN": TOKEN, "REPLICATE_BASE_URL": fake.url})


def request(**kw) -> ImageRequest:
    return ImageRequest(generation_id="gen_cat", prompt="ivory linen shirt dress", **kw)


def run(fake, entry: ModelEntry, req: ImageRequest, job: Job | None = None):
    """``generate`` as the stage runs it: again after each wait."""
    job = job or Job(poll_every=0.05)
    while True:
        try:
            return ReplicateModel(entry, settings(fake), job).generate(req)
        except ProviderPending as exc:
            time.sleep(exc.retry_in)


# ------------------------------------------------------------------ the data


@pytest.mark.parametrize("entry", CATALOGUE.values(), ids=lambda e: e.id)
def test_every_entry_is_priced_sourced_and_says_whether_it_takes_references(entry):
    assert PROVIDERS[entry.id] is entry and entry.source
    rows = [p for (pid, _, _), p in pricing.table().rows.items() if pid == entry.id]
    assert rows and all(p.model == entry.model and p.source for p in rows), "keyed by the id"
    assert entry.price_for(request(quality="hd", aspect_ratio="16:9")) >= 0
    takes = bool(reference_fields(entry.inputs))
    assert entry.capabilities.reference_images == takes or entry.api == "local"


@pytest.mark.parametrize("entry", REPLICATE, ids=lambda e: e.id)
def test_every_mapping_of_a_replicate_entry_fits_the_models_schema(entry):
    """Every aspect ratio, quality, safety level and a reference: all valid inputs."""
    model = MODELS[entry.model]
    ratios = [r for r in ASPECT_RATIOS if r in entry.capabilities.aspect_ratios]
    levels = entry.capabilities.safety_levels or ("block_only_high",)
    for ratio, quality, level in itertools.product(ratios, ("standard", "hd"), levels):
        req = request(aspect_ratio=ratio, quality=quality, safety_level=level)
        fields, _ = entry.map(req)
        assert validate(model, fields) == [], (ratio, quality, level)
    fields, _ = entry.map(request(references=[PHOTO]))
    for name, ref in reference_fields(entry.inputs).items():  # URLs once uploaded
        fields[name] = ["https://x.test/f"] if ref.many else "https://x.test/f"
    assert validate(model, fields) == []


def test_rate_limits_come_from_the_catalogue_and_the_environment():
    s = Settings.from_env({"BFF_RATE_LIMIT_FLUX_PRO": "7/10"})
    assert s.rate_limits["flux-pro"] == (7, 10.0)
    assert s.rate_limits["nano-banana"] == (100, 60.0) and "local" not in s.rate_limits


# ------------------------------------------------------------------ new entries


def test_flux_pro_sends_its_documented_inputs_to_the_official_model(replicate_fake):
    result = run(replicate_fake, FLUX_PRO, request(aspect_ratio="16:9", negative_prompt="logos"))
    [body] = replicate_fake.create_bodies
    assert body["input"] == {
        "prompt": "ivory linen shirt dress. Avoid: logos",
        "aspect_ratio": "16:9",
        "output_format": "png",
        "safety_tolerance": 2,
        "prompt_upsampling": False,
    }
    [pred] = replicate_fake.predictions.values()
    assert pred["model"] == "black-forest-labs/flux-1.1-pro"
    [out] = result.outputs
    assert out.url.endswith(".png") and out.content_type == "image/png"
    assert FLUX_PRO.price_for(request()) == 0.04


def test_nano_banana_sends_only_prompt_and_output_format_without_a_photo(replicate_fake):
    result = run(replicate_fake, NANO_BANANA, request(count=2))
    assert [b["input"] for b in replicate_fake.create_bodies] == [
        {"prompt": "ivory linen shirt dress", "output_format": "png"}
    ] * 2
    assert {p["model"] for p in replicate_fake.predictions.values()} == {"google/nano-banana"}
    assert len(result.outputs) == 2 and NANO_BANANA.price_for(request()) == 0.039


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [
        ("seed_value", 3, "additional_property_not_allowed"),  # no such input
        ("safety_tolerance", "2", "invalid_type"),  # a string for an integer
        ("safety_tolerance", 9, "number_lte"),  # 1..6
        ("prompt_upsampling", "yes", "invalid_type"),
        ("aspect_ratio", "7:3", "enum"),
        ("output_format", "gif", "enum"),
    ],
)
def test_the_fake_refuses_inputs_outside_fluxs_schema(replicate_fake, field, value, kind):
    bad = replace(FLUX_PRO, inputs={**FLUX_PRO.inputs, field: Const(value)})
    with pytest.raises(ProviderRejected, match="422") as exc:
        ReplicateModel(bad, settings(replicate_fake), Job()).generate(request())
    assert field in str(exc.value) or "Additional property" in str(exc.value)
    assert replicate_fake.creates == 0, kind


def test_the_fake_refuses_a_url_that_is_not_an_upload(replicate_fake):
    bad = replace(NANO_BANANA, inputs={**NANO_BANANA.inputs, "image_input": Const(["https://x/y"])})
    with pytest.raises(ProviderRejected, match="not an uploaded file"):
        ReplicateModel(bad, settings(replicate_fake), Job()).generate(request())


def test_an_unknown_model_is_refused(replicate_fake):
    ghost = replace(FLUX_PRO, model="nobody/nothing")
    with pytest.raises(ProviderRejected, match="404"):
        ReplicateModel(ghost, settings(replicate_fake), Job()).generate(request())


# ------------------------------------------------------------------ versioned models

UPSCALER = ModelEntry(
    id="test-upscaler",
    api="replicate-versioned",
    model="nightmareai/real-esrgan",
    version=MODELS["nightmareai/real-esrgan"].version,
    key_env_var="REPLICATE_API_TOKEN",
    source="https://replicate.com/nightmareai/real-esrgan/api/schema",
    capabilities=FLUX_PRO.capabilities,
    inputs={"image": Ref(), "scale": Const(2), "face_enhance": Const(False)},
)


def test_a_versioned_community_model_is_an_entry_too(replicate_fake):
    """POST /v1/predictions with ``version`` (Stage 7's upscaler), the photo uploaded."""
    result = run(replicate_fake, UPSCALER, request(references=[PHOTO]))
    [body] = replicate_fake.create_bodies
    assert body["version"] == UPSCALER.version and "model" not in body
    [upload] = replicate_fake.uploads.values()
    assert upload["data"] == PHOTO.data and body["input"]["image"] == upload["url"]
    assert body["input"]["scale"] == 2 and result.sent["input"]["image"]["sha256"]
    [pred] = replicate_fake.predictions.values()
    assert pred["model"] == "nightmareai/real-esrgan"


def test_one_key_check_serves_every_replicate_model(monkeypatch):
    from app.providers import verify

    calls: list[int] = []
    monkeypatch.setattr(verify, "_recent", {})
    monkeypatch.setattr(ReplicateModel, "verify_key", lambda s: calls.append(1) or "works")
    s = Settings.from_env({"REPLICATE_API_TOKEN": "r8_one"})
    checks = [verify.recent(e.id, s) for e in REPLICATE]
    assert len(calls) == 1 and all(c.verified for c in checks)


def test_health_says_a_key_was_refused_but_not_the_providers_words(monkeypatch):
    from app.providers import verify

    said = "Replicate refused REPLICATE_API_TOKEN: Invalid token r8_…abcd (account design-co)"

    def refuse(_model):
        raise ProviderRejected(said)

    monkeypatch.setattr(verify, "_recent", {})
    monkeypatch.setattr(ReplicateModel, "verify_key", refuse)
    s = Settings.from_env({"REPLICATE_API_TOKEN": "r8_one"})
    shown = verify.recent(REPLICATE[0].id, s)
    assert shown.verified is False and "abcd" not in shown.detail
    assert shown.detail == "REPLICATE_API_TOKEN refused: bff providers check says why"
    assert verify.check(REPLICATE[0].id, s).detail == said  # the operator's CLI
