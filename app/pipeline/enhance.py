"""Stage 2, ``enhance``: spec or prompt -> a fashion-photography prompt package.

Offline engine: four style templates (elegant evening, minimalist modern,
romantic bohemian, dramatic avant-garde), chosen from the spec's aesthetic and
formality or from the prompt's words, with slots for garment, silhouette,
fabric, colours, construction, lighting, composition and quality terms. The
user's own words always lead the prompt. Output:
``{mainPrompt, negativePrompt, keywords, photographyStyle, templateId}``.
"""

from __future__ import annotations

import re
from typing import Any

from .context import StageContext, StageResult

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


def choose_template(text: str, record: dict[str, Any] | None) -> str:
    bag = words(text)
    if record:
        style = record.get("style") or {}
        bag |= words(
            " ".join(
                str(v)
                for v in (
                    style.get("aesthetic"),
                    style.get("formality"),
                    (record.get("fabric") or {}).get("type"),
                )
                if v
            )
        )
    scores = {tid: len(bag & t["triggers"]) for tid, t in TEMPLATES.items()}
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


def fit_prompt(segments: list[str], max_len: int) -> str:
    """Join segments, dropping the lowest-value (last) ones until it fits.
    The first segment is the user's own words and is never dropped."""
    kept = list(segments)
    while len(kept) > 1 and len(", ".join(kept)) > max_len:
        kept.pop()
    return ", ".join(kept)[:max_len]


def build_package(
    prompt: str | None,
    record: dict[str, Any] | None,
    user_negative: str | None = None,
    max_len: int = 5000,
) -> dict[str, Any]:
    text = prompt or (record or {}).get("promptText") or ""
    tid = choose_template(text, record)
    t = TEMPLATES[tid]
    segments = [text.strip()] if text.strip() else []
    if record:
        segments += [p for p in _spec_phrase(record) if p and p.lower() not in text.lower()]
    segments += [t["style"], t["lighting"], t["composition"], *t["terms"], *QUALITY_TERMS]
    negative = ", ".join(x for x in (user_negative, NEGATIVE) if x)
    keywords = sorted(words(" ".join(segments[1:])) - {"and", "with", "the"})[:40]
    return {
        "mainPrompt": fit_prompt(segments, max_len),
        "negativePrompt": negative,
        "keywords": keywords,
        "photographyStyle": t["style"],
        "templateId": tid,
        "engine": "offline-templates",
    }


def run(ctx: StageContext) -> StageResult:
    gen = ctx.generation
    spec = ctx.output_of("analyze").get("spec") or ctx.output_of("input").get("vltSpec")
    record = (spec or {}).get("records", [None])[0]
    return StageResult(build_package(gen.prompt, record, gen.negative_prompt))
