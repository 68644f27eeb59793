"""A generation's stage rows are written by its first stage's claim, not by
the submit (one row per job on the API's path): until then every reader sees
seven pending stages, and everything that acts on stages treats a missing row
as a pending stage."""

from __future__ import annotations

from sqlalchemy import func, select

from app import generations as svc
from app.models import Generation, GenerationStage
from app.pipeline import STAGES
from tests.support.pipeline import load, run_all, services, stage, submit_prompt


def _stage_rows(app, gen_id: str) -> int:
    with services(app).db.session() as session:
        return session.scalar(select(func.count()).where(GenerationStage.generation_id == gen_id))


def test_a_new_generation_shows_seven_pending_stages_without_rows(app, client, user):
    gen_id = submit_prompt(client, user.headers)
    assert _stage_rows(app, gen_id) == 0
    body = client.get(f"/api/generate/{gen_id}", headers=user.headers).get_json()
    assert body["stages"] == [
        {
            "name": name,
            "status": "pending",
            "startedAt": None,
            "finishedAt": None,
            "durationMs": None,
            "attempts": 0,
            "error": None,
            "output": None,
        }
        for name in STAGES
    ]
    assert load(app, gen_id)["stages"] == body["stages"]  # the ORM read agrees


def test_the_first_claim_writes_all_seven_rows_on_sqlite(app, client, user):
    gen_id = submit_prompt(client, user.headers)
    assert stage(app, gen_id, "analyze").proceed
    assert _stage_rows(app, gen_id) == len(STAGES)
    shown = [(s["name"], s["status"], s["attempts"]) for s in load(app, gen_id)["stages"]]
    assert shown == [("analyze", "skipped", 1)] + [(n, "pending", 0) for n in STAGES[1:]]
    run_all(app, gen_id, STAGES[1:])
    assert load(app, gen_id)["status"] == "completed"
    assert _stage_rows(app, gen_id) == len(STAGES)


def test_a_job_canceled_before_it_started_keeps_no_stage_rows(app, client, user):
    gen_id = submit_prompt(client, user.headers)
    assert client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers).status_code == 200
    assert not stage(app, gen_id, "analyze").proceed
    assert _stage_rows(app, gen_id) == 0
    body = client.get(f"/api/generate/{gen_id}", headers=user.headers).get_json()
    assert body["status"] == "canceled"
    assert [s["status"] for s in body["stages"]] == ["pending"] * len(STAGES)


def test_a_job_that_failed_before_its_first_stage_retries_from_the_first(app, user):
    with services(app).db.session() as session:
        gen = svc.create(session, user_id=user.id, mode="prompt", settings={}, prompt="linen")
        gen.status, gen.error_message = "failed", "the broker refused it"
        gen_id = gen.id
    with services(app).db.session() as session:
        assert svc.prepare_retry(session.get(Generation, gen_id)) == STAGES[0]
        assert svc.first_unfinished(session.get(Generation, gen_id)) == STAGES[0]
