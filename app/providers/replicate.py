"""Every Replicate model of the catalogue (``google-imagen``, ``flux-pro``,
``nano-banana``, …) through the ``replicate`` SDK, driven by its entry: which
endpoint (official model or a version), which input fields.

One prediction per image. Per run of the stage: for each missing image take
a rate-limit token, create the prediction (``POST /v1/models/{owner}/{name}/
predictions``, or ``POST /v1/predictions`` with ``version``) and save its id
at once; then look once at each (``GET /v1/predictions/{id}``). Still running
means ``ProviderPending``: the worker is freed at once (no sleep on its
thread) and the stage looks again ``job.poll_every`` seconds later. The next
run resumes the saved ids: a retried or redelivered stage pays for no second.

With a public ``BFF_PUBLIC_URL`` (or ``BFF_REPLICATE_WEBHOOKS=on``), each
prediction is created with a webhook (``webhook_events_filter:
["completed"]``): Replicate's call wakes the stage at once, and the countdown
look is only the fallback for a lost webhook.

Errors, mapped once (``replicate_errors``): 429 ("... resets in ~Ns"), 5xx,
timeouts, connection errors are transient; 401/403, 402, 4xx and a safety
failure (E005) rejected in the provider's words. ``aborted``, "interrupted",
``canceled`` (by us) and a minute of 404s drop the prediction: retry anew.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx
import replicate
from replicate.exceptions import ReplicateError

from app.platform.config import Settings
from app.providers.base import (
    ImageOutput,
    ImageRequest,
    Job,
    ProviderPending,
    ProviderRejected,
    ProviderResult,
    ProviderTransient,
    output_urls,
)
from app.providers.catalog import ModelEntry
from app.providers.inputs import content_type_of, reference_fields, upload_file, webhook_args

RUNNING = ("starting", "processing")
LOST = "unknown to Replicate"  # a saved prediction Replicate answers 404 for...
LOST_AFTER = 60.0  # ...this long, from run to run: forgotten (another account's token)
UNKNOWN = "unknown"  # the key of a job's saved state: when each 404 was first seen
SAFETY = re.compile(r"\bE005\b|sensitive|safety|flagged|nsfw", re.IGNORECASE)
INTERRUPTED = re.compile(r"\(code: PA\)|interrupted", re.IGNORECASE)
RESETS_IN = re.compile(r"resets in ~?\s*(\d+(?:\.\d+)?)\s*s", re.IGNORECASE)
READ_TIMEOUT = 30.0  # s for an answer: a prediction's create, a look, a cancel
# Calls a request thread waits on (/health's key check, a webhook's signing
# secret): a probe, not a prediction.
PROBE_TIMEOUT = 10.0


def _detail(exc: ReplicateError) -> str:
    return exc.detail or exc.title or f"HTTP {exc.status}"


@contextmanager
def replicate_errors(what: str) -> Iterator[None]:
    """Replicate's and httpx's exceptions -> our error tree, in one place."""
    try:
        yield
    except ReplicateError as exc:
        status, detail = exc.status or 0, _detail(exc)
        if status == 429:
            m = RESETS_IN.search(detail)
            raise ProviderTransient(
                f"Replicate is rate limiting ({what}): {detail}",
                float(m.group(1)) if m else None,
            ) from exc
        if status >= 500:
            raise ProviderTransient(f"Replicate error {status} ({what}): {detail}") from exc
        if status in (401, 403):
            raise ProviderRejected(
                f"Replicate refused REPLICATE_API_TOKEN ({status}): {detail}"
            ) from exc
        if status == 402:
            raise ProviderRejected(f"Replicate billing problem: {detail}") from exc
        raise ProviderRejected(f"Replicate rejected the request ({status}): {detail}") from exc
    except httpx.TimeoutException as exc:
        raise ProviderTransient(f"Replicate timed out ({what})") from exc
    except httpx.TransportError as exc:
        raise ProviderTransient(f"Replicate unreachable ({what}): {type(exc).__name__}") from exc


@functools.cache
def client_for(
    token: str | None, base_url: str | None, read_timeout: float = READ_TIMEOUT
) -> replicate.Client:
    """One client per process, endpoint and timeout: each builds an httpx
    client and its TLS context, which costs more CPU than a whole look at a
    prediction."""
    client = replicate.Client(
        api_token=token, base_url=base_url, timeout=httpx.Timeout(read_timeout, connect=5.0)
    )
    # The SDK retries GETs on 429/503/504 up to 10 times behind our back;
    # attempts are counted (and backed off) once, by the stage runner.
    transport = getattr(client._client, "_transport", None)
    if hasattr(transport, "max_attempts"):
        transport.max_attempts = 1
    return client


class ReplicateModel:
    """Any Replicate model in the catalogue: an official model (``POST
    /v1/models/{owner}/{name}/predictions``) or a versioned community model
    (``POST /v1/predictions`` with ``version``); its entry says which, and how
    our request maps onto the model's inputs."""

    def __init__(self, entry: ModelEntry, settings: Settings, job: Job | None = None) -> None:
        self.entry = entry
        self.id, self.model, self.key_env_var = entry.id, entry.model, entry.key_env_var
        self.capabilities = entry.capabilities
        self.client = client_for(settings.replicate_api_token, settings.replicate_base_url)
        self.job = job or Job()
        self.webhook_url = settings.replicate_webhook_url

    def price_for(self, request: ImageRequest) -> float:
        return self.entry.price_for(request)

    def inputs(self, request: ImageRequest) -> dict[str, Any]:
        """Only fields the model's schema accepts (reference images described,
        not inlined), plus notes on what we changed."""
        fields, notes = self.entry.map(request)
        return {"input": fields, **notes}

    def _create(self, request: ImageRequest, fields: dict[str, Any]) -> Any:
        """One prediction. Reference images go as file objects: the SDK uploads
        each (``POST /v1/files``) and sends its URL, as Replicate's clients do."""
        payload = dict(fields)
        for name, ref in reference_fields(self.entry.inputs).items():
            if name in payload:
                files = [upload_file(r, i) for i, r in enumerate(request.references)]
                payload[name] = files if ref.many else files[0]
        target = (
            {"version": self.entry.version}
            if self.entry.api == "replicate-versioned"
            else {"model": self.entry.model}
        )
        with replicate_errors("create"):
            webhook = webhook_args(self.webhook_url, request.generation_id)
            return self.client.predictions.create(**target, input=payload, **webhook)

    def generate(self, request: ImageRequest) -> ProviderResult:
        sent = self.job.state.get("sent") or self.inputs(request)
        ids = list(self.job.state.get("predictions") or [])
        while len(ids) < request.count:
            self.job.acquire()  # ProviderPending when no token: ids so far are saved
            prediction = self._create(request, sent["input"])
            ids.append(prediction.id)
            self.job.save({"predictions": ids, "sent": sent})  # before waiting on it
        keyed, models = {pid: pid for pid in ids}, dict.fromkeys(ids, self.model)
        finished = look_once(self.client, self.job, keyed, models, lambda k: list(k.values()))
        outputs = []
        for pid in ids:
            for url in output_urls(finished[pid].get("output")):
                meta = {"predictionId": pid}
                outputs.append(ImageOutput(url=url, content_type=content_type_of(url), meta=meta))
        metrics = {pid: finished[pid].get("metrics") or {} for pid in ids}
        return ProviderResult(
            outputs=outputs, sent=sent, meta={"predictions": ids, "metrics": metrics}
        )

    @staticmethod
    def verify_key(settings: Settings) -> str:
        """A free call that needs the token (Replicate's account endpoint)."""
        client = client_for(
            settings.replicate_api_token, settings.replicate_base_url, PROBE_TIMEOUT
        )
        with replicate_errors("account"):
            account = client.accounts.current()
        return f"works (account {account.username})"

    def cancel(self, prediction_ids: list[str]) -> int:
        return len(cancel_predictions(self.client, prediction_ids))


def cancel_predictions(client: replicate.Client, prediction_ids: list[str]) -> dict[str, str]:
    """Best effort: cancel running predictions; the status each one answered
    with, by id (``succeeded``: the cancel came too late, it was paid for;
    ``gone``: refused for good, e.g. unknown). One Replicate did not answer
    (down, slow) is left out: ask again."""
    answered = {}
    for pid in prediction_ids:
        try:
            answered[pid] = _raw(client, "POST", f"/v1/predictions/{pid}/cancel")["status"]
        except ReplicateError as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                answered[pid] = "gone"
        except Exception:  # noqa: BLE001 - best effort; the stage guard stops us anyway
            pass
    return answered


PAID = "paid"  # the key of a job's saved state listing the predictions recorded as paid


def look_once(
    client: replicate.Client,
    job: Job,
    ids: dict[str, str],
    models: Mapping[str, str],
    saved: Callable[[dict[str, str]], Any],
) -> dict[str, dict[str, Any]]:
    """One look at each prediction of ``ids`` (key -> prediction id; its
    model's name in ``models``): the JSON of each, by key, once all
    succeeded; ``ProviderPending`` while any still runs (the stage looks
    again later; the worker is freed now). A dead one is forgotten (taken out
    of ``ids`` and of the job's saved ``predictions``, as ``saved`` shapes
    them), so a retry starts it anew, and its error raised. One that
    succeeded without an image is kept: it was paid for, and a retry reads
    it again rather than pay for another."""
    done: dict[str, dict[str, Any]] = {}
    running, paid = [], list(job.state.get(PAID) or [])
    for key, pid in list(ids.items()):
        data = _read(client, pid)
        status = _known(job, pid, data.get("status"))
        if status == LOST and _unknown_for(job, pid) < LOST_AFTER:
            running.append(f"{pid} not found, looking again")  # a moment's 404 pays nothing twice
        elif status in RUNNING:
            running.append(f"{pid} {status}")
        elif status == "succeeded":
            if pid not in paid:  # (recorded once; a wait saves which were)
                job.paid(key, data)  # before anything else can go wrong
                paid.append(pid)
            if not output_urls(data.get("output")):
                raise ProviderRejected(f"Replicate prediction {pid} succeeded without an image")
            done[key] = data
        else:
            del ids[key]
            job.save({"predictions": saved(ids), "dropped": [*job.state.get("dropped", []), pid]})
            raise _dead(models.get(key, "the model"), pid, status, str(data.get("error") or ""))
    if running:
        reason = "waiting for Replicate prediction " + ", ".join(running)
        raise ProviderPending(job.poll_every, reason, {PAID: paid})
    return done


def _known(job: Job, pid: str, status: str) -> str:
    """``status``; a prediction found again is no longer counted unknown."""
    since = job.state.get(UNKNOWN) or {}
    if status != LOST and pid in since:
        job.save({UNKNOWN: {k: v for k, v in since.items() if k != pid}})
    return status


def _unknown_for(job: Job, pid: str) -> float:
    """Seconds Replicate has answered 404 for ``pid``, from the first (noted
    in the job's saved state, so it counts across runs)."""
    since = dict(job.state.get(UNKNOWN) or {})
    if pid not in since:
        job.save({UNKNOWN: {**since, pid: time.time()}})
    return time.time() - since.get(pid, time.time())


def _read(client: replicate.Client, pid: str) -> dict[str, Any]:
    """A prediction's JSON; status ``LOST`` when Replicate does not know it (404)."""
    with replicate_errors("poll"):
        try:
            return _raw(client, "GET", f"/v1/predictions/{pid}")
        except ReplicateError as exc:
            if exc.status == 404:
                return {"status": LOST}
            raise


def _raw(client: replicate.Client, method: str, path: str) -> dict[str, Any]:
    """A prediction's raw JSON, not the SDK's model: SDK 1.0.7 refuses status
    "aborted" (a ValidationError), for a read and a cancel's answer alike."""
    return client._request(method, path).json()


def _dead(model: str, pid: str, status: str | None, error: str) -> Exception:
    """What a prediction that ended without succeeding means for the stage."""
    if status == LOST:  # for a minute: a retry would meet it for ever
        return ProviderTransient(f"Replicate does not know prediction {pid}: starting a new one")
    if status == "aborted" or (status == "failed" and INTERRUPTED.search(error)):
        # Never ran, or interrupted by Replicate (not billed): try again.
        return ProviderTransient(f"Replicate prediction {pid} {status}: {error or 'not run'}")
    if status == "failed" and SAFETY.search(error):
        return ProviderRejected(f"{model}'s safety filter blocked the request: {error}")
    if status == "failed":
        return ProviderRejected(f"{model} failed: {error or 'no reason given'}")
    if status == "canceled":
        # By us (a cancel, a timeout, a stage failed for good): the user's
        # retry starts a new prediction rather than fail on this one.
        return ProviderTransient(f"Replicate prediction {pid} was canceled: starting a new one")
    return ProviderRejected(f"Replicate prediction {pid} ended with unknown status {status!r}")
