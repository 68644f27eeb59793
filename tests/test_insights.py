"""/api/stats' Insights fields (the web page's Insights view) against a seeded
database: the generations run through the real stages in-process, feedback
goes through the API and the learner. The same seeding and checks run on
PostgreSQL in tests/integration/test_insights_postgres.py."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select, update

from app.domain.insights import HEARTED, TERMS
from app.domain.models import GenerationFeedback, GenerationStage, PromptTokenScore, User
from app.pipeline import ALL_STAGES, maintenance
from app.pipeline.context import StageFailed
from app.pipeline.runner import STAGE_FUNCS
from tests.support.pipeline import load, run_all, services, submit_prompt

# Generate-stage durations (ms) given to the three completed generations.
GENERATE_MS = (900, 100, 200)


@dataclass
class Seeded:
    persona: str
    gala: list[str]  # completed with the persona blended in (2 images, then 1)
    plain: str  # completed with no persona (1 image)
    hearted: list[int]  # asset ids, latest heart first


def fail_at(monkeypatch, stage: str) -> None:
    def refuse(ctx):
        raise StageFailed(f"{stage} refused")

    monkeypatch.setitem(STAGE_FUNCS, stage, refuse)


def feedback(client, user, gen_id: str, kind: str, **body) -> None:
    body["feedbackType"] = kind
    resp = client.post(f"/api/generate/{gen_id}/feedback", json=body, headers=user.headers)
    assert resp.status_code in (200, 201), resp.get_json()


def seed(app, client, user, monkeypatch) -> Seeded:
    """Three completed generations (two on a persona), two failed ones, a
    daily cap, hearts (one taken back), ratings and what the learner made of them."""
    headers = user.headers
    persona = client.post(
        "/api/personas", json={"name": "Evening gala", "keywords": ["gala"]}, headers=headers
    ).get_json()["id"]

    def completed(prompt: str, **extra) -> str:
        body = {"prompt": prompt, "settings": {"provider": "local", **extra.pop("settings", {})}}
        resp = client.post("/api/generate/from-prompt", json=body | extra, headers=headers)
        assert resp.status_code == 202, resp.get_json()
        run_all(app, resp.get_json()["id"])
        return resp.get_json()["id"]

    gala = [
        completed("emerald silk slip dress", personaId=persona, settings={"count": 2}),
        completed("charcoal wool overcoat", personaId=persona),
    ]
    plain = completed("neon vinyl raincoat")
    for stage in ("generate", "route"):
        with monkeypatch.context() as m:
            fail_at(m, stage)
            run_all(app, submit_prompt(client, headers, f"{stage} breaks this"))
    with services(app).db.session() as session:
        session.execute(update(User).where(User.id == user.id).values(daily_spend_cap=Decimal(5)))
        for gen_id, ms in zip([*gala, plain], GENERATE_MS, strict=True):
            session.execute(
                update(GenerationStage)
                .where(GenerationStage.generation_id == gen_id, GenerationStage.name == "generate")
                .values(duration_ms=ms)
            )

    second_image = load(app, gala[0])["assets"][1]["id"]
    feedback(client, user, gala[0], "heart", assetId=second_image)
    feedback(client, user, gala[1], "heart")  # no image named: its first counts
    feedback(client, user, plain, "heart")
    feedback(client, user, plain, "heart")  # taken back
    feedback(client, user, plain, "rating", rating=1)
    with services(app).db.session() as session:
        ids = session.scalars(select(GenerationFeedback.id).order_by(GenerationFeedback.id)).all()
    for fid in ids:
        maintenance.apply_one_feedback(services(app).db, fid)
    first_image = load(app, gala[1])["assets"][0]["id"]
    return Seeded(persona, gala, plain, [first_image, second_image])


def learnt(app, user) -> list[tuple[str, float, int]]:
    t = PromptTokenScore
    with services(app).db.session() as session:
        rows = session.execute(
            select(t.token, t.score, t.uses).where(t.user_id == user.id, t.uses > 0)
        )
        return [(tok, round(score, 4), uses) for tok, score, uses in rows]


def as_rows(terms: list[dict]) -> list[tuple[str, float, int]]:
    return [(t["token"], t["score"], t["uses"]) for t in terms]


def check_insights(app, client, user, other, seeded: Seeded) -> None:
    stats = client.get("/api/stats", headers=user.headers).get_json()
    assert stats["dailyCap"] == 5.0
    assert stats["counts"]["failed"] == 2 and stats["successRate"] == 0.6
    assert stats["failuresByStage"] == {"generate": 1, "route": 1}

    generate = stats["stageDurationsMs"]["generate"]
    assert generate == {"avg": 400.0, "count": 3, "p50": 200.0, "p95": 900.0}
    for name, d in stats["stageDurationsMs"].items():
        assert d["p50"] <= d["p95"], name

    assert stats["imagesByPersona"] == [
        {"personaId": seeded.persona, "name": "Evening gala", "images": 3},
        {"personaId": None, "name": "no persona", "images": 1},
    ]
    assert stats["images"] == 4 and stats["assets"] == 4 and stats["variants"] == 0

    hearted = stats["mostHearted"]
    assert [h["assetId"] for h in hearted] == seeded.hearted
    assert [h["generationId"] for h in hearted] == [seeded.gala[1], seeded.gala[0]]
    assert hearted[1]["prompt"] == "emerald silk slip dress" and hearted[1]["hearts"] == 1
    assert all("/cdn/users/" in h["url"] and h["width"] for h in hearted)

    # Exactly the best and the worst of what the learner holds, no term twice.
    rows = learnt(app, user)
    best = sorted(rows, key=lambda r: (-r[1], r[0]))[:TERMS]
    worst = [r for r in sorted(rows, key=lambda r: (r[1], r[0])) if r not in best][:TERMS]
    terms = stats["learntTerms"]
    assert as_rows(terms["top"]) == best and as_rows(terms["bottom"]) == worst
    assert terms["top"][0]["score"] > 0.5 > terms["bottom"][0]["score"]  # hearts vs a 1-star
    assert terms["good"] > terms["bad"]
    # What was asked for is learnt, but never made negative nor added elsewhere:
    # the page shows it apart from the thresholds.
    subject = {t["token"]: t["subject"] for t in terms["top"] + terms["bottom"]}
    assert subject["neon vinyl raincoat"] and subject["emerald silk slip dress"], subject
    assert not subject["haute couture"], subject

    # Only the caller's own.
    theirs = client.get("/api/stats", headers=other.headers).get_json()
    assert theirs["dailyCap"] is None and theirs["failuresByStage"] == {}
    assert theirs["imagesByPersona"] == [] and theirs["mostHearted"] == []
    assert theirs["learntTerms"]["top"] == theirs["learntTerms"]["bottom"] == []


def test_stats_insights_on_sqlite(app, client, user, other_user, monkeypatch):
    seeded = seed(app, client, user, monkeypatch)
    submit_prompt(client, other_user.headers)  # someone else's work counts nowhere here
    check_insights(app, client, user, other_user, seeded)


def test_most_hearted_is_capped_and_ordered(app, client, user):
    ids = [submit_prompt(client, user.headers, f"look {i}") for i in range(HEARTED + 2)]
    for gen_id in ids:
        run_all(app, gen_id)
        feedback(client, user, gen_id, "heart")
    hearted = client.get("/api/stats", headers=user.headers).get_json()["mostHearted"]
    assert [h["generationId"] for h in hearted] == ids[::-1][:HEARTED]  # latest first


def test_percentiles_ignore_unmeasured_runs(app, client, user):
    gen_id = submit_prompt(client, user.headers)
    run_all(app, gen_id)
    with services(app).db.session() as session:
        session.execute(
            update(GenerationStage)
            .where(GenerationStage.generation_id == gen_id, GenerationStage.name == "store")
            .values(duration_ms=None)
        )
    stats = client.get("/api/stats", headers=user.headers).get_json()["stageDurationsMs"]
    assert stats["store"] == {"avg": 0.0, "count": 1, "p50": None, "p95": None}
    assert stats["generate"]["p50"] == stats["generate"]["p95"] is not None


def test_the_images_tile_counts_what_the_persona_chart_counts(app, client, user):
    """Before, ``assets`` (the page's Images tile) counted a refine's variants
    as images while ``imagesByPersona`` did not: one upscaled and cut-out
    image read "3 images" on the tile and 1 on the chart."""
    refine = {"upscale": 2, "removeBackground": True}
    refined = submit_prompt(client, user.headers, "red silk dress", **refine)
    run_all(app, refined, ALL_STAGES)
    run_all(app, submit_prompt(client, user.headers, "navy blazer"))
    stats = client.get("/api/stats", headers=user.headers).get_json()
    assert stats["images"] == sum(r["images"] for r in stats["imagesByPersona"]) == 2
    assert stats["variants"] == 2 and stats["assets"] == 4
