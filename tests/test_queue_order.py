"""Depth first on the Redis broker and the embedded one: a started
generation's next stage is taken before a new generation's first, whatever
order they were sent in; and every stage of a single job before any of a
batch's."""

from __future__ import annotations

import json

import pytest
from celery import Celery

from app.platform.config import Settings
from app.platform.queue import celery_config, dispatch, dispatch_group


@pytest.fixture(params=["redis", "embedded"])
def broker_env(request, tmp_path) -> dict[str, str]:
    """Redis orders by its list per priority, the embedded broker by its
    message files' names (``app.platform.fsbroker``): the same order."""
    env = {"BFF_VAR_DIR": str(tmp_path)}
    if request.param == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    return env


def test_a_later_stage_is_taken_before_an_earlier_sent_first_stage(broker_env):
    settings = Settings.from_env(broker_env)
    app = Celery("order-test")
    app.config_from_object(celery_config(settings))
    assert dispatch(app, "gen_new")  # sent first: its analyze
    assert dispatch(app, "gen_started", "route")  # then a started one's route
    with app.connection_for_read() as conn:
        taken = [conn.default_channel.basic_get("pipeline", no_ack=True) for _ in range(3)]
    heads = [(m.headers["task"], json.loads(m.body)[0][0]) if m else None for m in taken]
    assert heads == [("pipeline.route", "gen_started"), ("pipeline.analyze", "gen_new"), None]
    # Task ids name their generation and stage (log lines, Flower search); the
    # chain's later tasks travel with theirs.
    route = taken[0]
    assert route.headers["id"].startswith("gen_started.route.")
    later = json.loads(route.body)[2]["chain"]
    assert [t["options"]["task_id"].split(".")[:2] for t in reversed(later)] == [
        ["gen_started", "optimize"],
        ["gen_started", "generate"],
        ["gen_started", "store"],
    ]


def test_a_single_jobs_first_stage_is_taken_before_any_stage_of_a_batch(broker_env):
    settings = Settings.from_env(broker_env)
    app = Celery("order-test")
    app.config_from_object(celery_config(settings))
    assert dispatch_group(app, ["gen_b1", "gen_b2"])  # a batch, sent first
    assert dispatch(app, "gen_b3", "optimize", background=True)  # a batch's, far along
    assert dispatch(app, "gen_single")  # then a single job
    with app.connection_for_read() as conn:
        taken = [conn.default_channel.basic_get("pipeline", no_ack=True) for _ in range(5)]
    heads = [(m.headers["task"], json.loads(m.body)[0][0]) if m else None for m in taken]
    assert heads == [
        ("pipeline.analyze", "gen_single"),
        ("pipeline.optimize", "gen_b3"),
        ("pipeline.analyze", "gen_b1"),
        ("pipeline.analyze", "gen_b2"),
        None,
    ]


def test_a_chain_sent_from_a_task_is_its_own_root(redis_url, tmp_path):
    """Maintenance re-sends chains from a task: each chain's tasks still share
    its first task's id as their root (Flower: one tree per generation), not
    the sending task's."""
    settings = Settings.from_env({"REDIS_URL": redis_url, "BFF_VAR_DIR": str(tmp_path)})
    app = Celery("root-test")
    app.config_from_object(celery_config(settings))

    @app.task(name="maintenance.resend")
    def resend() -> None:
        assert dispatch(app, "gen_a", "route") and dispatch(app, "gen_b", "route")

    resend.apply()
    with app.connection_for_read() as conn:
        taken = [conn.default_channel.basic_get("pipeline", no_ack=True) for _ in range(2)]
    for message in taken:
        first = message.headers["id"]
        assert message.headers["root_id"] == first
        later = json.loads(message.body)[2]["chain"]
        assert {t["options"]["root_id"] for t in later} == {first}
