"""Stage 4: routing as data over small fake provider classes registered in
PROVIDERS, provider health windows and the circuit breaker."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.domain.bookkeeping import Provider, ProviderOutcome
from app.domain.models import utcnow
from app.pipeline import STAGES
from app.pipeline.context import StageFailed, StageTransient
from app.pipeline.route import WEIGHTS, choose, estimate, prompt_budget, routing_request
from app.platform.config import Settings
from app.providers import PROVIDERS, health, pricing
from app.providers.base import ASPECT_RATIOS, Capabilities
from app.providers.health import (
    WindowStats,
    open_reason,
    recent_window_stats,
    record_outcome,
    window_stats,
)
from tests.support.pipeline import load, run_all, stages_by_name, submit_prompt


def fake_provider(
    pid, *, quality, price, latency, key=None, ratios=ASPECT_RATIOS, max_len=5000, max_images=4
) -> type:
    """A provider class as the registry holds them, declaring only what routing reads."""
    caps = Capabilities(ratios, True, max_len, max_images, quality, latency)
    return type(
        f"Fake{pid.title().replace('-', '')}",
        (),
        {
            "id": pid,
            "model": f"{pid}-v1",
            "key_env_var": key,
            "capabilities": caps,
            "price_for": staticmethod(lambda request, p=price: p),
        },
    )


@pytest.fixture
def providers(monkeypatch):
    """Replace the registry with three fakes: good-and-dear, cheap, fast."""
    for pid in list(PROVIDERS):
        monkeypatch.delitem(PROVIDERS, pid)
    fakes = {
        "hq": fake_provider("hq", quality=0.95, price=0.08, latency=20),
        "cheap": fake_provider("cheap", quality=0.5, price=0.01, latency=10),
        "fast": fake_provider("fast", quality=0.6, price=0.04, latency=2, max_len=400),
    }
    for pid, cls in fakes.items():
        monkeypatch.setitem(PROVIDERS, pid, cls)
    return fakes


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings.from_env({"BFF_VAR_DIR": str(tmp_path)})


def req(**settings) -> dict:
    return routing_request(settings)


@pytest.mark.parametrize(
    "strategy, expected",
    [("balanced", "cheap"), ("quality", "hq"), ("cost", "cheap"), ("speed", "fast")],
)
def test_each_strategy_picks_by_its_weights(providers, settings, strategy, expected):
    out = choose(req(strategy=strategy), settings)
    assert out["provider"] == expected
    assert out["model"] == f"{expected}-v1"
    assert out["strategy"] == strategy
    assert set(out["scores"]) == {"hq", "cheap", "fast"} and out["excluded"] == {}
    assert max(out["scores"], key=out["scores"].get) == expected


def test_balanced_score_is_the_documented_weighted_sum(providers, settings):
    out = choose(req(), settings)
    assert WEIGHTS["balanced"] == dict(
        quality=0.3, suitability=0.25, cost=0.2, speed=0.15, success=0.1
    )
    # hq: quality .95, suitable, dearest (cost 0), slowest (speed .5), no history (1.0)
    assert out["components"]["hq"] == dict(
        quality=0.95, suitability=1, cost=0, speed=0.5, success=1
    )
    assert out["scores"]["hq"] == pytest.approx(0.3 * 0.95 + 0.25 + 0 + 0.15 * 0.5 + 0.1)


def test_providers_without_keys_or_capabilities_are_excluded(providers, settings, monkeypatch):
    monkeypatch.setitem(
        PROVIDERS,
        "keyed",
        fake_provider("keyed", quality=1, price=0, latency=1, key="OPENAI_API_KEY"),
    )
    monkeypatch.setitem(
        PROVIDERS,
        "square-only",
        fake_provider(
            "square-only", quality=0.9, price=0, latency=1, ratios=("1:1",), max_images=1
        ),
    )
    out = choose(req(size="16:9"), settings)
    assert out["excluded"] == {
        "keyed": "OPENAI_API_KEY not configured",
        "square-only": "aspect ratio 16:9 not supported",
    }
    out = choose(req(count=2), settings)
    assert out["excluded"]["square-only"] == "at most 1 images per request"
    with_key = replace(settings, openai_api_key="sk-x")
    assert choose(req(), with_key)["provider"] == "keyed"  # perfect on every component


def test_suitability_penalises_missing_negative_prompt_and_long_prompts(providers, settings):
    request = routing_request({}, negative="blurry", prompt_length=1000)
    parts = choose(request, settings)["components"]
    assert parts["fast"]["suitability"] == 0.6  # 1000 > its 400-character limit
    assert parts["hq"]["suitability"] == 1.0


def test_explicit_provider_wins_and_default_provider_is_preferred(providers, settings):
    assert choose(req(provider="cheap"), settings)["reason"] == "explicitly requested"
    with pytest.raises(StageFailed, match="unknown provider"):
        choose(req(provider="nope"), settings)
    dflt = replace(settings, default_provider="hq")
    out = choose(req(), dflt)
    assert (out["provider"], out["reason"]) == ("hq", "BFF_DEFAULT_PROVIDER")


def test_prompt_budget_is_the_strictest_usable_or_the_requested_limit(providers, settings):
    assert prompt_budget(req(), settings)["maxLength"] == 400
    assert "fast" in prompt_budget(req(), settings)["source"]
    assert prompt_budget(req(provider="hq"), settings)["maxLength"] == 5000


# ---------------------------------------------------------------- health and circuits


def test_failures_in_the_window_open_the_circuit(app, providers):
    s = app.extensions["bff"]
    settings = s.settings
    now = utcnow()
    with s.db.session() as session:
        session.add_all(Provider(id=pid, display_name=pid, model=pid) for pid in ("hq", "cheap"))
        session.flush()
        for i in range(5):  # old failures: outside the 300 s window
            record_outcome(
                session, "hq", ok=False, error="boom", now=now - timedelta(minutes=20 + i)
            )
        for _ in range(4):
            record_outcome(session, "hq", ok=False, error="HTTP 500", now=now)
        record_outcome(session, "hq", ok=True, now=now)
        record_outcome(session, "cheap", ok=True, now=now)
    with s.db.session() as session:
        stats = window_stats(session, settings.circuit_window_s)
        assert stats["hq"] == WindowStats(ok=1, failed=4)
        assert "4 of the last 5 calls failed" in open_reason(stats["hq"], settings)
        assert open_reason(stats["cheap"], settings) is None
        hq, cheap = session.get(Provider, "hq"), session.get(Provider, "cheap")
        assert (hq.success_count, hq.failure_count, hq.last_error) == (1, 9, "HTTP 500")
        assert (cheap.success_count, cheap.failure_count, cheap.last_error) == (1, 0, None)

    out = choose(req(strategy="quality"), settings, stats)
    assert out["provider"] != "hq"
    assert out["excluded"]["hq"].startswith("circuit open")
    assert out["components"]["cheap"]["success"] == 1.0  # (1 + 1) / (1 + 1)

    explicit = choose(req(provider="hq"), settings, stats)
    assert explicit["provider"] == "hq" and "circuit open" in explicit["notes"][0]


def test_all_circuits_open_is_transient_not_fatal(providers, settings):
    broken = {pid: WindowStats(ok=0, failed=9) for pid in providers}
    with pytest.raises(StageTransient, match="no provider available right now"):
        choose(req(), settings, broken)


def test_recent_failures_lower_the_success_component(providers, settings):
    out = choose(req(), settings, {"fast": WindowStats(ok=2, failed=2)})  # below min samples
    assert "fast" not in out["excluded"]
    assert out["components"]["fast"]["success"] == pytest.approx(0.6)


def test_routing_reads_the_window_at_most_once_per_ttl_in_a_process(app, monkeypatch):
    s = app.extensions["bff"]
    window = s.settings.circuit_window_s
    clock = [1000.0]
    monkeypatch.setattr(health, "_clock", lambda: clock[0])
    with s.db.session() as session:
        record_outcome(session, "hq", ok=True)
    with s.db.session() as session:
        assert recent_window_stats(session, window)["hq"] == WindowStats(ok=1, failed=0)
        # Another process's outcome (a row this process did not record) ...
        session.add(ProviderOutcome(provider_id="hq", ok=False, error="x", created_at=utcnow()))
        session.flush()
        # ... is not read again within the TTL ...
        clock[0] += health.WINDOW_TTL / 2
        assert recent_window_stats(session, window)["hq"] == WindowStats(ok=1, failed=0)
        # ... and is once it has passed.
        clock[0] += health.WINDOW_TTL
        assert recent_window_stats(session, window)["hq"] == WindowStats(ok=1, failed=1)


def test_a_failure_recorded_in_the_process_is_routed_on_at_once(app, monkeypatch):
    s = app.extensions["bff"]
    window = s.settings.circuit_window_s
    monkeypatch.setattr(health, "_clock", lambda: 1000.0)  # the TTL never passes
    with s.db.session() as session:
        assert "hq" not in recent_window_stats(session, window)
        record_outcome(session, "hq", ok=False, error="HTTP 500")
        assert recent_window_stats(session, window)["hq"] == WindowStats(ok=0, failed=1)


def test_windows_are_kept_per_database(app_config, sqlite_template, tmp_path, monkeypatch):
    from app import create_app

    monkeypatch.setattr(health, "_clock", lambda: 1000.0)
    shutil.copy(sqlite_template, tmp_path / "other.db")
    one = create_app(app_config).extensions["bff"]
    two = create_app(
        {**app_config, "DATABASE_URL": f"sqlite:///{tmp_path / 'other.db'}"}
    ).extensions["bff"]
    with one.db.session() as session:
        session.add(ProviderOutcome(provider_id="hq", ok=True, created_at=utcnow()))
    for s, expected in ((one, {"hq": WindowStats(ok=1, failed=0)}), (two, {})):
        with s.db.session() as session:
            assert recent_window_stats(session, s.settings.circuit_window_s) == expected


# ---------------------------------------------------------------- API and stage


@pytest.fixture
def dalle(monkeypatch):
    cls = fake_provider(
        "openai-dalle3", quality=0.85, price=0.04, latency=15, key="OPENAI_API_KEY", ratios=("1:1",)
    )
    monkeypatch.setitem(PROVIDERS, "openai-dalle3", cls)
    return cls


def test_explicit_provider_that_cannot_serve_is_a_422_at_submit(app_config, dalle):
    from app import create_app
    from tests.conftest import make_user

    for extra, body_settings, why in (
        ({}, {"provider": "openai-dalle3"}, "OPENAI_API_KEY not configured"),
        (
            {"OPENAI_API_KEY": "sk-x"},
            {"provider": "openai-dalle3", "size": "16:9"},
            "aspect ratio 16:9 not supported",
        ),
    ):
        app = create_app({**app_config, **extra})
        user = make_user(app, f"u{len(extra)}")
        resp = app.test_client().post(
            "/api/generate/from-prompt",
            json={"prompt": "a coat", "settings": body_settings},
            headers=user.headers,
        )
        assert resp.status_code == 422
        err = resp.get_json()["error"]
        assert err["code"] == "provider_unavailable" and why in err["message"]


def test_route_stage_records_its_decision_in_the_generation(app, client, user, dalle):
    gen_id = submit_prompt(client, user.headers, "ivory wool coat", strategy="cost")
    run_all(app, gen_id, STAGES[: STAGES.index("route") + 1])
    body = load(app, gen_id)
    out = stages_by_name(body)["route"]["output"]
    assert body["provider"] == out["provider"] == "local"
    assert body["model"] == "bff-local-v1"
    assert out["strategy"] == "cost"
    assert out["excluded"]["openai-dalle3"] == "OPENAI_API_KEY not configured"
    assert out["inputs"]["promptLength"] > len("ivory wool coat")


def test_auto_prefers_a_keyed_provider_and_keeps_local_as_the_fallback():
    """The contract's default: best available; ``local`` only when no key is set."""
    request, token = routing_request({"strategy": "cost"}), {"REPLICATE_API_TOKEN": "r8_test"}
    assert choose(request, Settings.from_env({}))["provider"] == "local"
    keyed = choose(request, Settings.from_env(token))
    assert PROVIDERS[keyed["provider"]].key_env_var == "REPLICATE_API_TOKEN"  # the cheapest
    assert "fallback" in keyed["excluded"]["local"]
    # Asking for local by name, or making it the default, still gets it.
    named = choose(routing_request({"provider": "local"}), Settings.from_env(token))
    default = choose(request, Settings.from_env({**token, "BFF_DEFAULT_PROVIDER": "local"}))
    assert named["provider"] == default["provider"] == "local"


def test_pruning_runs_at_most_once_a_minute_per_provider(app):
    s = app.extensions["bff"]
    now = utcnow()
    with s.db.session() as session:
        record_outcome(session, "local", ok=True, now=now)  # prunes (first time here)
        record_outcome(session, "local", ok=True, now=now - timedelta(days=2))
        record_outcome(session, "local", ok=True, now=now + timedelta(seconds=30))
    with s.db.session() as session:  # the old row survived: no prune within the minute
        assert session.scalar(select(func.count()).select_from(ProviderOutcome)) == 3
    with s.db.session() as session:
        record_outcome(session, "local", ok=True, now=now + timedelta(seconds=61))
    with s.db.session() as session:
        assert session.scalar(select(func.count()).select_from(ProviderOutcome)) == 3


def test_the_estimate_includes_refining_each_image_on_replicate():
    config = Settings.from_env({"REPLICATE_API_TOKEN": "r8_test"})
    imagen = {"provider": "google-imagen", "count": 2, "quality": "standard"}
    plain, _ = estimate(imagen, config)
    both, _ = estimate({**imagen, "upscale": 2, "removeBackground": True}, config)
    per_image = pricing.price("replicate-real-esrgan", "*") + pricing.price(
        "replicate-background-remover", "*"
    )
    assert both == pytest.approx(plain + 2 * per_image)
    local = {"provider": "local", "count": 2, "upscale": 4, "removeBackground": True}
    assert estimate(local, config) == (0.0, "local")  # refined offline, free
