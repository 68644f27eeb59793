"""Stage 2, ``enhance``: spec or prompt -> a fashion-photography prompt package,
from the offline templates (``templates.py``) or, with ``OPENAI_API_KEY``, an
LLM (``enhance_llm.py``; on any LLM failure the templates run and the
fallback is recorded). The designer's words lead, and the prompt is fitted
to the strictest length among the providers that could serve the request.
``settings.enhance: "off"`` passes the designer's words on as written.
"""

from __future__ import annotations

from typing import Any

from app.domain.models import Generation
from app.pipeline import llm
from app.pipeline.context import StageContext, StageResult
from app.pipeline.enhance_llm import build_package_llm
from app.pipeline.route import prompt_budget, routing_request
from app.pipeline.subject import resolve
from app.pipeline.templates import build_package

OFF_REASON = "settings.enhance is off: the designer's prompt is passed on as written"


def passes_through(gen: Generation) -> bool:
    """Whether the designer asked for the prompt as written (``enhance: off``)."""
    return (gen.settings or {}).get("enhance", "auto") == "off"


def pass_through(prompt: str | None, record: dict[str, Any] | None, negative: str | None) -> dict:
    """The package under ``enhance: off``: the words unchanged, nothing added."""
    text = prompt or (record or {}).get("promptText") or ""
    reason = OFF_REASON if prompt else f"{OFF_REASON} (no words: the photo's description)"
    return {
        "mainPrompt": text,
        "negativePrompt": negative or "",
        "keywords": [],
        "photographyStyle": None,
        "templateId": None,
        "trimmed": [],
        "subject": resolve(prompt, record).as_json(),
        "overridden": [],
        "engine": "off",
        "passedThrough": True,
        "reason": reason,
    }


def run(ctx: StageContext) -> StageResult:
    gen = ctx.generation
    spec = ctx.output_of("analyze").get("spec") or ctx.output_of("input").get("vltSpec")
    record = (spec or {}).get("records", [None])[0]
    budget = prompt_budget(routing_request(gen.settings or {}), ctx.settings)
    inputs = {
        "prompt": gen.prompt,
        "negativePrompt": gen.negative_prompt,
        "spec": bool(record),
        "promptLimit": budget,
    }
    if passes_through(gen):
        return StageResult(
            {**pass_through(gen.prompt, record, gen.negative_prompt), "inputs": inputs}
        )
    args = (gen.prompt, record, gen.negative_prompt, budget["maxLength"])
    fallback = None
    if llm.available(ctx.settings):
        try:
            return StageResult({**build_package_llm(ctx.settings, *args), "inputs": inputs})
        except llm.LLMError as exc:
            fallback = {"from": "openai-chat", "reason": str(exc)}
    out = {**build_package(*args), "inputs": inputs}
    if fallback:
        out["fallback"] = fallback
    return StageResult(out)
