"""The OpenAI chat/vision client ``analyze`` and ``enhance`` use when
``OPENAI_API_KEY`` is set: one call shape (a system prompt, the user's
content, a strict JSON schema as ``response_format``), the answer validated
by the caller and asked for once more when invalid. Every failure is an
``LLMError`` (``LLMCallFailed``: the API erred or was unreachable, after the
SDK's own retries; ``LLMInvalidOutput``: no valid answer twice), and the
caller falls back to its offline engine.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai
from PIL import Image

from app.platform.config import Settings
from app.providers.openai_images import error_message

T = TypeVar("T")
INVALID_RETRIES = 1
SDK_RETRIES = 2
# A host that drops our packets is told in seconds, not BFF_LLM_TIMEOUT: the
# SDK makes its attempts each with the whole timeout (3 x 30 s, ~100 s).
CONNECT_TIMEOUT = 5.0
IMAGE_SIDE = 1024  # vision models downscale anyway; smaller requests are faster
# After the API failed to answer (unreachable, timed out, 5xx or 429 once the
# SDK's retries were spent), this process asks it nothing for OUTAGE_PAUSE
# seconds: through an outage every analyze and enhance would otherwise wait
# up to three times BFF_LLM_TIMEOUT before its offline engine answered.
OUTAGE_PAUSE = 60.0
_outages: dict[str, tuple[float, str]] = {}  # API base URL -> (when it failed, why)


class LLMError(Exception):
    pass


class LLMCallFailed(LLMError):
    pass


class LLMInvalidOutput(LLMError):
    pass


@dataclass
class LLMAnswer:
    value: Any
    model: str
    attempts: int
    usage: dict[str, int] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)  # why earlier answers were rejected

    def meta(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "attempts": self.attempts,
            "usage": self.usage,
            **({"rejectedAnswers": self.invalid} if self.invalid else {}),
        }


def available(settings: Settings) -> bool:
    return bool(settings.openai_api_key)


def client(settings: Settings) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,  # None: the SDK's own default / env
        timeout=openai.Timeout(
            settings.llm_timeout_s, connect=min(CONNECT_TIMEOUT, settings.llm_timeout_s)
        ),
        max_retries=SDK_RETRIES,
    )


def image_data_url(data: bytes) -> str:
    """The image as a JPEG data URL no larger than ``IMAGE_SIDE`` on its long edge."""
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (2 * IMAGE_SIDE, 2 * IMAGE_SIDE))  # a JPEG decodes at a fraction of its size
    img = img.convert("RGB")
    img.thumbnail((IMAGE_SIDE, IMAGE_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def user_content(text: str, image: bytes) -> list[dict[str, Any]]:
    return [
        {"type": "text", "text": text},
        {"type": "image_url", "image_url": {"url": image_data_url(image), "detail": "low"}},
    ]


def _outage(exc: openai.APIError) -> bool:
    """The API did not answer, not: it refused this request (a bad key, a bad body)."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError)  # timeouts too


def forget_outages() -> None:
    """Ask the API again at the next call (tests; a process told the API is back)."""
    _outages.clear()


def _describe(exc: openai.APIError) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"OpenAI API error {exc.status_code}: {error_message(exc)}"
    if isinstance(exc, openai.APITimeoutError):
        return "OpenAI API timed out"
    return f"OpenAI API unreachable: {exc}"


def chat_json(
    settings: Settings,
    *,
    system: str,
    content: str | list[dict[str, Any]],
    schema_name: str,
    schema: dict[str, Any],
    validate: Callable[[Any], T],
) -> LLMAnswer:
    """Ask for a JSON document matching ``schema``; return ``validate(doc)``.

    ``validate`` raises (ValueError, pydantic's ValidationError …) on an
    answer it will not accept; that answer is asked for once more.
    """
    where = settings.openai_base_url or ""
    if (outage := _outages.get(where)) and (ago := time.monotonic() - outage[0]) < OUTAGE_PAUSE:
        raise LLMCallFailed(f"not asked: {outage[1]} {ago:.0f} s ago (paused {OUTAGE_PAUSE:.0f} s)")
    api = client(settings)
    answer = LLMAnswer(value=None, model=settings.llm_model, attempts=0)
    for _ in range(1 + INVALID_RETRIES):
        answer.attempts += 1
        try:
            completion = api.chat.completions.create(
                model=settings.llm_model,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": content},
                ],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": schema_name, "schema": schema, "strict": True},
                },
                temperature=0.2,
            )
        except openai.APIError as exc:
            if _outage(exc):
                _outages[where] = (time.monotonic(), _describe(exc))
            raise LLMCallFailed(_describe(exc)) from exc
        answer.model = completion.model or answer.model
        if completion.usage is not None:
            answer.usage = {
                "promptTokens": completion.usage.prompt_tokens,
                "completionTokens": completion.usage.completion_tokens,
            }
        choice = completion.choices[0] if completion.choices else None
        text = choice.message.content if choice and choice.message else None
        try:
            if not text:
                raise ValueError(
                    f"empty answer (finish_reason={choice.finish_reason if choice else None})"
                )
            answer.value = validate(json.loads(text))
            return answer
        except Exception as exc:  # anything the validator refuses: ask once more
            answer.invalid.append(f"{type(exc).__name__}: {str(exc)[:300]}")
    raise LLMInvalidOutput(
        f"{schema_name}: no valid answer after {answer.attempts} attempts ({answer.invalid[-1]})"
    )
