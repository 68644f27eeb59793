"""Stage 2: the template engine, prompt fitting, and the LLM engine against
the fake OpenAI chat server."""

from __future__ import annotations

import json

import pytest

from app.pipeline.enhance_llm import build_package_llm
from app.pipeline.llm import LLMInvalidOutput
from app.pipeline.optimize import pass_through as optimize_pass_through
from app.pipeline.subject import resolve
from app.pipeline.templates import (
    NEGATIVE,
    QUALITY_TERMS,
    TEMPLATES,
    build_package,
    choose_template,
)
from app.platform.config import Settings
from app.providers import PROVIDERS
from tests.support.pipeline import (
    load,
    png_bytes,
    run_all,
    stages_by_name,
    submit_image,
    submit_prompt,
)
from tests.test_route import fake_provider

SPEC = {
    "garmentType": "dress",
    "silhouette": "fitted",
    "fabric": {"type": "silk", "texture": "smooth", "finish": "glossy"},
    "colors": {"primary": "black", "secondary": "white", "pattern": None},
    "construction": {"seams": "princess seams", "closure": "side zipper", "details": None},
    "style": {"aesthetic": "minimalist", "formality": "formal", "season": "all-season"},
    "promptText": "Black fitted silk dress with princess seams",
}


@pytest.mark.parametrize(
    "text, template",
    [
        ("black silk evening gown for a gala", "elegant-evening"),
        ("boho floral maxi dress with lace", "romantic-bohemian"),
        ("sculptural bold runway coat", "dramatic-avant-garde"),
        ("clean tailored minimal trouser suit", "minimalist-modern"),
        ("a coat", "minimalist-modern"),
    ],
)
def test_template_is_chosen_from_the_prompts_words(text, template):
    assert choose_template(text, None) == template
    assert build_package(text, None)["templateId"] == template


def test_spec_style_steers_the_template_and_fills_the_slots():
    pkg = build_package(None, SPEC)
    assert pkg["templateId"] == "minimalist-modern"  # aesthetic "minimalist" outweighs "formal"
    main = pkg["mainPrompt"]
    assert main.startswith(SPEC["promptText"])  # the designer's words lead
    for slot in ("fitted black and white silk dress", "glossy smooth finish", "side zipper"):
        assert slot in main
    t = TEMPLATES["minimalist-modern"]
    assert t["lighting"] in main and t["composition"] in main
    assert pkg["photographyStyle"] == t["style"]
    assert "matched" in pkg["reason"] and "minimalist" in pkg["reason"]


def test_the_users_words_are_kept_verbatim_and_negative_prompts_merge():
    pkg = build_package("Emerald SLIP dress, bias cut", None, user_negative="sequins, blurry")
    assert pkg["mainPrompt"].startswith("Emerald SLIP dress, bias cut, ")
    neg = pkg["negativePrompt"]
    assert neg.startswith("sequins, blurry")
    assert neg.count("blurry") == 1 and "watermark" in neg  # the default list, deduplicated
    assert build_package("a coat", None)["negativePrompt"] == NEGATIVE


def test_fitting_trims_the_lowest_value_terms_first():
    full = build_package("ivory wool coat", None)
    assert full["trimmed"] == [] and len(full["mainPrompt"]) > 200
    short = build_package("ivory wool coat", None, max_len=150)
    assert len(short["mainPrompt"]) <= 150
    assert short["mainPrompt"].startswith("ivory wool coat, ")
    assert short["promptLimit"] == 150
    assert short["trimmed"][-len(QUALITY_TERMS) :] == QUALITY_TERMS  # quality terms go first
    assert TEMPLATES["minimalist-modern"]["style"] in short["mainPrompt"]  # style stays
    assert all(k.lower() in short["mainPrompt"].lower() for k in short["keywords"])
    assert not set(short["keywords"]) & set(short["trimmed"])


def test_deterministic():
    assert build_package("red coat", SPEC, max_len=300) == build_package(
        "red coat", SPEC, max_len=300
    )


# ------------------------------------------------------------------ the stage


def _run_enhance(app, client, user, settings: dict) -> dict:
    gen_id = submit_prompt(client, user.headers, "navy wool peacoat with brass buttons", **settings)
    run_all(app, gen_id, ("analyze", "enhance"))
    body = load(app, gen_id)
    assert body["stages"][1]["status"] == "completed"
    return body


def test_stage_fits_the_strictest_available_provider(app, client, user, monkeypatch):
    monkeypatch.setitem(
        PROVIDERS, "tiny", fake_provider("tiny", quality=0.5, price=0, latency=1, max_len=120)
    )
    body = _run_enhance(app, client, user, {})
    out = body["stages"][1]["output"]
    assert out["inputs"]["promptLimit"]["maxLength"] == 120
    assert "tiny" in out["inputs"]["promptLimit"]["source"]
    assert len(out["mainPrompt"]) <= 120 and out["trimmed"]
    assert body["prompt"]["enhanced"] == out["mainPrompt"]

    body = _run_enhance(app, client, user, {"provider": "local"})  # requested: its own limit
    out = body["stages"][1]["output"]
    assert out["inputs"]["promptLimit"] == {
        "maxLength": 5000,
        "source": "requested provider local",
    }
    assert out["trimmed"] == []


def _stage_outputs(app, gen_id: str) -> dict[str, dict]:
    run_all(app, gen_id)
    return {n: st["output"] for n, st in stages_by_name(load(app, gen_id)).items()}


MAROON_DRESS = png_bytes(color="#6e1423")  # a tall block: the photo reads as a maroon dress


def test_the_designers_words_win_over_the_photo_in_the_prompt_and_the_request(app, client, user):
    resp = submit_image(
        client,
        user.headers,
        MAROON_DRESS,
        prompt="cobalt satin midi skirt",
        settings=json.dumps({"provider": "local"}),
    )
    out = _stage_outputs(app, resp.get_json()["id"])
    photo = out["analyze"]["spec"]["records"][0]
    assert (photo["garmentType"], photo["colors"]["primary"]) == ("dress", "maroon")
    final = out["optimize"]["finalPrompt"].lower()
    assert final.startswith("cobalt satin midi skirt")
    assert "maroon" not in final and "dress" not in final
    assert out["enhance"]["overridden"] == [
        {"field": "garment", "photo": "dress", "words": "skirt"},
        {"field": "colours", "photo": "maroon", "words": "cobalt"},
    ]
    assert out["enhance"]["subject"]["from"] == {
        "garment": "words",
        "colours": "words",
        "materials": "words",
    }
    sent = out["generate"]["sent"]
    assert (sent["palette"], sent["garment"], sent["drawn"]) == (["cobalt"], "skirt", "skirt")


@pytest.mark.parametrize(
    "words, garment, colours, materials",
    [
        ("cobalt satin midi skirt", "skirt", ["cobalt"], ["satin"]),
        ("dress shirt in sage green poplin", "shirt", ["sage"], ["poplin"]),
        ("navy-blue shirt dress", "dress", ["navy"], []),
        ("a silk blouse with wide black trousers", "blouse", ["black"], ["silk"]),
        ("top-notch lighting, lace-up boots, tailored, golden hour", None, [], []),
        (
            "a sky blue shirt with navy and blue trim, navy",
            "shirt",
            ["sky blue", "navy", "blue"],
            [],
        ),
    ],
)
def test_what_the_words_name(words, garment, colours, materials):
    said = resolve(words, None)
    assert (said.garment, said.colours, said.materials) == (garment, colours, materials)


def test_the_photo_fills_in_what_the_words_leave_open():
    pkg = build_package("satin midi skirt", SPEC)  # no colour named: the photo's
    assert pkg["mainPrompt"].startswith("satin midi skirt, black and white skirt")
    assert "silk" not in pkg["mainPrompt"] and "princess seams" not in pkg["mainPrompt"]
    assert pkg["subject"]["colours"] == ["black", "white"]
    same = build_package("ivory dress", SPEC)  # the same garment: its cut and seams stay
    assert "fitted silk dress" in same["mainPrompt"] and "princess seams" in same["mainPrompt"]


def test_enhance_off_sends_the_designers_words_as_written(app, client, user):
    words = "Emerald slip dress, bias cut, NO sequins"
    resp = client.post(
        "/api/generate/from-prompt",
        json={
            "prompt": words,
            "negativePrompt": "lace",
            "settings": {"enhance": "off", "provider": "local"},
        },
        headers=user.headers,
    )
    assert resp.status_code == 202, resp.get_json()
    out = _stage_outputs(app, resp.get_json()["id"])
    for name in ("enhance", "persona", "optimize"):
        assert out[name]["passedThrough"] is True, name
        assert "enhance is off" in out[name]["reason"]
    sent = out["generate"]["sent"]
    assert (sent["prompt"], sent["negativePrompt"]) == (words, "lace")
    assert sent["garment"] == "dress" and sent["palette"] == ["emerald"]
    cut = optimize_pass_through("x" * 30, "", 10)  # only the provider's limit changes it
    assert cut["finalPrompt"] == "x" * 10 and "limit of 10" in cut["reason"]


# ------------------------------------------------------------------ LLM engine


@pytest.fixture
def llm_settings(openai_chat, tmp_path) -> Settings:
    return Settings.from_env(
        {
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": openai_chat.base_url,
            "BFF_VAR_DIR": str(tmp_path),
            "BFF_LLM_MODEL": "gpt-test-mini",
        }
    )


def _answer(**over) -> dict:
    return {
        "mainPrompt": "editorial photo, navy wool peacoat with brass buttons, soft window light",
        "negativePrompt": "blurry, cartoon",
        "keywords": ["editorial"],
        "photographyStyle": "editorial street photography",
        "templateId": "minimalist-modern",
        **over,
    }


def test_llm_engine_keeps_the_designers_words_in_front(openai_chat, llm_settings):
    openai_chat.script_content(_answer())
    pkg = build_package_llm(llm_settings, "navy wool peacoat with brass buttons", None, "fur")
    assert pkg["engine"] == "openai-chat"
    assert pkg["mainPrompt"] == (
        "navy wool peacoat with brass buttons, editorial photo, soft window light"
    )
    assert pkg["negativePrompt"] == "fur, blurry, cartoon"
    assert pkg["llm"]["model"] == "gpt-test-mini"
    (body,) = openai_chat.requests
    assert body["model"] == "gpt-test-mini"
    assert body["response_format"]["json_schema"]["name"] == "prompt_package"
    sent = json.loads(body["messages"][1]["content"])
    assert sent["designerWords"] == "navy wool peacoat with brass buttons"
    assert sent["maxLength"] == 5000


def test_llm_answer_that_drops_the_users_words_gets_them_back_and_is_fitted(
    openai_chat, llm_settings
):
    long_tail = ", ".join(f"term {i}" for i in range(60))
    openai_chat.script_content(_answer(mainPrompt=f"a coat photo, {long_tail}"))
    pkg = build_package_llm(llm_settings, "Navy peacoat", None, max_len=100)
    assert pkg["mainPrompt"].startswith("Navy peacoat, a coat photo")
    assert len(pkg["mainPrompt"]) <= 100 and pkg["trimmed"][-1] == "term 59"


def test_llm_phrases_contradicting_the_words_are_dropped(openai_chat, llm_settings):
    words = "cobalt satin midi skirt"
    main = f"{words}, maroon dress with lace trim, pleated, soft window light"
    openai_chat.script_content(_answer(mainPrompt=main))
    pkg = build_package_llm(llm_settings, words, SPEC)
    assert pkg["mainPrompt"] == f"{words}, pleated, soft window light"
    assert pkg["droppedTerms"] == ["maroon dress with lace trim"]
    sent = json.loads(openai_chat.requests[0]["messages"][1]["content"])["garmentSpec"]
    assert sent["garmentType"] == "skirt" and sent["colors"]["primary"] is None  # reconciled


def test_llm_answers_invalid_twice_raise(openai_chat, llm_settings):
    openai_chat.script_content(_answer(templateId="cyberpunk"))  # not one of ours
    openai_chat.script_content(_answer(mainPrompt=""))
    with pytest.raises(LLMInvalidOutput):
        build_package_llm(llm_settings, "coat", None)
    assert len(openai_chat.requests) == 2
