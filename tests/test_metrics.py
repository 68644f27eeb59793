"""/metrics: Prometheus text computed from the database at scrape time."""

from __future__ import annotations

import logging

from prometheus_client.parser import text_string_to_metric_families

from app.domain.models import Generation
from tests.support.pipeline import run_all, submit_prompt


def scrape(client) -> dict[str, list]:
    resp = client.get("/metrics")  # no Authorization: Prometheus scrapes it as is
    assert resp.status_code == 200
    assert resp.mimetype == "text/plain"
    # Each parameter once: Prometheus (Go's mime parser) refuses a repeated one.
    params = [p.split("=")[0].strip() for p in resp.headers["Content-Type"].split(";")[1:]]
    assert sorted(params) == ["charset", "version"], resp.headers["Content-Type"]
    return {fam.name: fam.samples for fam in text_string_to_metric_families(resp.get_data(True))}


def value(samples, name, **labels) -> float:
    hits = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(hits) == 1, (name, labels, samples)
    return hits[0]


def test_metrics_follow_what_happened(app, client, user):
    before = scrape(client)
    assert value(before["bff_database_up"], "bff_database_up") == 1
    assert before["bff_generations"] == []

    done = [submit_prompt(client, user.headers, f"dress {i}") for i in range(2)]
    for gen_id in done:
        run_all(app, gen_id)
    pending = submit_prompt(client, user.headers, "still queued")
    m = scrape(client)
    assert value(m["bff_generations"], "bff_generations", status="completed", provider="local") == 2
    assert value(m["bff_generations"], "bff_generations", status="pending", provider="none") == 1
    cost = m["bff_generation_cost_dollars"]
    assert value(cost, "bff_generation_cost_dollars_total", provider="local") == 0
    # Stage histograms: every finished stage counted, buckets cumulative and consistent.
    stage = m["bff_stage_duration_seconds"]
    assert value(stage, "bff_stage_duration_seconds_count", stage="generate") == 2
    buckets = [s for s in stage if s.name.endswith("_bucket") and s.labels["stage"] == "store"]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and counts[-1] == 2 and buckets[-1].labels["le"] == "+Inf"
    assert value(stage, "bff_stage_duration_seconds_sum", stage="generate") >= 0
    latency = m["bff_provider_latency_seconds"]
    assert value(latency, "bff_provider_latency_seconds_count", provider="local") == 2
    calls = m["bff_provider_calls"]
    assert value(calls, "bff_provider_calls_total", provider="local", outcome="success") == 2
    assert "bff_stage_retries" in m
    assert pending


def finished_with(app, client, user, **stage) -> None:
    """A completed job whose generate stage row is then given ``stage``'s values."""
    gen_id = submit_prompt(client, user.headers)
    run_all(app, gen_id)
    with app.extensions["bff"].db.session() as session:
        for k, v in stage.items():
            setattr(session.get(Generation, gen_id).stage("generate"), k, v)


def test_retries_are_counted(app, client, user):
    finished_with(app, client, user, attempts=3)  # as if two attempts had failed transiently
    m = scrape(client)
    assert value(m["bff_stage_retries"], "bff_stage_retries_total", stage="generate") == 2


def test_a_known_duration_lands_in_its_bucket_in_seconds(app, client, user):
    finished_with(app, client, user, duration_ms=1200)  # 1.2 s
    latency = scrape(client)["bff_provider_latency_seconds"]
    # cumulative: le="1.0" holds durations up to one second
    bucket = {s.labels["le"]: s.value for s in latency if s.name.endswith("_bucket")}
    assert bucket["1.0"] == 0 and bucket["2.5"] == 1 and bucket["+Inf"] == 1
    assert value(latency, "bff_provider_latency_seconds_sum", provider="local") == 1.2


def test_outcomes_of_models_added_to_the_catalogue_are_counted(app, client):
    """The providers table was seeded with the first four models; the
    catalogue has more (flux-pro, nano-banana): their calls count too."""
    from app.providers.health import record_outcome

    with app.extensions["bff"].db.session() as session:
        for ok in (True, True, False):
            record_outcome(session, "flux-pro", ok=ok, error=None if ok else "HTTP 500")
    calls = scrape(client)["bff_provider_calls"]
    assert value(calls, "bff_provider_calls_total", provider="flux-pro", outcome="success") == 2
    assert value(calls, "bff_provider_calls_total", provider="flux-pro", outcome="error") == 1


def test_every_model_has_its_counters_before_its_first_call(client):
    """Zero, not absent: a series that appears with its first call hides that
    call from rate() (and from the ProviderErrors alert of docs/operations.md).
    The seeded providers table lacked flux-pro and nano-banana."""
    from app.providers.catalog import CATALOGUE

    families = scrape(client)
    for pid in CATALOGUE:
        for outcome in ("success", "error"):
            calls = families["bff_provider_calls"]
            assert value(calls, "bff_provider_calls_total", provider=pid, outcome=outcome) == 0
        cost = families["bff_generation_cost_dollars"]
        assert value(cost, "bff_generation_cost_dollars_total", provider=pid) == 0


def test_database_up_agrees_with_health_on_a_schema_behind_the_code(app_config, tmp_path, caplog):
    """The metrics' queries may still work on an older schema while the API's
    do not: up means what /health's database check means."""
    from alembic import command

    from app import create_app
    from app.cli import upgrade_database
    from app.platform.schema import alembic_config

    url = f"sqlite:///{tmp_path / 'behind.db'}"
    upgrade_database(url)
    command.downgrade(alembic_config(url), "-1")
    client = create_app({**app_config, "DATABASE_URL": url}).test_client()
    with caplog.at_level(logging.WARNING, logger="app.api.health"):
        for _ in range(3):  # Prometheus scrapes every 15 s: said once, not each time
            assert value(scrape(client)["bff_database_up"], "bff_database_up") == 0
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("metrics:")]
    assert len(said) == 1 and said[0].startswith("metrics: database failing: database schema at")
    assert client.get("/health").status_code == 503
    upgrade_database(url)
    assert value(scrape(client)["bff_database_up"], "bff_database_up") == 1
