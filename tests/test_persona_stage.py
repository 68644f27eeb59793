"""The persona stage through the runner, on a persona the user stored: the
row read (plain SQL typed by the table) gives the match its keywords and
palette as lists, on SQLite and on PostgreSQL; skipped for a user with none."""

from __future__ import annotations

import pytest

from app.pipeline import STAGES
from tests.conftest import make_user
from tests.support.pipeline import load, run_all, stages_by_name

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
