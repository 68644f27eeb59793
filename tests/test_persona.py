"""Stage 3: persona matching (TF-IDF cosine + palette overlap) and the stage."""

from __future__ import annotations

import pytest

from app.domain.models import Persona
from app.pipeline import STAGES
from app.pipeline.persona import THRESHOLD, match, palette_overlap, tfidf_cosines, tokens
from app.pipeline.templates import build_package
from tests.conftest import make_user
from tests.support.pipeline import load, run_all, stages_by_name


def persona(pid: str, keywords, palette=(), aesthetic=None, default=False, desc="") -> Persona:
    return Persona(
        id=pid,
        user_id=1,
        name=pid.title(),
        description=desc,
        keywords=list(keywords),
        palette=list(palette),
        aesthetic=aesthetic,
        is_default=default,
    )


EVENING = persona(
    "evening", ["evening gown", "silk", "couture", "gala glamour"], ["emerald", "gold"], "elegant"
)
BOHO = persona(
    "boho", ["flowing", "floral print", "lace", "festival"], ["sage", "cream"], "bohemian"
)
STREET = persona("street", ["oversized", "sneakers", "graphic tee"], ["black"], "streetwear")


def enhanced(text: str) -> str:
    return build_package(text, None)["mainPrompt"]


def test_best_matching_persona_is_blended_with_its_missing_keywords():
    prompt = enhanced("emerald silk evening gown with a low back")
    out = match(prompt, [BOHO, EVENING, STREET], None)
    assert out["personaId"] == "evening"
    assert out["matchScore"] >= THRESHOLD
    assert out["scores"]["evening"] > max(out["scores"]["boho"], out["scores"]["street"])
    assert out["components"]["evening"]["palette"] == 0.5  # emerald named, gold not
    # "silk", "evening gown" and "couture" (the template's "haute couture") are already there.
    assert out["injectedKeywords"] == ["gala glamour"]
    assert out["reason"].startswith("best match")


def test_a_prompt_unlike_every_persona_blends_nothing():
    out = match(enhanced("grey wool trousers, pleated"), [BOHO, EVENING, STREET], None)
    assert out["personaId"] is None and out["injectedKeywords"] == []
    assert "nothing blended" in out["reason"]
    assert max(out["scores"].values()) < THRESHOLD


def test_explicit_persona_wins_even_with_a_low_score():
    out = match(enhanced("grey wool trousers"), [BOHO, STREET], "street")
    assert out["personaId"] == "street" and out["reason"] == "explicit personaId"
    assert out["injectedKeywords"] == ["oversized", "sneakers", "graphic tee"]
    gone = match(enhanced("grey wool trousers"), [BOHO], "deleted-one")
    assert gone["personaId"] is None and "no longer exists" in gone["reason"]


def test_keywords_contradicting_the_designers_words_are_not_injected():
    words = "cobalt satin midi skirt"
    out = match(enhanced(words), [EVENING], "evening", words=words)
    assert out["injectedKeywords"] == ["gala glamour"]
    assert out["skippedKeywords"] == ["evening gown", "silk"]  # another garment, material


def test_ties_go_to_the_default_persona():
    a = persona("a", ["linen"])
    b = persona("b", ["linen"], default=True)
    assert match("linen shirt", [a, b], None)["personaId"] == "b"


def test_tfidf_discounts_words_every_persona_shares():
    docs = {"x": tokens("dress minimal"), "y": tokens("dress floral")}
    cos = tfidf_cosines(tokens("floral dress"), docs)
    assert cos["y"] > cos["x"] > 0


def test_palette_overlap_matches_whole_colour_names_only():
    assert palette_overlap("a tailored coat", ["red"]) == 0  # not inside "tailored"
    assert palette_overlap("sky blue and red silk", ["sky blue", "red", "navy"]) == pytest.approx(
        2 / 3
    )
    assert palette_overlap("anything", []) == 0


# ---------------------------------------------- the stage, on a stored persona


PERSONA = {
    "name": "Evening",
    "description": "Gala looks",
    "keywords": ["evening gown", "couture", "velvet drape"],
    "palette": ["emerald", "gold"],
    "aesthetic": "elegant",
}


def _persona_stage(app, user, prompt: str, **body) -> dict:
    resp = app.test_client().post(
        "/api/generate/from-prompt",
        json={"prompt": prompt, "settings": {"provider": "local"}, **body},
        headers=user.headers,
    )
    assert resp.status_code == 202, resp.get_json()
    gen_id = resp.get_json()["id"]
    run_all(app, gen_id, STAGES[: STAGES.index("optimize") + 1])
    return stages_by_name(load(app, gen_id))


def _blends_the_stored_persona(app, user, other_user) -> None:
    client = app.test_client()
    resp = client.post("/api/personas", json=PERSONA, headers=user.headers)
    assert resp.status_code == 201, resp.get_json()
    persona_id = resp.get_json()["id"]
    stages = _persona_stage(app, user, "emerald evening gown for a gala", personaId=persona_id)
    out = stages["persona"]["output"]
    assert out["personaId"] == persona_id and out["personaName"] == "Evening"
    assert out["palette"] == ["emerald", "gold"]
    # ("couture" is in the enhanced prompt already: only what is missing is added)
    assert out["injectedKeywords"] == ["velvet drape"] and "velvet drape" in out["prompt"]
    assert out["inputs"] == {"personas": 1, "requested": persona_id}
    assert "velvet drape" in stages["optimize"]["output"]["finalPrompt"]
    # Another user's personas are not theirs to match.
    theirs = _persona_stage(app, other_user, "emerald evening gown for a gala")["persona"]
    assert theirs["status"] == "skipped" and theirs["output"]["reason"] == "user has no personas"


def test_the_persona_stage_blends_a_stored_persona_sqlite(app, user, other_user):
    _blends_the_stored_persona(app, user, other_user)


@pytest.mark.services
def test_the_persona_stage_blends_a_stored_persona_postgres(pg_app, pg_user):
    _blends_the_stored_persona(pg_app, pg_user, make_user(pg_app, f"other-{pg_user.id}"))
