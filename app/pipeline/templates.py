"""The ``enhance`` stage's offline engine: four style templates chosen from the
spec's style or the prompt's words, with slots for garment, fabric, colours,
construction, lighting, composition and quality terms. The designer's words
lead verbatim (``subject.resolve``); the prompt is fitted to a length limit
by dropping the lowest-value terms first (quality, then template, then spec).
"""

from __future__ import annotations

import re
from typing import Any

from app.pipeline.subject import Resolved, resolve

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


def choose_template(text: str, record: dict[str, Any] | None) -> str:
    sources = _sources(text, record)
    scores = {
        tid: sum(w * len(ws & t["triggers"]) for ws, w in sources) for tid, t in TEMPLATES.items()
    }
    best = max(scores, key=lambda tid: (scores[tid], tid == DEFAULT_TEMPLATE))
    return best if scores[best] > 0 else DEFAULT_TEMPLATE


def _matched(text: str, record: dict[str, Any] | None, tid: str) -> list[str]:
    """The trigger words of template ``tid`` in the prompt and the spec's style."""
    found = set().union(*(ws for ws, _ in _sources(text, record)))
    return sorted(found & TEMPLATES[tid]["triggers"])


def _spec_phrase(record: dict[str, Any]) -> list[str]:
    colors, fabric = record.get("colors") or {}, record.get("fabric") or {}
    cons = record.get("construction") or {}
    colour = " and ".join(c for c in (colors.get("primary"), colors.get("secondary")) if c)
    material = fabric.get("type") if fabric.get("type") != "unspecified" else None
    core = " ".join(x for x in (record.get("silhouette"), colour, material) if x)
    parts = [f"{core} {record.get('garmentType') or 'silhouette'}".strip()] if core else []
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


def package(
    segments: list[str],
    has_user_text: bool,
    negative: str,
    max_len: int,
    resolved: Resolved,
    **extra: Any,
) -> dict[str, Any]:
    """The stage's output for ``segments`` (the designer's words first)."""
    kept = fit_segments(segments, max_len)
    lead = 1 if has_user_text else 0
    out = {
        "mainPrompt": ", ".join(kept)[:max_len],
        "negativePrompt": negative,
        "keywords": kept[lead:],
        "trimmed": segments[len(kept) :],
        "promptLimit": max_len,
        "subject": resolved.as_json(),
        "overridden": resolved.overridden,
        **extra,
    }
    if resolved.overridden:
        said = "; ".join(
            f"{o['field']} {o['words']} (photo: {o['photo']})" for o in out["overridden"]
        )
        out["reason"] = f"{out.get('reason', '')}; your words lead: {said}".lstrip("; ")
    return out


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
    resolved = resolve(prompt, record)
    rec = resolved.record
    text = (prompt or (record or {}).get("promptText") or "").strip()
    tid = choose_template(text, rec)
    matched = _matched(text, rec, tid)
    t = TEMPLATES[tid]
    segments = [text] if text else []
    if rec:
        segments += [p for p in _spec_phrase(rec) if p and p.lower() not in text.lower()]
    segments += [t["style"], t["lighting"], t["composition"], *t["terms"], *QUALITY_TERMS]
    why = (
        f"template {tid}: matched {', '.join(matched)}"
        if matched
        else f"template {tid}: no style words matched, the default"
    )
    return package(
        segments,
        bool(text),
        merge_negative(user_negative, NEGATIVE),
        max_len,
        resolved,
        photographyStyle=t["style"],
        templateId=tid,
        engine="offline-templates",
        reason=why,
    )
