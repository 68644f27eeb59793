"""Replicate webhooks over real services: the Procfile's web, worker and a
generator on PostgreSQL + Redis, the fake Replicate calling the API back.
The look is set far apart (BFF_PROVIDER_POLL_SECONDS=60, taken in hops of
half the stall timeout), so a prompt completion is the webhook's doing."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from app import create_app
from tests.conftest import make_user
from tests.fakes.replicate import FakeReplicate
from tests.integration.helpers import submit, wait_final
from tests.support import procs as P
from tests.support.services import free_port, own_redis_db

pytestmark = pytest.mark.services

HOP = 8.0  # BFF_STALL_TIMEOUT=16: a waiting stage looks again every 8 s at the latest


@pytest.fixture(scope="module")
def stack(service_env, tmp_path_factory) -> Iterator[tuple[str, FakeReplicate, object]]:
    with own_redis_db() as redis_url, FakeReplicate(token="r8_webhooks") as fake:
        env = {
            **service_env,
            "REDIS_URL": redis_url,
            "REPLICATE_API_TOKEN": fake.token,
            "REPLICATE_BASE_URL": fake.url,
            **P.procfile_env(free_port()),
            "BFF_REPLICATE_WEBHOOKS": "on",  # loopback: reachable by the fake
            "BFF_PROVIDER_POLL_SECONDS": "60",
            "BFF_STALL_TIMEOUT": str(2 * HOP),
            "BFF_VAR_DIR": str(tmp_path_factory.mktemp("whvar")),
        }
        with P.running(env, tmp_path_factory.mktemp("whlogs")) as (base, _):
            yield base, fake, make_user(create_app(dict(env)), "webhooks")


def generate(stack, lose: bool) -> tuple[dict, float]:
    base, fake, user = stack
    fake.reset()
    fake.latency, fake.lose_webhooks = 1.0, lose
    start = time.monotonic()
    body = {"settings": {"provider": "google-imagen"}}
    gen_id = submit(base, user.headers, "ivory silk slip dress", **body)
    gen = wait_final(base, user.headers, gen_id, timeout=30)
    return gen, time.monotonic() - start


def test_the_webhook_wakes_the_stage_without_waiting_for_the_look(stack):
    gen, took = generate(stack, lose=False)
    fake = stack[1]
    assert gen["status"] == "completed", gen["error"]
    assert took < HOP - 2, took  # well before the first countdown look
    assert fake.webhook_answers == [200] and fake.creates == 1
    assert fake.create_bodies[0]["webhook_events_filter"] == ["completed"]


def test_a_lost_webhook_is_made_up_for_by_the_countdown_look(stack):
    gen, took = generate(stack, lose=True)
    assert gen["status"] == "completed", gen["error"]
    assert took >= HOP - 1 and stack[1].webhook_answers == []
