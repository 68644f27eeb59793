"""Stage 2, ``enhance``: spec or prompt -> a fashion-photography prompt package.

Offline engine: four style templates (elegant evening, minimalist modern,
romantic bohemian, dramatic avant-garde), chosen from the spec's aesthetic and
formality or from the prompt's words, with slots for garment, silhouette,
fabric, colours, construction, lighting, composition and quality terms. The
user's own words always lead the prompt.

With ``OPENAI_API_KEY``: an LLM (``llm.chat_json``, fixed system prompt,
strict JSON schema) writes the package instead; the designer's words are put
back in front verbatim if the model lost them, and on any LLM failure the
template engine runs and the fallback is recorded.

Either way the prompt is fitted to the strictest prompt length among the
providers that could serve the request (or the requested provider's):
lowest-value terms (quality, then template, then spec terms) go first, and
the output records the limit used and what was trimmed. Output:
``{mainPrompt, negativePrompt, keywords, photographyStyle, templateId,
promptLimit, trimmed, engine, reason, inputs}``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.pipeline import llm
from app.pipeline.context import StageContext, StageResult
from app.pipeline.route import prompt_budget, routing_request
from app.platform.config import Settings

TEMPLATES: dict[str, dict[str, Any]] = {
    "elegant-evening": {
        "triggers": {"evening", "gown", "formal", "elegant", "gala", "silk", "satin", "luxury"},
        "style": "luxury editorial fashion photography",
        "lighting": "soft dramatic key light with warm rim light",
        "composition": "full-length shot, model centred, shallow depth of field",
        "terms": ["haute couture", "refined drape", "graceful pose"],
    },
    "minimalist-modern": {
        "triggers": {"minimal", "minimalist", "modern", "clean", "simple", "tailored"},
        "style": "minimalist studio fashion photography",
        "lighting": "even diffused softbox lighting",
        "composition": "clean seamless backdrop, centred full-length frame",
        "terms": ["clean lines", "architectural tailoring", "neutral styling"],
    },
    "romantic-bohemian": {
        "triggers": {"boho", "bohemian", "romantic", "floral", "lace", "flowy", "summer"},
        "style": "romantic natural-light fashion photography",
        "lighting": "golden hour sunlight, gentle lens flare",
        "composition": "outdoor meadow setting, three-quarter shot",
        "terms": ["flowing fabric", "delicate details", "dreamy atmosphere"],
    },
    "dramatic-avant-garde": {
        "triggers": {"avant-garde", "avant", "dramatic", "bold", "sculptural", "edgy", "runway"},
        "style": "high-fashion avant-garde editorial photography",
        "lighting": "hard directional light with deep shadows",
        "composition": "dynamic low angle, bold negative space",
        "terms": ["sculptural silhouette", "striking contrast", "runway styling"],
    },
}
DEFAULT_TEMPLATE = "minimalist-modern"
QUALITY_TERMS = ["highly detailed fabric texture", "professional photography", "8k"]
NEGATIVE = (
    "blurry, low quality, distorted proportions, extra limbs, deformed hands, "
    "watermark, text, logo, cropped garment, oversaturated"
)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z][a-z-]+", text.lower()))


AESTHETIC_WEIGHT = 3  # the spec's stated aesthetic outweighs incidental words


def _sources(text: str, record: dict[str, Any] | None) -> list[tuple[set[str], int]]:
    sources = [(words(text), 1)]
    if record:
        style = record.get("style") or {}
        sources.append((words(str(style.get("aesthetic") or "")), AESTHETIC_WEIGHT))
        others = (style.get("formality"), (record.get("fabric") or {}).get("type"))
        sources.append((words(" ".join(str(v) for v in others if v)), 1))
    return sources


def template_evidence(text: str, record: dict[str, Any] | None) -> dict[str, list[str]]:
    """Trigger words per template found in the prompt and the spec's style."""
    bag = set().union(*(ws for ws, _ in _sources(text, record)))
    return {tid: sorted(bag & t["triggers"]) for tid, t in TEMPLATES.items()}


def template_scores(text: str, record: dict[str, Any] | None) -> dict[str, int]:
    sources = _sources(text, record)
    return {
        tid: sum(w * len(ws & t["triggers"]) for ws, w in sources) for tid, t in TEMPLATES.items()
    }


def choose_template(text: str, record: dict[str, Any] | None) -> str:
    scores = template_scores(text, record)
    best = max(scores, key=lambda tid: (scores[tid], tid == DEFAULT_TEMPLATE))
    return best if scores[best] > 0 else DEFAULT_TEMPLATE


def _spec_phrase(record: dict[str, Any]) -> list[str]:
    colors, fabric = record.get("colors") or {}, record.get("fabric") or {}
    cons = record.get("construction") or {}
    parts = []
    colour = " and ".join(c for c in (colors.get("primary"), colors.get("secondary")) if c)
    garment = " ".join(
        x
        for x in (
            record.get("silhouette"),
            colour,
            fabric.get("type") if fabric.get("type") != "unspecified" else None,
            record.get("garmentType"),
        )
        if x
    )
    parts.append(garment)
    if colors.get("pattern"):
        parts.append(f"{colors['pattern']} pattern")
    if fabric.get("texture") or fabric.get("finish"):
        parts.append(
            " ".join(x for x in (fabric.get("finish"), fabric.get("texture"), "finish") if x)
        )
    parts += [v for v in (cons.get("seams"), cons.get("closure"), cons.get("details")) if v]
    return parts


def fit_segments(segments: list[str], max_len: int) -> list[str]:
    """The segments kept when dropping the lowest-value (last) ones until they
    fit. The first is the user's own words and is never dropped."""
    kept = list(segments)
    while len(kept) > 1 and len(", ".join(kept)) > max_len:
        kept.pop()
    return kept


def fit_prompt(segments: list[str], max_len: int) -> str:
    return ", ".join(fit_segments(segments, max_len))[:max_len]


def _package(
    segments: list[str], has_user_text: bool, negative: str, max_len: int, **extra: Any
) -> dict[str, Any]:
    kept = fit_segments(segments, max_len)
    lead = 1 if has_user_text else 0
    return {
        "mainPrompt": ", ".join(kept)[:max_len],
        "negativePrompt": negative,
        "keywords": kept[lead:],
        "trimmed": segments[len(kept) :],
        "promptLimit": max_len,
        **extra,
    }


def merge_negative(*parts: str | None) -> str:
    seen: list[str] = []
    keys: set[str] = set()
    for part in parts:
        for term in (part or "").split(","):
            term = term.strip()
            if term and (key := term.lower()) not in keys:
                keys.add(key)
                seen.append(term)
    return ", ".join(seen)


def build_package(
    prompt: str | None,
    record: dict[str, Any] | None,
    user_negative: str | None = None,
    max_len: int = 5000,
) -> dict[str, Any]:
    """The offline engine: template slots filled from the spec, fitted to ``max_len``."""
    text = (prompt or (record or {}).get("promptText") or "").strip()
    evidence = template_evidence(text, record)
    tid = choose_template(text, record)
    t = TEMPLATES[tid]
    segments = [text] if text else []
    if record:
        segments += [p for p in _spec_phrase(record) if p and p.lower() not in text.lower()]
    segments += [t["style"], t["lighting"], t["composition"], *t["terms"], *QUALITY_TERMS]
    why = (
        f"template {tid}: matched {', '.join(evidence[tid])}"
        if evidence[tid]
        else f"template {tid}: no style words matched, the default"
    )
    return _package(
        segments,
        bool(text),
        merge_negative(user_negative, NEGATIVE),
        max_len,
        photographyStyle=t["style"],
        templateId=tid,
        engine="offline-templates",
        reason=why,
    )


# ------------------------------------------------------------------ LLM engine

LLM_SYSTEM = (
    "You are a fashion photography prompt writer for image generation models. Given a "
    "designer's request (their own words and/or a structured garment spec), write one "
    "detailed prompt: garment, silhouette, fabric, colours, construction, lighting, "
    "composition and quality terms, as comma-separated phrases, most important first. "
    "Keep the designer's own words verbatim. Stay within maxLength characters. "
    "Pick the closest templateId. Answer JSON only."
)


class LlmPackage(BaseModel):
    mainPrompt: str = Field(min_length=1, max_length=20000)
    negativePrompt: str = Field("", max_length=5000)
    keywords: list[str] = Field(default_factory=list, max_length=60)
    photographyStyle: str = Field(min_length=1, max_length=300)
    templateId: Literal[tuple(TEMPLATES)]  # type: ignore[valid-type]


PACKAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "mainPrompt": {"type": "string"},
        "negativePrompt": {"type": "string"},
        "keywords": {"type": "array", "items": {"type": "string"}},
        "photographyStyle": {"type": "string"},
        "templateId": {"type": "string", "enum": list(TEMPLATES)},
    },
    "required": ["mainPrompt", "negativePrompt", "keywords", "photographyStyle", "templateId"],
    "additionalProperties": False,
}


def build_package_llm(
    settings: Settings,
    prompt: str | None,
    record: dict[str, Any] | None,
    user_negative: str | None = None,
    max_len: int = 5000,
) -> dict[str, Any]:
    """The LLM engine; raises ``llm.LLMError`` when it gives no valid package."""
    text = (prompt or (record or {}).get("promptText") or "").strip()
    request = {
        "designerWords": text,
        "garmentSpec": record,
        "suggestedTemplate": choose_template(text, record),
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
    # The designer's words lead, verbatim, whatever the model did with them.
    rest = pkg.mainPrompt
    if text and text.lower() in rest.lower():
        i = rest.lower().index(text.lower())
        rest = rest[:i] + rest[i + len(text) :]
    terms = [" ".join(p.split()) for p in rest.split(",") if p.strip()]
    segments = ([text] if text else []) + [t for t in terms if t.lower() != text.lower()]
    return _package(
        segments,
        bool(text),
        merge_negative(user_negative, pkg.negativePrompt),
        max_len,
        photographyStyle=pkg.photographyStyle,
        templateId=pkg.templateId,
        engine="openai-chat",
        reason=f"LLM wrote the prompt (closest template {pkg.templateId})",
        llm=answer.meta(),
    )


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
