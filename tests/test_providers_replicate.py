"""The ``google-imagen`` adapter: the real ``replicate`` SDK against the fake
Replicate server over HTTP (in-process)."""

from __future__ import annotations

import time

import pytest

from app.platform.config import Settings
from app.providers import ProviderRejected, ProviderTransient
from app.providers.base import ImageRequest, Job, ProviderPending
from app.providers.catalog import IMAGEN
from app.providers.registry import get_provider
from app.providers.replicate import (
    LOST_AFTER,
    UNKNOWN,
    ReplicateModel,
    cancel_predictions,
    client_for,
)
from tests.conftest import REPLICATE_TOKEN as TOKEN


def settings(fake, token: str = TOKEN) -> Settings:
    return Settings.from_env({"REPLICATE_API_TOKEN": token, "REPLICATE_BASE_URL": fake.url})


def request(**kw) -> ImageRequest:
    return ImageRequest(generation_id="gen_test", prompt="red silk dress", **kw)


def adapter(fake, job: Job | None = None, token: str = TOKEN) -> ReplicateModel:
    return get_provider("google-imagen", settings(fake, token), job or Job())


class Runs:
    """Run ``generate`` as the stage would: again after each wait, counting runs."""

    def __init__(self, fake, job: Job | None = None, token: str = TOKEN) -> None:
        self.fake, self.job, self.token, self.runs = fake, job or Job(poll_every=0.05), token, 0

    def generate(self, req: ImageRequest):
        while True:
            self.runs += 1
            try:
                return adapter(self.fake, self.job, self.token).generate(req)
            except ProviderPending as exc:
                time.sleep(exc.retry_in)


def test_creates_one_prediction_and_returns_its_output_url(fake):
    runs = Runs(fake)
    result = runs.generate(request(aspect_ratio="3:4"))
    assert fake.creates == 1 and runs.runs > 1, "a run never waits: it looks once"
    [out] = result.outputs
    assert out.url.startswith(fake.url + "/files/") and out.url.endswith(".png")
    assert result.sent["input"] == {
        "prompt": "red silk dress",
        "aspect_ratio": "3:4",
        "output_format": "png",
        "image_size": "1K",
        "safety_filter_level": "block_only_high",
    }
    assert runs.job.state["predictions"] == [out.meta["predictionId"]]


def test_hd_asks_for_2k_and_costs_what_the_price_table_says(fake):
    from app.providers import pricing

    hd = request(quality="hd", safety_level="block_medium_and_above")
    sent = Runs(fake).generate(hd).sent["input"]
    assert sent["image_size"] == "2K" and sent["safety_filter_level"] == "block_medium_and_above"
    row = pricing.table().price("google-imagen", "*", "2K")
    assert IMAGEN.price_for(hd) == IMAGEN.price_for(request()) == row.usd == 0.06
    assert row.source == "https://replicate.com/google/imagen-4-ultra" and row.checked


@pytest.mark.parametrize("ratio", ["1:1", "9:16", "16:9", "3:4", "4:3"])
def test_every_aspect_ratio_is_sent_as_is(fake, ratio):
    result = Runs(fake).generate(request(aspect_ratio=ratio))
    assert result.sent["input"]["aspect_ratio"] == ratio


def test_negative_prompt_is_folded_into_the_prompt_and_recorded(fake):
    result = Runs(fake).generate(request(negative_prompt="blurry, text"))
    assert result.sent["input"]["prompt"] == "red silk dress. Avoid: blurry, text"
    assert "negative_prompt" not in result.sent["input"]
    assert "folded" in result.sent["negativePromptHandling"]


def test_saves_the_prediction_id_before_waiting_then_resumes_it(fake):
    saved: list[dict] = []
    job = Job(saver=lambda s: saved.append(dict(s)), poll_every=0.7)
    with pytest.raises(ProviderPending) as exc:
        adapter(fake, job).generate(request())
    assert exc.value.retry_in == 0.7 and "waiting for Replicate prediction" in exc.value.reason
    assert saved and saved[0]["predictions"], "the id was saved before polling"
    # A later run (new adapter, same saved state) resumes instead of creating.
    result = Runs(fake, Job(state=saved[-1], poll_every=0.05)).generate(request())
    assert fake.creates == 1
    assert result.outputs[0].meta["predictionId"] == saved[0]["predictions"][0]


def test_count_makes_one_prediction_per_image(fake):
    result = Runs(fake).generate(request(count=2))
    assert fake.creates == 2 and len(result.outputs) == 2


def test_no_rate_limit_token_means_no_create(fake):
    def no_token() -> None:
        raise ProviderPending(3.0, "waiting for a google-imagen rate-limit token")

    with pytest.raises(ProviderPending):
        adapter(fake, Job(acquire=no_token)).generate(request())
    assert fake.counters["create_attempt"] == 0


def test_throttled_create_is_transient_with_the_reset_time(fake):
    fake.inject("throttle", seconds=7)
    with pytest.raises(ProviderTransient) as exc:
        adapter(fake).generate(request())
    assert exc.value.retry_after == 7.0 and "throttled" in str(exc.value)


def test_server_errors_are_transient_and_not_retried_by_the_sdk(fake):
    fake.inject("server_error")
    with pytest.raises(ProviderTransient):
        adapter(fake).generate(request())
    runs = Runs(fake)
    fake.inject("get_server_error")
    with pytest.raises(ProviderTransient):
        runs.generate(request())
    assert fake.counters["get"] == 1, "the SDK's hidden GET retries are off"
    assert runs.generate(request()).outputs, "the next run resumes"
    assert fake.creates == 1


def test_safety_failure_is_rejected_with_the_providers_reason(fake):
    fake.inject("safety")
    runs = Runs(fake)
    with pytest.raises(ProviderRejected) as exc:
        runs.generate(request())
    assert "E005" in str(exc.value) and "safety" in str(exc.value)
    assert runs.job.state["predictions"] == [] and len(runs.job.state["dropped"]) == 1


def test_aborted_prediction_is_transient_and_the_next_run_starts_a_new_one(fake):
    fake.inject("aborted")
    runs = Runs(fake)
    with pytest.raises(ProviderTransient) as exc:
        runs.generate(request())
    assert "aborted" in str(exc.value)
    assert runs.generate(request()).outputs
    assert fake.creates == 2


def test_a_cancel_answered_aborted_counts_as_answered(fake):
    """Replicate aborted the prediction before our cancel came: its answer
    says so (a status the SDK's model refuses), and no stop stays owed."""
    fake.inject("aborted")
    with pytest.raises(ProviderPending):
        adapter(fake, job := Job()).generate(request())
    [pid] = job.state["predictions"]
    while fake.status(fake.predictions[pid])[0] != "aborted":  # at its start
        time.sleep(0.02)
    client = client_for(TOKEN, fake.url)
    assert cancel_predictions(client, [pid]) == {pid: "aborted"}
    assert cancel_predictions(client, ["p_unknown"]) == {"p_unknown": "gone"}


def test_a_prediction_that_succeeded_without_an_image_is_kept_not_paid_for_again(fake):
    fake.inject("empty")
    job = Job(poll_every=0.05)
    runs = Runs(fake, job)
    with pytest.raises(ProviderRejected, match="succeeded without an image"):
        runs.generate(request())
    kept = job.state["predictions"]
    assert len(kept) == 1 and not job.state.get("dropped")  # billed: a retry reads it again
    with pytest.raises(ProviderRejected, match="succeeded without an image"):
        runs.generate(request())
    assert fake.creates == 1 and job.state["predictions"] == kept


def test_a_canceled_prediction_is_forgotten_and_the_next_run_starts_anew(fake):
    fake.latency, job = 30.0, Job()  # each still running at its first look
    with pytest.raises(ProviderPending):
        adapter(fake, job).generate(request())
    [first] = job.state["predictions"]
    assert adapter(fake).cancel([first]) == 1
    with pytest.raises(ProviderTransient, match="canceled"):
        adapter(fake, job).generate(request())
    assert job.state["predictions"] == [] and job.state["dropped"] == [first]
    with pytest.raises(ProviderPending):  # a new prediction, running
        adapter(fake, job).generate(request())
    assert fake.creates == 2 and job.state["predictions"] not in ([], [first])


def test_a_saved_prediction_replicate_does_not_know_is_forgotten_not_failed_on(fake):
    """A failed job's retry after the operator moved to another account's
    token: its saved prediction is a 404 now, and must not fail every retry.
    A moment's 404 is only looked at again: creating anew would pay twice."""
    job = Job(state={"predictions": ["p_of_another_account"]}, poll_every=0.05)
    with pytest.raises(ProviderPending, match="not found, looking again"):
        adapter(fake, job).generate(request())
    assert fake.creates == 0 and job.state["predictions"] == ["p_of_another_account"]
    first = job.state[UNKNOWN]["p_of_another_account"]  # saved: counts from run to run
    job.state[UNKNOWN]["p_of_another_account"] = first - LOST_AFTER  # a minute of 404s
    with pytest.raises(ProviderTransient, match="does not know prediction"):
        adapter(fake, job).generate(request())
    assert job.state["predictions"] == [] and job.state["dropped"] == ["p_of_another_account"]
    assert Runs(fake, job).generate(request()).outputs
    assert fake.creates == 1


def test_a_prediction_found_again_after_a_404_is_no_longer_counted_unknown(fake):
    """A moment's 404, then found: a later moment's 404 must count from then,
    not from the first (the prediction would be forgotten and paid for twice)."""
    fake.latency, job = 30.0, Job(poll_every=0.05)
    with pytest.raises(ProviderPending):
        adapter(fake, job).generate(request())
    [pid] = job.state["predictions"]
    job.state[UNKNOWN] = {pid: time.time() - 2 * LOST_AFTER}  # a 404 long ago
    with pytest.raises(ProviderPending):  # found: running
        adapter(fake, job).generate(request())
    assert pid not in job.state[UNKNOWN]
    del fake.predictions[pid]  # a 404 now: a moment's, looked at again
    with pytest.raises(ProviderPending, match="not found, looking again"):
        adapter(fake, job).generate(request())
    assert job.state["predictions"] == [pid] and fake.creates == 1


def test_bad_token_is_rejected_naming_the_variable(fake):
    with pytest.raises(ProviderRejected, match="REPLICATE_API_TOKEN"):
        adapter(fake, token="r8_wrong").generate(request())


def test_unreachable_server_is_transient():
    s = Settings.from_env(
        {"REPLICATE_API_TOKEN": TOKEN, "REPLICATE_BASE_URL": "http://127.0.0.1:9"}
    )
    with pytest.raises(ProviderTransient, match="unreachable"):
        get_provider("google-imagen", s, Job()).generate(request())


def test_an_operators_price_file_overrides_rows_without_a_code_change(app_config, tmp_path):
    from app import create_app
    from app.providers import pricing

    override = tmp_path / "prices.toml"
    override.write_text(
        '[[price]]\nprovider = "google-imagen"\nmodel = "google/imagen-4-ultra"\n'
        'size = "2K"\nquality = "*"\nusd = 0.09\nunit = "image"\n'
        'source = "our contract"\nchecked = 2026-12-01\n'
    )
    try:
        create_app({**app_config, "BFF_PRICES_FILE": str(override)})
        assert IMAGEN.price_for(request(quality="hd")) == 0.09
        assert IMAGEN.price_for(request()) == 0.06  # the builtin row still applies
        assert pricing.table().name.startswith(str(override))
    finally:
        pricing.configure(None)
