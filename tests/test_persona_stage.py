"""The persona stage through the runner, on a persona the user stored: the
row read (plain SQL typed by the table) gives the match its keywords and
palette as lists, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest

from app.pipeline import STAGES
from tests.support.pipeline import load, run_all, stage, stages_by_name

PERSONA = {
    "name": "Evening",
    "description": "Gala looks",
    "keywords": ["evening gown", "couture", "velvet drape"],
    "palette": ["emerald", "gold"],
    "aesthetic": "elegant",
}


def _blends_the_stored_persona(app, user) -> None:
    client = app.test_client()
    resp = client.post("/api/personas", json=PERSONA, headers=user.headers)
    assert resp.status_code == 201, resp.get_json()
    persona_id = resp.get_json()["id"]
    resp = client.post(
        "/api/generate/from-prompt",
        json={
            "prompt": "emerald evening gown for a gala",
            "personaId": persona_id,
            "settings": {"provider": "local"},
        },
        headers=user.headers,
    )
    assert resp.status_code == 202, resp.get_json()
    gen_id = resp.get_json()["id"]
    run_all(app, gen_id, STAGES[: STAGES.index("persona")])
    assert stage(app, gen_id, "persona").proceed
    out = stages_by_name(load(app, gen_id))["persona"]["output"]
    assert out["personaId"] == persona_id and out["personaName"] == "Evening"
    assert out["palette"] == ["emerald", "gold"]
    # ("couture" is in the enhanced prompt already: only what is missing is added)
    assert out["injectedKeywords"] == ["velvet drape"] and "velvet drape" in out["prompt"]
    assert out["inputs"] == {"personas": 1, "requested": persona_id}


def test_the_persona_stage_blends_a_stored_persona_sqlite(app, user):
    _blends_the_stored_persona(app, user)


@pytest.mark.services
def test_the_persona_stage_blends_a_stored_persona_postgres(pg_app, pg_user):
    _blends_the_stored_persona(pg_app, pg_user)
