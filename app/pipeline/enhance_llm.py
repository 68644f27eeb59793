"""The ``enhance`` stage's LLM engine: a chat model writes the prompt package
from the designer's words and the photo's spec (``llm.chat_json``). The
words are put back in front verbatim if the model lost them, and its
phrases that contradict them are dropped and listed."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.pipeline import llm
from app.pipeline.subject import conflicts, resolve, subject_of
from app.pipeline.templates import TEMPLATES, choose_template, merge_negative, package
from app.pipeline.vlt import strict_object
from app.platform.config import Settings

LLM_SYSTEM = (
    "You are a fashion photography prompt writer for image generation models. Given a "
    "designer's request (their own words and/or a structured garment spec), write one "
    "detailed prompt: garment, silhouette, fabric, colours, construction, lighting, "
    "composition and quality terms, as comma-separated phrases, most important first. "
    "Keep the designer's own words verbatim; where they name a garment, colour or "
    "material it is the one to show, whatever the spec says. Stay within maxLength "
    "characters. Pick the closest templateId. Answer JSON only."
)


class LlmPackage(BaseModel):
    mainPrompt: str = Field(min_length=1, max_length=20000)
    negativePrompt: str = Field("", max_length=5000)
    keywords: list[str] = Field(default_factory=list, max_length=60)
    photographyStyle: str = Field(min_length=1, max_length=300)
    templateId: Literal[tuple(TEMPLATES)]  # type: ignore[valid-type]


_TEXT = {"type": "string"}
PACKAGE_SCHEMA = strict_object(
    {
        "mainPrompt": _TEXT,
        "negativePrompt": _TEXT,
        "keywords": {"type": "array", "items": _TEXT},
        "photographyStyle": _TEXT,
        "templateId": {"type": "string", "enum": list(TEMPLATES)},
    }
)


def _terms_after(text: str, main: str) -> list[str]:
    """The model's terms with the designer's words taken out (they lead anyway)."""
    if text and text.lower() in main.lower():
        i = main.lower().index(text.lower())
        main = main[:i] + main[i + len(text) :]
    terms = [" ".join(p.split()) for p in main.split(",") if p.strip()]
    return [t for t in terms if t.lower() != text.lower()]


def build_package_llm(
    settings: Settings,
    prompt: str | None,
    record: dict[str, Any] | None,
    user_negative: str | None = None,
    max_len: int = 5000,
) -> dict[str, Any]:
    """The LLM engine; raises ``llm.LLMError`` when it gives no valid package."""
    resolved = resolve(prompt, record)
    text = (prompt or (record or {}).get("promptText") or "").strip()
    request = {
        "designerWords": text,
        "garmentSpec": resolved.record,
        "suggestedTemplate": choose_template(text, resolved.record),
        "templates": {tid: t["style"] for tid, t in TEMPLATES.items()},
        "maxLength": max_len,
    }
    answer = llm.chat_json(
        settings,
        system=LLM_SYSTEM,
        content=json.dumps(request),
        schema_name="prompt_package",
        schema=PACKAGE_SCHEMA,
        validate=LlmPackage.model_validate,
    )
    pkg: LlmPackage = answer.value
    said = subject_of(prompt or "")
    terms, dropped = [], []
    for term in _terms_after(text, pkg.mainPrompt):
        (dropped if conflicts(term, said) else terms).append(term)
    return package(
        ([text] if text else []) + terms,
        bool(text),
        merge_negative(user_negative, pkg.negativePrompt),
        max_len,
        resolved,
        photographyStyle=pkg.photographyStyle,
        templateId=pkg.templateId,
        engine="openai-chat",
        reason=f"LLM wrote the prompt (closest template {pkg.templateId})"
        + (f"; dropped phrases contradicting your words: {dropped}" if dropped else ""),
        llm=answer.meta(),
        **({"droppedTerms": dropped} if dropped else {}),
    )
