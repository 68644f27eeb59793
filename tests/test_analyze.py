"""Stage 1: the offline Pillow engine on images drawn here, the vision engine
against the fake OpenAI chat server (real SDK, real wire format), and the
validation of a supplied vltSpec."""

from __future__ import annotations

import io
import json
import random

import pytest
from PIL import Image, ImageDraw

from app.pipeline import llm
from app.pipeline.analyze import analyze_image, analyze_with_vision
from app.pipeline.llm import LLMCallFailed, LLMInvalidOutput
from app.pipeline.vlt import normalize_spec
from app.platform.config import Settings
from tests.fakes.openai_chat import DEFAULT_RECORD
from tests.support.pipeline import load, run_all, stage, stages_by_name, submit_image


def png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def canvas(bg=(250, 250, 250), size=(200, 300)) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", size, bg)
    return img, ImageDraw.Draw(img)


def record(data: bytes) -> dict:
    return analyze_image(data)["spec"]["records"][0]


def test_red_rectangle_on_white_is_a_solid_red_garment():
    img, d = canvas()
    d.rectangle([50, 40, 150, 260], fill=(200, 25, 35))
    out = analyze_image(png(img))
    rec = out["spec"]["records"][0]
    assert rec["colors"]["primary"] == "red"
    assert rec["colors"]["pattern"] is None
    assert rec["colors"]["secondary"] is None
    assert out["diagnostics"]["background"] == "white"
    assert 0.25 < out["diagnostics"]["foregroundFraction"] < 0.5
    assert rec["confidence"] >= 0.75
    assert any("red" in line for line in out["reasoning"])


def test_vertical_stripes_are_a_striped_pattern_even_when_one_colour_is_the_background():
    img, d = canvas()
    for i, x in enumerate(range(50, 150, 10)):
        d.rectangle([x, 40, x + 9, 260], fill=(200, 25, 35) if i % 2 == 0 else (250, 250, 250))
    rec = record(png(img))
    assert rec["colors"]["pattern"] == "striped"
    assert {rec["colors"]["primary"], rec["colors"]["secondary"]} == {"red", "white"}
    assert rec["fabric"]["texture"] == "patterned"


def test_horizontal_navy_stripes_are_striped_too():
    img, d = canvas(bg=(240, 240, 232))
    for i, y in enumerate(range(40, 260, 12)):
        d.rectangle([40, y, 160, y + 11], fill=(20, 30, 75) if i % 2 == 0 else (235, 180, 40))
    rec = record(png(img))
    assert rec["colors"]["pattern"] == "striped"
    assert "navy" in (rec["colors"]["primary"], rec["colors"]["secondary"])


def test_checkerboard_is_checked():
    img, d = canvas(bg=(128, 128, 128))
    for i, x in enumerate(range(40, 160, 12)):
        for j, y in enumerate(range(50, 250, 12)):
            fill = (20, 20, 22) if (i + j) % 2 == 0 else (250, 250, 250)
            d.rectangle([x, y, x + 11, y + 11], fill=fill)
    rec = record(png(img))
    assert rec["colors"]["pattern"] == "checked"


def test_scattered_motifs_on_a_ground_colour_are_a_print():
    rng = random.Random(3)
    img, d = canvas()
    d.rectangle([40, 30, 160, 270], fill=(20, 30, 75))
    for _ in range(120):
        x, y, r = rng.uniform(40, 160), rng.uniform(30, 270), rng.uniform(3, 7)
        d.ellipse([x - r, y - r, x + r, y + r], fill=rng.choice([(240, 130, 170), (250, 220, 50)]))
    rec = record(png(img))
    assert rec["colors"]["pattern"] == "print"
    assert rec["colors"]["primary"] == "navy"
    assert rec["style"]["aesthetic"] == "bohemian"


def test_noisy_solid_fabric_stays_solid():
    rng = random.Random(7)
    img, d = canvas()
    d.rectangle([50, 40, 150, 260], fill=(30, 80, 200))
    px = img.load()
    for x in range(50, 151):
        for y in range(40, 261):
            r, g, b = px[x, y]
            n = rng.randint(-18, 18)
            px[x, y] = (max(0, r + n), max(0, g + n), min(255, b + n))
    rec = record(png(img))
    assert rec["colors"]["primary"] in ("blue", "cobalt")
    assert rec["colors"]["pattern"] is None


def test_flared_tall_shape_reads_as_an_a_line_dress_and_two_legs_as_trousers():
    img, d = canvas(bg=(255, 255, 240))
    d.polygon([(85, 20), (115, 20), (170, 280), (30, 280)], fill=(0, 120, 80))
    dress = record(png(img))
    assert (dress["garmentType"], dress["silhouette"]) == ("dress", "a-line")
    assert dress["colors"]["primary"] == "emerald"
    assert dress["style"]["aesthetic"] == "elegant"  # a jewel tone

    img, d = canvas()
    d.rectangle([60, 30, 140, 110], fill=(20, 30, 75))
    d.rectangle([60, 110, 92, 280], fill=(20, 30, 75))
    d.rectangle([108, 110, 140, 280], fill=(20, 30, 75))
    trousers = record(png(img))
    assert trousers["garmentType"] == "trousers"


def test_wide_shape_is_a_cropped_top():
    img, d = canvas(size=(300, 200))
    d.rectangle([30, 60, 270, 140], fill=(240, 130, 170))
    rec = record(png(img))
    assert (rec["garmentType"], rec["silhouette"]) == ("top", "cropped")
    assert rec["colors"]["primary"] == "pink"


def test_confidence_reflects_how_clearly_the_garment_separates():
    clear, d = canvas()
    d.rectangle([50, 40, 150, 260], fill=(20, 20, 22))
    faint, d = canvas(bg=(255, 253, 208))
    d.rectangle([50, 40, 150, 260], fill=(222, 203, 164))
    full = Image.new("RGB", (200, 300), (30, 80, 200))  # no background at all
    c_clear, c_faint, c_full = (record(png(i))["confidence"] for i in (clear, faint, full))
    assert c_clear > c_faint
    assert c_clear > c_full
    assert record(png(full))["colors"]["primary"] == "blue"


def test_offline_engine_is_deterministic_and_reads_jpeg():
    img, d = canvas()
    d.rectangle([50, 40, 150, 260], fill=(110, 40, 140))
    assert analyze_image(png(img)) == analyze_image(png(img))
    assert record(png(img, "JPEG"))["colors"]["primary"] == "purple"


def test_a_large_jpeg_reads_as_its_small_copy_does(monkeypatch):
    """A big photo is decoded at a fraction of its size (``draft``): what the
    engine reads must not change with the photo's resolution."""
    big, d = canvas(size=(4000, 6000))
    d.rectangle([1000, 800, 3000, 5200], fill=(110, 40, 140))
    for x in range(1000, 3000, 400):  # stripes, the pattern most sensitive to scale
        d.rectangle([x, 800, x + 119, 5200], fill=(240, 200, 40))
    small = big.resize((200, 300), Image.Resampling.NEAREST)
    decoded: list[tuple[int, int]] = []
    load = Image.Image.convert
    monkeypatch.setattr(
        Image.Image, "convert", lambda im, *a, **k: decoded.append(im.size) or load(im, *a, **k)
    )
    read_big, read_small = record(png(big, "JPEG")), record(png(small, "JPEG"))
    assert decoded[0] == (2000, 3000)  # half of each side: drafted, not decoded whole
    for field in ("garmentType", "silhouette", "fabric", "colors", "promptText"):
        assert read_big[field] == read_small[field], field


# ------------------------------------------------------------------ vision engine


@pytest.fixture
def llm_settings(openai_chat, tmp_path) -> Settings:
    return Settings.from_env(
        {
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": openai_chat.base_url,
            "BFF_VAR_DIR": str(tmp_path),
        }
    )


def _garment() -> bytes:
    img, d = canvas()
    d.rectangle([50, 40, 150, 260], fill=(0, 120, 80))
    return png(img)


def test_vision_engine_sends_the_image_and_a_strict_schema(openai_chat, llm_settings):
    openai_chat.script_content(DEFAULT_RECORD)
    out = analyze_with_vision(_garment(), llm_settings)
    rec = out["spec"]["records"][0]
    assert rec["colors"]["primary"] == "emerald"  # lower-cased by normalisation
    assert rec["fabric"]["type"] == "silk"
    assert out["llm"]["attempts"] == 1 and out["llm"]["usage"]["promptTokens"] > 0
    (body,) = openai_chat.requests
    assert body["model"] == "gpt-4o-mini"
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "vlt_record"
    assert body["response_format"]["json_schema"]["strict"] is True
    parts = body["messages"][1]["content"]
    image = next(p for p in parts if p["type"] == "image_url")
    assert image["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert openai_chat.headers[0]["authorization"] == "Bearer sk-test"


def test_invalid_answer_is_asked_for_once_more(openai_chat, llm_settings):
    openai_chat.script_content("this is not json")
    openai_chat.script_content({**DEFAULT_RECORD, "garmentType": "Jumpsuit"})
    out = analyze_with_vision(_garment(), llm_settings)
    assert out["spec"]["records"][0]["garmentType"] == "jumpsuit"
    assert out["llm"]["attempts"] == 2
    assert "JSONDecodeError" in out["llm"]["rejectedAnswers"][0]


def test_twice_invalid_raises_and_a_schema_violation_counts_as_invalid(openai_chat, llm_settings):
    openai_chat.script_content({**DEFAULT_RECORD, "confidence": 7})  # out of range
    openai_chat.script_content("[]")
    with pytest.raises(LLMInvalidOutput):
        analyze_with_vision(_garment(), llm_settings)
    assert len(openai_chat.requests) == 2


def test_api_errors_are_retried_by_the_sdk_then_surface(openai_chat, llm_settings):
    openai_chat.script_error(503, "overloaded", retry_after=0.01)
    openai_chat.script_content(DEFAULT_RECORD)
    assert analyze_with_vision(_garment(), llm_settings)["spec"]["records"][0]
    openai_chat.reset()
    refused = "Incorrect API key provided: sk-proj-Ab******9xYz. You can find your API key…"
    openai_chat.script_error(401, refused, code="invalid_api_key")
    with pytest.raises(LLMCallFailed, match="401: Incorrect API key provided: sk-….") as exc:
        analyze_with_vision(_garment(), llm_settings)
    assert "9xYz" not in str(exc.value)
    assert len(openai_chat.requests) == 1  # 401 is not retried


def test_an_llm_outage_pauses_asking_so_stages_fall_back_at_once(
    openai_chat, llm_settings, monkeypatch
):
    """Through an outage every analyze and enhance waited out the SDK's three
    attempts (up to 3 x BFF_LLM_TIMEOUT) before its offline engine answered."""
    for _ in range(3):  # the first attempt and the SDK's two retries
        openai_chat.script_error(503, "overloaded", retry_after=0.01)
    with pytest.raises(LLMCallFailed, match="503"):
        analyze_with_vision(_garment(), llm_settings)
    asked = len(openai_chat.requests)
    openai_chat.script_content(DEFAULT_RECORD)
    with pytest.raises(LLMCallFailed, match="not asked: OpenAI API error 503: overloaded"):
        analyze_with_vision(_garment(), llm_settings)
    assert len(openai_chat.requests) == asked
    monkeypatch.setattr(llm, "OUTAGE_PAUSE", 0.0)  # the pause is over: asked again
    assert analyze_with_vision(_garment(), llm_settings)["spec"]["records"][0]


def test_a_refused_llm_request_does_not_pause_asking(openai_chat, llm_settings):
    openai_chat.script_error(400, "Invalid schema for response_format")
    with pytest.raises(LLMCallFailed, match="400"):
        analyze_with_vision(_garment(), llm_settings)
    openai_chat.script_content(DEFAULT_RECORD)
    assert analyze_with_vision(_garment(), llm_settings)["spec"]["records"][0]


# ------------------------------------------------------------------ supplied spec


def test_supplied_spec_is_normalised():
    spec = normalize_spec(
        {
            "records": [
                {
                    "garmentType": "  Kaftan ",
                    "colors": {"primary": "Midnight Blue", "secondary": " "},
                    "style": {"aesthetic": "boho"},
                }
            ]
        }
    )
    rec = spec["records"][0]
    assert rec["garmentType"] == "kaftan"  # unknown types kept as text
    assert rec["colors"]["primary"] == "midnight blue"
    assert rec["style"]["formality"] == "smart casual"  # defaulted
    assert rec["fabric"]["type"] == "unspecified" and rec["confidence"] == 0.5


@pytest.mark.parametrize(
    "spec",
    [
        {"records": []},
        {"records": [{"confidence": 2}]},
        {"records": [{"garmentType": ""}]},
        {"nothing": True},
        {"records": "dress"},
    ],
)
def test_invalid_supplied_spec_is_a_422_at_submit(client, user, spec):
    resp = client.post("/api/generate/from-image", json={"vltSpec": spec}, headers=user.headers)
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["error"]["code"] == "validation_error"


def test_valid_supplied_spec_is_accepted_and_passed_through_analyze(app, client, user):
    spec = {"records": [{"garmentType": "Blazer", "colors": {"primary": "NAVY"}}]}
    resp = client.post("/api/generate/from-image", json={"vltSpec": spec}, headers=user.headers)
    assert resp.status_code == 202
    analyze = _analyzed(app, resp.get_json()["id"])
    assert analyze["status"] == "completed"
    assert analyze["output"]["engine"] == "supplied"
    assert analyze["output"]["spec"]["records"][0]["colors"]["primary"] == "navy"
    assert json.dumps(analyze["output"])  # JSON all the way


# ------------------------------------------------------------------ the stage


def _analyzed(app, gen_id: str) -> dict:
    stage(app, gen_id, "analyze")
    return stages_by_name(load(app, gen_id))["analyze"]


def _upload_and_analyze(app, user) -> dict:
    resp = submit_image(app.test_client(), user.headers, _garment())
    assert resp.status_code == 202, resp.get_json()
    return _analyzed(app, resp.get_json()["id"])


def test_stage_offline_records_inputs_output_and_reasoning(app, user):
    stage = _upload_and_analyze(app, user)
    assert stage["status"] == "completed"
    out = stage["output"]
    assert out["engine"] == "offline-pillow"
    assert out["inputs"]["bytes"] > 0
    assert out["spec"]["records"][0]["colors"]["primary"] == "emerald"
    assert out["reasoning"] and "fallback" not in out


def test_stages_with_a_key_use_openai_and_fall_back_saying_why(app_config, openai_chat):
    from app import create_app
    from tests.conftest import make_user

    app = create_app(
        {**app_config, "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": openai_chat.base_url}
    )
    user = make_user(app, "vera")

    def analyze_and_enhance() -> tuple[dict, dict]:
        resp = submit_image(app.test_client(), user.headers, _garment(), prompt="wool peacoat")
        run_all(app, resp.get_json()["id"], ("analyze", "enhance"))
        stages = stages_by_name(load(app, resp.get_json()["id"]))
        return stages["analyze"]["output"], stages["enhance"]["output"]

    openai_chat.script_content({**DEFAULT_RECORD, "garmentType": "Gown"})  # enhance: the default
    analyzed, enhanced = analyze_and_enhance()
    assert analyzed["engine"] == "openai-vision"
    assert analyzed["spec"]["records"][0]["garmentType"] == "gown"
    assert enhanced["engine"] == "openai-chat" and enhanced["mainPrompt"].startswith("wool peacoat")

    openai_chat.script_content("{not json")
    openai_chat.script_content('{"garmentType": 3}')
    openai_chat.script_error(401, "Incorrect API key provided", code="invalid_api_key")
    analyzed, enhanced = analyze_and_enhance()
    assert analyzed["engine"] == "offline-pillow"
    assert analyzed["fallback"]["from"] == "openai-vision"
    assert "no valid answer after 2 attempts" in analyzed["fallback"]["reason"]
    assert analyzed["spec"]["records"][0]["colors"]["primary"] == "emerald"
    assert (enhanced["engine"], enhanced["fallback"]) == (
        "offline-templates",
        {"from": "openai-chat", "reason": "OpenAI API error 401: Incorrect API key provided"},
    )


def test_fake_server_runs_standalone_and_is_scriptable_over_http(tmp_path):
    import subprocess
    import sys
    import time

    import openai
    import requests

    from tests.support.services import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_chat", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "fake OpenAI chat server" in proc.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                requests.post(base + "/__fake__/script", json=[{"content": "hello"}], timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        api = openai.OpenAI(api_key="sk-x", base_url=base + "/v1", max_retries=0)
        msgs = [{"role": "user", "content": "hi"}]
        done = api.chat.completions.create(model="m", messages=msgs)
        assert done.object == "chat.completion"
        assert done.choices[0].message.content == "hello"
        requests.post(base + "/__fake__/script", json=[{"status": 429, "message": "slow down"}])
        with pytest.raises(openai.RateLimitError) as err:
            api.chat.completions.create(model="m", messages=msgs)
        assert err.value.body["message"] == "slow down"
    finally:
        proc.terminate()
        proc.wait(5)


def test_a_wordy_vision_answer_is_cut_short_not_refused():
    """Refused, the model would be asked (and paid) again; a supplied spec
    of the same length is the client's to fix (a 422)."""
    import pydantic

    from app.pipeline.vlt import normalize_record, normalize_spec

    answer = {
        "garmentType": "dress " * 20,
        "construction": {"details": "hand-finished seams, " * 15},
        "fabric": {"type": "silk", "sheen": "liquid " * 40},
        "promptText": "p" * 6000,
    }
    [rec] = normalize_record(answer)["records"]
    assert len(rec["garmentType"]) <= 80 and len(rec["construction"]["details"]) == 200
    assert len(rec["fabric"]["sheen"]) == 200 and len(rec["promptText"]) == 5000
    with pytest.raises(pydantic.ValidationError):
        normalize_spec({"records": [answer]})
