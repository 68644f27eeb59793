"""``openai-dalle3`` and ``openai-gpt-image``: ``POST /v1/images/generations``
through the ``openai`` SDK with its retries off (the stage runner counts
attempts and honours ``retry-after-ms`` / ``retry-after``). How our settings
map to each model's: docs/providers.md, "What is sent".

A synchronous call has no id to resume: a worker killed mid-call means the
retry calls again (dall-e-3 images already returned are saved, not asked for
twice).
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai

from app.platform.config import Settings
from app.providers import pricing
from app.providers.base import (
    ASPECT_RATIOS,
    Capabilities,
    ImageOutput,
    ImageRequest,
    Job,
    ProviderRejected,
    ProviderResult,
    ProviderTransient,
)

POLICY_CODES = ("content_policy_violation", "moderation_blocked")
QUOTA_CODES = ("insufficient_quota", "billing_hard_limit_reached", "billing_not_active")
# dall-e-3 image URLs (exact host: any Azure account could sit under the suffix).
OPENAI_OUTPUT_HOSTS = ("oaidalleapiprodscus.blob.core.windows.net",)


def _retry_after(headers: Any) -> float | None:
    """OpenAI's ``retry-after-ms``, else the standard ``Retry-After`` (seconds)."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return float(headers[name]) / divisor
        except (KeyError, ValueError):
            continue
    return None


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    return str(body.get("message") or exc.message)


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
        status, code, msg = exc.status_code, exc.code or "", _message(exc)
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


def _orientation(aspect_ratio: str) -> str:
    w, h = map(int, aspect_ratio.split(":"))  # one of ASPECT_RATIOS
    return "square" if w == h else "landscape" if w > h else "portrait"


@functools.cache
def _client(api_key: str | None, base_url: str | None) -> openai.OpenAI:
    """One client per process and endpoint (each builds a TLS context)."""
    return openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=180.0)


class _OpenAIImages:
    id: str
    model: str
    key_env_var = "OPENAI_API_KEY"
    output_hosts = OPENAI_OUTPUT_HOSTS
    SIZES: dict[str, str]
    QUALITY: dict[str, str]

    def __init__(self, settings: Settings, job: Job | None = None) -> None:
        self.client = _client(settings.openai_api_key, settings.openai_base_url)
        self.job = job or Job()

    @classmethod
    def verify_key(cls, settings: Settings) -> str:
        """A free call that needs the key (the model list)."""
        with _mapped():
            models = {m.id for m in cls(settings).client.models.list()}
        return "works" if cls.model in models else f"works, but {cls.model} is not listed"

    @classmethod
    def size_for(cls, request: ImageRequest) -> str:
        return cls.SIZES[_orientation(request.aspect_ratio)]

    @classmethod
    def quality_for(cls, request: ImageRequest) -> str:
        return cls.QUALITY.get(request.quality, cls.QUALITY["standard"])

    @classmethod
    def price_for(cls, request: ImageRequest) -> float:
        return pricing.price(cls.id, cls.quality_for(request), cls.size_for(request))

    def _prompt(self, request: ImageRequest) -> tuple[str, dict[str, Any]]:
        prompt, notes = request.prompt, {}
        if request.negative_prompt:
            prompt = f"{prompt}. Avoid: {request.negative_prompt}"
            notes["negativePromptHandling"] = "no negative prompt input: folded into the prompt"
        limit = self.capabilities.max_prompt_length
        if len(prompt) > limit:
            prompt, notes["promptTruncatedFrom"] = prompt[:limit], len(prompt)
        return prompt, notes

    def _call(self, params: dict[str, Any]) -> Any:
        self.job.acquire()
        with _mapped():
            return self.client.images.generate(**params)


class DallE3(_OpenAIImages):
    id = "openai-dalle3"
    model = "dall-e-3"
    capabilities = Capabilities(
        aspect_ratios=ASPECT_RATIOS,
        negative_prompt=False,
        max_prompt_length=4000,
        max_images=4,
        quality_score=0.8,
        typical_latency_s=15.0,
        styles=("natural", "vivid"),
    )
    SIZES = {"square": "1024x1024", "landscape": "1792x1024", "portrait": "1024x1792"}
    QUALITY = {"standard": "standard", "hd": "hd"}

    def generate(self, request: ImageRequest) -> ProviderResult:
        prompt, notes = self._prompt(request)
        params = {
            "model": self.model,
            "prompt": prompt,
            "n": 1,
            "size": self.size_for(request),
            "quality": self.quality_for(request),
            "style": request.style,  # natural (photographic, the default) or vivid
            "response_format": "url",
        }
        images = list(self.job.state.get("images") or [])
        while len(images) < request.count:  # dall-e-3 makes one image per call
            resp = self._call(params)
            item = (resp.data or [None])[0]
            if item is None or not item.url:
                raise ProviderRejected("OpenAI returned no image")
            images.append({"url": item.url, "revisedPrompt": item.revised_prompt})
            self.job.save({"images": images})  # never ask for this image again
        outputs = [
            ImageOutput(url=i["url"], meta={"revisedPrompt": i["revisedPrompt"]}) for i in images
        ]
        sent = {**{k: v for k, v in params.items() if k != "prompt"}, "calls": len(images), **notes}
        return ProviderResult(
            outputs=outputs,
            sent=sent,
            meta={"revisedPrompts": [i["revisedPrompt"] for i in images]},
        )


class GptImage(_OpenAIImages):
    id = "openai-gpt-image"
    model = "gpt-image-1"
    capabilities = Capabilities(
        aspect_ratios=ASPECT_RATIOS,
        negative_prompt=False,
        max_prompt_length=32000,
        max_images=4,
        quality_score=0.9,
        typical_latency_s=30.0,
    )
    SIZES = {"square": "1024x1024", "landscape": "1536x1024", "portrait": "1024x1536"}
    QUALITY = {"standard": "medium", "hd": "high"}

    def generate(self, request: ImageRequest) -> ProviderResult:
        prompt, notes = self._prompt(request)
        params = {
            "model": self.model,
            "prompt": prompt,
            "n": request.count,
            "size": self.size_for(request),
            "quality": self.quality_for(request),
        }
        resp = self._call(params)
        outputs = []
        for item in resp.data or []:
            if not item.b64_json:
                raise ProviderRejected("OpenAI returned an image without data")
            try:
                data = base64.b64decode(item.b64_json, validate=True)
            except ValueError as exc:
                raise ProviderRejected("OpenAI returned undecodable image data") from exc
            outputs.append(ImageOutput(data=data, content_type="image/png"))
        if not outputs:
            raise ProviderRejected("OpenAI returned no image")
        usage = resp.usage.model_dump() if resp.usage is not None else None
        sent = {**{k: v for k, v in params.items() if k != "prompt"}, **notes}
        return ProviderResult(outputs=outputs, sent=sent, meta={"usage": usage})
