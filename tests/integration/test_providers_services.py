"""The real providers' code paths end to end: the Procfile's web, worker and two
generator processes on PostgreSQL + Redis + S3 (moto), the official SDKs against
the fake servers, and the bucket behind a switch we can turn off."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import text

from app import create_app
from tests.conftest import User, make_user
from tests.fakes.openai_images import FakeOpenAIImages
from tests.fakes.replicate import FakeReplicate
from tests.fakes.tcp_switch import TcpSwitch
from tests.integration.helpers import assert_completed_with_png, stage_of, submit, wait_final
from tests.support import procs as P
from tests.support.embedded import BFF
from tests.support.services import free_port, own_redis_db

pytestmark = pytest.mark.services

# BFF_RATE_LIMIT_OPENAI_DALLE3=2/4: 2 tokens, refilled at one every 2 s. Slow
# enough that however a loaded machine spreads the six jobs' arrivals at
# generate, some must wait for a token (at one a second, a spread of 1 s each
# let all six through without a wait, and the test then proved nothing).
DALLE_LIMIT = (2, 4.0)
GENERATORS = ("generator-a", "generator-b")


@dataclass
class ProviderStack:
    base_url: str
    env: dict[str, str]
    procs: dict[str, P.Process]
    app: object
    replicate: FakeReplicate
    openai: FakeOpenAIImages
    bucket: TcpSwitch
    logs: object

    def user(self, name: str) -> User:
        return make_user(self.app, name)

    def start_generators(self) -> None:
        cmd = P.procfile()["generator"]
        for name in GENERATORS:
            named = cmd.replace("generator@", f"{name}@")
            self.procs[name] = P.Process(name, named, self.env, self.logs)
        for name in GENERATORS:
            P.wait_for(lambda n=name: P.worker_ready(self.procs[n]), 60, name)

    def submit(self, user: User, provider: str, negative: str | None = None, **settings) -> str:
        prompt = settings.pop("prompt", "ivory silk slip dress")
        body = {"negativePrompt": negative, "settings": {"provider": provider, **settings}}
        return submit(self.base_url, user.headers, prompt, **body)

    def get(self, user: User, gen_id: str) -> dict:
        return requests.get(f"{self.base_url}/api/generate/{gen_id}", headers=user.headers).json()


@pytest.fixture(scope="module")
def pstack(service_env, tmp_path_factory) -> Iterator[ProviderStack]:
    moto = urlsplit(service_env["R2_ENDPOINT_URL"])
    bucket = TcpSwitch(moto.hostname, moto.port)
    # Our own Redis db (queues): the shared `stack` has no provider keys.
    with (
        own_redis_db() as redis_url,
        FakeReplicate(token="r8_integration") as replicate,
        FakeOpenAIImages(key="sk-integration") as openai,
    ):
        env = {
            **service_env,
            "REDIS_URL": redis_url,
            "R2_ENDPOINT_URL": bucket.url,  # the CDN URL still reaches moto directly
            **P.fake_providers_env(replicate, openai),
            "BFF_RATE_LIMIT_OPENAI_DALLE3": "{}/{}".format(*DALLE_LIMIT),
            "BFF_BROKER_VISIBILITY_TIMEOUT": "8",
            "BFF_STAGE_MAX_ATTEMPTS": "3",
            **P.procfile_env(free_port()),
            "BFF_VAR_DIR": str(tmp_path_factory.mktemp("pvar")),
        }
        logs = tmp_path_factory.mktemp("plogs")
        try:
            with P.running(env, logs, ("web", "worker")) as (base, procs):
                app = create_app(dict(env))
                st = ProviderStack(base, env, procs, app, replicate, openai, bucket, logs)
                st.start_generators()  # into procs: stopped with the rest
                yield st
        finally:
            bucket.close()


@pytest.fixture
def fakes(pstack):
    pstack.replicate.reset()
    pstack.openai.reset()
    pstack.replicate.latency, pstack.openai.latency = 0.6, 0.0
    pstack.bucket.restore()
    return pstack


def wait_for_create(fake: FakeReplicate, n: int = 1, timeout: float = 20) -> None:
    P.wait_for(lambda: fake.creates >= n, timeout, f"{n} prediction(s) to be created")


def test_health_and_bff_providers_check_verify_the_keys(pstack):
    body = requests.get(pstack.base_url + "/health", timeout=10).json()
    assert body["storageBackend"] == "s3"
    for pid in ("google-imagen", "openai-dalle3", "openai-gpt-image"):
        assert body["providers"][pid]["verified"] is True, body["providers"]
    # /health answers anyone: the Replicate account's name is for the operator's CLI.
    assert body["providers"]["google-imagen"]["detail"] == "REPLICATE_API_TOKEN works"

    def check(**env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [BFF, "providers", "check"],
            env={**pstack.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    good = check()
    assert good.returncode == 0, good.stderr
    assert "google-imagen      ok      REPLICATE_API_TOKEN works (account bff-test)" in good.stdout
    bad = check(OPENAI_API_KEY="sk-wrong")
    assert bad.returncode == 1 and "openai-dalle3      FAILED" in bad.stdout, bad.stdout


@pytest.mark.parametrize(
    ("provider", "size", "quality", "count", "cost"),
    [
        ("google-imagen", "portrait", "standard", 2, 0.12),
        ("openai-dalle3", "landscape", "hd", 1, 0.12),
        ("openai-gpt-image", "square", "standard", 2, 0.084),
    ],
)
def test_each_provider_completes_with_assets_in_the_bucket(
    fakes, provider, size, quality, count, cost
):
    user = fakes.user(f"prov-{provider}")
    gen_id = fakes.submit(
        user, provider, size=size, quality=quality, count=count, negative="blurry"
    )
    gen = wait_final(fakes.base_url, user.headers, gen_id, timeout=60)
    assert_completed_with_png(gen, "prompt")
    assert gen["provider"] == provider and len(gen["assets"]) == count
    for asset in gen["assets"]:
        assert asset["url"].startswith(fakes.env["R2_CDN_URL"] + f"/users/{user.id}/")
    assert gen["cost"] == pytest.approx(cost)
    out = stage_of(gen, "generate")["output"]
    assert out["sent"]["negativePromptHandling"]
    if provider == "google-imagen":
        assert fakes.replicate.creates == count, "one paid prediction per image"
        assert out["sent"]["input"]["aspect_ratio"] == "3:4"
        assert stage_of(gen, "generate")["attempts"] == 1, "waiting is not an attempt"
    elif provider == "openai-dalle3":
        assert out["sent"]["size"] == "1792x1024" and out["revisedPrompts"][0]
    else:
        assert out["sent"]["quality"] == "medium" and out["usage"]["total_tokens"] > 0
    with fakes.app.extensions["bff"].db.session() as s:
        total = s.execute(
            text("SELECT total_cost FROM user_generation_stats WHERE user_id = :u"),
            {"u": user.id},
        ).scalar_one()
    assert float(total) == pytest.approx(cost)


@pytest.mark.parametrize(
    ("provider", "inject", "words"),
    [
        ("google-imagen", "safety", "E005"),
        ("openai-dalle3", "content_policy", "safety system"),
    ],
)
def test_a_rejected_prompt_fails_with_the_providers_reason(fakes, provider, inject, words):
    (fakes.replicate if provider == "google-imagen" else fakes.openai).inject(inject)
    user = fakes.user(f"rejected-{provider}")
    gen = wait_final(fakes.base_url, user.headers, fakes.submit(user, provider), timeout=30)
    assert gen["status"] == "failed"
    assert gen["error"]["stage"] == "generate" and words in gen["error"]["message"]
    assert stage_of(gen, "generate")["attempts"] == 1, "a rejection is not retried"


def test_transient_errors_are_retried_then_succeed(fakes):
    fakes.replicate.inject("throttle", seconds=1)
    fakes.openai.inject("server_error")
    user = fakes.user("transient")
    imagen = fakes.submit(user, "google-imagen")
    gpt = fakes.submit(user, "openai-gpt-image")
    for gen_id in (imagen, gpt):
        gen = wait_final(fakes.base_url, user.headers, gen_id, timeout=40)
        assert gen["status"] == "completed", gen
        assert stage_of(gen, "generate")["attempts"] == 2
    assert fakes.replicate.creates == 1 and fakes.replicate.counters["create_attempt"] == 2


def test_persistent_errors_give_up_after_the_configured_attempts(fakes):
    fakes.openai.inject("server_error", times=3)
    user = fakes.user("gives-up")
    gen = wait_final(fakes.base_url, user.headers, fakes.submit(user, "openai-gpt-image"), 40)
    assert gen["status"] == "failed"
    assert "gave up after 3 attempts" in gen["error"]["message"]
    assert len(fakes.openai.bodies) == 3


def test_rate_limit_is_global_across_two_generator_processes(fakes):
    user = fakes.user("rate-limited")
    time.sleep(DALLE_LIMIT[1])  # let the bucket fill up
    ids = [fakes.submit(user, "openai-dalle3") for _ in range(6)]
    for gen_id in ids:
        assert wait_final(fakes.base_url, user.headers, gen_id, timeout=60)["status"] == "completed"
    capacity, per_second = DALLE_LIMIT[0], DALLE_LIMIT[0] / DALLE_LIMIT[1]
    times = sorted(fakes.openai.call_times)
    assert len(times) == 6
    for i, t in enumerate(times):  # never more than the bucket allows since the first call
        allowed = capacity + (t - times[0]) * per_second + 0.5
        assert i + 1 <= allowed, f"call {i + 1} at +{t - times[0]:.2f}s exceeds the limit"
    served = {n: "pipeline.generate" in fakes.procs[n].output() for n in GENERATORS}
    assert all(served.values()), f"both generators took work: {served}"
    # Each waiter reserved the next token, its own: it waited once (twice if its
    # timer fired early), instead of all of them asking again together.
    logs = "".join(fakes.procs[n].output() for n in GENERATORS)
    waits = {
        gen_id: len(re.findall(rf"\[{gen_id} generate\]: Task pipeline\.generate\S* retry:", logs))
        for gen_id in ids
    }
    assert sum(waits.values()) >= 1 and max(waits.values()) <= 2, waits


def test_kill_9_mid_prediction_resumes_it_without_a_second_create(fakes):
    fakes.replicate.latency = 6.0
    user = fakes.user("killed")
    gen_id = fakes.submit(user, "google-imagen")
    wait_for_create(fakes.replicate)
    time.sleep(0.5)  # the id is saved; the stage is polling or waiting on it
    for name in GENERATORS:
        fakes.procs[name].kill()  # SIGKILL: no ack, no cleanup
    for name in GENERATORS:
        fakes.procs[name].stop()
    fakes.start_generators()  # the unacked message is redelivered after the visibility timeout
    gen = wait_final(fakes.base_url, user.headers, gen_id, timeout=60)
    assert gen["status"] == "completed", gen
    assert fakes.replicate.creates == 1, "resumed the stored prediction, no second create"
    assert stage_of(gen, "generate")["output"]["predictions"] == list(fakes.replicate.predictions)


def test_storage_outage_fails_at_store_and_retry_resumes_without_the_provider(fakes):
    user = fakes.user("bucket-down")
    fakes.bucket.down()
    gen_id = fakes.submit(user, "google-imagen")
    gen = wait_final(fakes.base_url, user.headers, gen_id, timeout=60)
    assert gen["status"] == "failed" and gen["error"]["stage"] == "store", gen
    assert "storage unavailable" in gen["error"]["message"]
    assert stage_of(gen, "generate")["output"]["outputs"][0]["url"], "the output reference is kept"
    fakes.bucket.restore()
    resp = requests.post(f"{fakes.base_url}/api/generate/{gen_id}/retry", headers=user.headers)
    assert resp.status_code == 202, resp.text
    gen = wait_final(fakes.base_url, user.headers, gen_id, timeout=40)
    assert_completed_with_png(gen, "prompt")
    assert fakes.replicate.creates == 1, "the retry did not call the provider again"

    # After Replicate deleted the output (one hour), a retry says so clearly.
    fakes.bucket.down()
    late = fakes.submit(user, "google-imagen")
    assert wait_final(fakes.base_url, user.headers, late, timeout=60)["status"] == "failed"
    fakes.replicate.expire_outputs()
    fakes.bucket.restore()
    requests.post(f"{fakes.base_url}/api/generate/{late}/retry", headers=user.headers)
    gen = wait_final(fakes.base_url, user.headers, late, timeout=40)
    assert gen["status"] == "failed" and "expired" in gen["error"]["message"]
    assert fakes.replicate.creates == 2


def test_cancel_mid_prediction_cancels_it_at_replicate(fakes):
    fakes.replicate.latency = 10.0
    user = fakes.user("canceler")
    gen_id = fakes.submit(user, "google-imagen")
    wait_for_create(fakes.replicate)
    P.wait_for(
        lambda: stage_of(fakes.get(user, gen_id), "generate")["status"] == "running",
        10,
        "the generate stage to run",
    )
    resp = requests.post(f"{fakes.base_url}/api/generate/{gen_id}/cancel", headers=user.headers)
    assert resp.status_code == 200 and resp.json()["status"] == "canceled"
    # The request owes the stop; the generator's providers.stop_paid_work makes it.
    P.wait_for(lambda: fakes.replicate.counters["cancel"] == 1, 10, "the generator's cancel")
    [prediction] = fakes.replicate.predictions.values()
    assert fakes.replicate.status(prediction)[0] == "canceled"
    time.sleep(2)  # a waiting run wakes up, sees the cancel and stops
    gen = fakes.get(user, gen_id)
    assert gen["status"] == "canceled" and not gen["assets"]
    assert fakes.replicate.creates == 1
