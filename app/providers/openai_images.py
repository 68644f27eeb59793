"""``openai-dalle3`` and ``openai-gpt-image``: ``POST /v1/images/generations``
(and ``POST /v1/images/edits`` with the designer's photo) through the
``openai`` SDK with its retries off (the stage runner counts attempts and
honours ``retry-after-ms`` / ``retry-after``). How our settings map to each
model's: docs/providers.md, "What is sent".

A synchronous call has no id to resume: a worker killed mid-call means the
retry calls again (dall-e-3 images already returned are saved, not asked for
twice).
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai

from app.platform.config import Settings
from app.providers.base import (
    EXTENSIONS,
    ImageOutput,
    ImageRequest,
    Job,
    ProviderRejected,
    ProviderResult,
    ProviderTransient,
)
from app.providers.catalog import ModelEntry
from app.providers.inputs import reference_fields

CONNECT_TIMEOUT = 5.0  # s: a host that drops our packets, told in seconds
POLICY_CODES = ("content_policy_violation", "moderation_blocked")
QUOTA_CODES = ("insufficient_quota", "billing_hard_limit_reached", "billing_not_active")


def _retry_after(headers: Any) -> float | None:
    """OpenAI's ``retry-after-ms``, else the standard ``Retry-After`` (seconds)."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return float(headers[name]) / divisor
        except (KeyError, ValueError):
            continue
    return None


# OpenAI's 401 names the key it refused, partly masked ("sk-proj-ab**...wxyz"):
# its message reaches users (the generation's error), the key's shape must not.
KEY_IN_MESSAGE = re.compile(r"\bsk-[\w*-]+")


def error_message(exc: openai.APIStatusError) -> str:
    """The message of an OpenAI error answer, with any API key in it masked."""
    body = exc.body if isinstance(exc.body, dict) else {}
    return KEY_IN_MESSAGE.sub("sk-…", str(body.get("message") or exc.message))


@contextmanager
def _mapped() -> Iterator[None]:
    """The SDK's exception tree -> ours, in one place."""
    try:
        yield
    except openai.APITimeoutError as exc:
        raise ProviderTransient("OpenAI timed out") from exc
    except openai.APIConnectionError as exc:
        raise ProviderTransient("OpenAI unreachable") from exc
    except openai.APIStatusError as exc:
        status, code, msg = exc.status_code, exc.code or "", error_message(exc)
        if status == 429 and code in QUOTA_CODES:
            raise ProviderRejected(f"OpenAI quota exhausted: {msg}") from exc
        if status in (408, 409, 429) or status >= 500:
            raise ProviderTransient(
                f"OpenAI error {status}: {msg}", _retry_after(exc.response.headers)
            ) from exc
        if status == 401:
            raise ProviderRejected(f"OpenAI refused OPENAI_API_KEY: {msg}") from exc
        if status == 403:
            raise ProviderRejected(f"OpenAI denied access with OPENAI_API_KEY: {msg}") from exc
        if code in POLICY_CODES:
            raise ProviderRejected(f"OpenAI's safety system rejected the prompt: {msg}") from exc
        raise ProviderRejected(f"OpenAI rejected the request ({status}): {msg}") from exc


# The longest one image call may take (gpt-image-1 at high quality takes
# minutes); a generator stopping waits for it (docker-compose.yml's grace).
CALL_TIMEOUT_S = 180.0


@functools.cache
def _client(api_key: str | None, base_url: str | None) -> openai.OpenAI:
    """One client per process and endpoint (each builds a TLS context)."""
    # An image may take minutes to answer; a connection, seconds.
    timeout = openai.Timeout(CALL_TIMEOUT_S, connect=CONNECT_TIMEOUT)
    return openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)


class OpenAIImages:
    """A model of OpenAI's Images API, driven by its catalogue entry: the
    entry's inputs are the call's parameters; ``per_call`` caps ``n``
    (dall-e-3: 1, so each image is a call of its own, saved as it returns);
    an entry with a reference field (gpt-image-1's ``image``) goes to the
    edits endpoint when the request carries the photo."""

    def __init__(self, entry: ModelEntry, settings: Settings, job: Job | None = None) -> None:
        self.entry = entry
        self.id, self.model, self.key_env_var = entry.id, entry.model, entry.key_env_var
        self.capabilities = entry.capabilities
        self.client = _client(settings.openai_api_key, settings.openai_base_url)
        self.job = job or Job()

    @staticmethod
    def verify_key(settings: Settings, model: str | None = None) -> str:
        """A free call that needs the key (the model list)."""
        client = _client(settings.openai_api_key, settings.openai_base_url)
        with _mapped():  # a probe, not an image: seconds, not the calls' minutes
            models = {m.id for m in client.with_options(timeout=10.0).models.list()}
        return "works" if model is None or model in models else f"works, but {model} is not listed"

    def price_for(self, request: ImageRequest) -> float:
        return self.entry.price_for(request)

    def _call(self, params: dict[str, Any], request: ImageRequest) -> Any:
        self.job.acquire()
        refs = {k: r for k, r in reference_fields(self.entry.inputs).items() if k in params}
        with _mapped():
            if not refs:
                return self.client.images.generate(**params)
            # The photo goes as a multipart file, as the SDK sends it (POST /v1/images/edits).
            files = [
                (f"reference-{i}.{EXTENSIONS.get(r.content_type, 'png')}", r.data, r.content_type)
                for i, r in enumerate(request.references)
            ]
            for name, ref in refs.items():
                params = {**params, name: files if ref.many else files[0]}
            return self.client.images.edit(**params)

    def generate(self, request: ImageRequest) -> ProviderResult:
        fields, notes = self.entry.map(request)
        params = {"model": self.model, **fields}
        images = list(self.job.state.get("images") or [])  # URL images already returned
        data: list[bytes] = []
        usage = None
        while len(images) + len(data) < request.count:
            n = min(self.entry.per_call, request.count - len(images) - len(data))
            resp = self._call({**params, "n": n}, request)
            urls, blobs = _outputs(resp)
            data += blobs
            usage = resp.usage.model_dump() if getattr(resp, "usage", None) else usage
            if urls:
                images += urls
                self.job.save({"images": images})  # never ask for these images again
        outputs = [
            ImageOutput(url=i["url"], meta={"revisedPrompt": i["revisedPrompt"]}) for i in images
        ]
        outputs += [ImageOutput(data=d, content_type="image/png") for d in data]
        sent = {k: v for k, v in params.items() if k != "prompt"}
        sent["n"] = min(self.entry.per_call, request.count)
        meta: dict[str, Any] = {}
        if images:
            sent["calls"] = len(images)
            meta["revisedPrompts"] = [i["revisedPrompt"] for i in images]
        if data:
            meta["usage"] = usage
        return ProviderResult(outputs=outputs, sent={**sent, **notes}, meta=meta)


def _outputs(resp: Any) -> tuple[list[dict[str, Any]], list[bytes]]:
    """(URL images with their revised prompts, image bytes) of one answer."""
    urls, blobs = [], []
    for item in resp.data or []:
        if item.url:
            urls.append({"url": item.url, "revisedPrompt": item.revised_prompt})
        elif item.b64_json:
            try:
                blobs.append(base64.b64decode(item.b64_json, validate=True))
            except ValueError as exc:
                raise ProviderRejected("OpenAI returned undecodable image data") from exc
        else:
            raise ProviderRejected("OpenAI returned an image without data")
    if not urls and not blobs:
        raise ProviderRejected("OpenAI returned no image")
    return urls, blobs
