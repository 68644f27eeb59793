"""The scrape's counters over all history are rolled up by the maintenance
beat: a scrape reads the rollup and what finished since its watermark, and
says the same as before the roll-up; a deleted generation's work stays
counted once rolled up."""

from __future__ import annotations

from datetime import timedelta

from app.platform import metric_rollup as rollup
from app.platform.metric_rollup import MetricRollup
from tests.support.pipeline import run_all, services, submit_prompt
from tests.support.plans import assert_no_table_read_whole, plans, selects_run_by
from tests.test_metrics import scrape

HISTORY = (
    "bff_stage_duration_seconds",
    "bff_provider_latency_seconds",
    "bff_stage_retries",
    "bff_generation_cost_dollars",
)


def history(client) -> dict[str, list]:
    m = scrape(client)
    return {
        name: sorted((s.name, tuple(sorted(s.labels.items())), s.value) for s in m[name])
        for name in HISTORY
    }


def made(app, client, user, n: int) -> list[str]:
    ids = [submit_prompt(client, user.headers, f"dress {i}") for i in range(n)]
    for gen_id in ids:
        run_all(app, gen_id)
    return ids


def roll_up(app) -> None:
    services(app).db.transaction(rollup.roll_up)


def rolled(app) -> dict[tuple[str, str], int]:
    with services(app).db.session() as session:
        return {(r.family, r.label): r.count for r in session.query(MetricRollup)}


def count(m: dict, name: str, **labels) -> float:
    [value] = [v for n, lbl, v in m[name] if n == f"{name}_count" and dict(lbl) == labels]
    return value


def test_a_scrape_says_the_same_before_and_after_a_roll_up(app, client, user, monkeypatch):
    monkeypatch.setattr(rollup, "MARGIN", timedelta(0))  # all that finished is behind the mark
    made(app, client, user, 2)
    before = history(client)
    assert count(before, "bff_stage_duration_seconds", stage="generate") == 2
    roll_up(app)
    assert rolled(app)[rollup.STAGES, "generate"] == 2  # the scrape reads it from the rollup
    assert history(client) == before
    roll_up(app)  # nothing new: nothing added twice
    assert history(client) == before

    [third] = made(app, client, user, 1)  # after the mark: read live, added to the rollup
    after = history(client)
    assert count(after, "bff_stage_duration_seconds", stage="generate") == 3
    roll_up(app)
    assert history(client) == after and rolled(app)[rollup.STAGES, "generate"] == 3

    assert client.delete(f"/api/generate/{third}", headers=user.headers).status_code == 204
    assert history(client) == after  # counters do not go down


def test_what_finished_within_the_margin_is_left_to_the_next_roll_up(app, client, user):
    made(app, client, user, 1)
    roll_up(app)
    assert rolled(app) == {}  # finished a moment ago: a commit could still land behind it
    assert count(history(client), "bff_stage_duration_seconds", stage="store") == 1


def test_what_finished_since_the_mark_is_found_through_indexes(pg_app):
    engine = pg_app.extensions["bff"].db.engine

    def live() -> None:
        with services(pg_app).db.session() as session:
            since = rollup.utcnow() - timedelta(minutes=5)
            rollup.window(session, since, None)
            session.rollback()

    statements = selects_run_by(engine, live)
    assert len(statements) == 4  # two histograms, the retries, the cost
    for statement, _, plan in plans(engine, statements):
        assert_no_table_read_whole(plan, {"generation_stages", "charges"}, statement)


def test_a_beat_whose_clock_is_behind_never_moves_the_mark_back(app, client, user, monkeypatch):
    monkeypatch.setattr(rollup, "MARGIN", timedelta(0))
    made(app, client, user, 1)
    roll_up(app)
    before = history(client)
    monkeypatch.setattr(rollup, "MARGIN", timedelta(hours=1))  # its now is an hour ago
    roll_up(app)
    monkeypatch.setattr(rollup, "MARGIN", timedelta(0))
    roll_up(app)
    assert history(client) == before and rolled(app)[rollup.STAGES, "generate"] == 1


def test_metrics_say_when_beat_last_ran(app, client):
    assert scrape(client)["bff_maintenance_last_run_timestamp_seconds"] == []
    started = rollup.utcnow().timestamp()
    roll_up(app)
    [sample] = scrape(client)["bff_maintenance_last_run_timestamp_seconds"]
    assert sample.labels == {"job": rollup.NAME} and sample.value >= started - 1
