"""Stage 3, ``persona``: blend in the user's best-matching saved style.

Score = 0.7 x token Jaccard(prompt keywords, persona keywords + aesthetic)
      + 0.3 x palette overlap (share of the persona's palette named in the prompt).
An explicit ``personaId`` always wins; below ``THRESHOLD`` nothing is blended.
Skipped when the user has no personas.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from ..models import Persona
from .context import StageContext, StageResult
from .enhance import words

THRESHOLD = 0.1
MAX_INJECTED = 5


def score(prompt_words: set[str], persona: Persona) -> float:
    kw = words(" ".join([*persona.keywords, persona.aesthetic or ""]))
    jaccard = len(prompt_words & kw) / len(prompt_words | kw) if kw else 0.0
    palette = [p.lower() for p in persona.palette]
    overlap = sum(1 for p in palette if p in prompt_words or p in " ".join(prompt_words))
    return round(0.7 * jaccard + 0.3 * (overlap / len(palette) if palette else 0.0), 4)


def match(prompt: str, personas: list[Persona], explicit_id: str | None) -> dict[str, Any]:
    prompt_words = words(prompt)
    scores = {p.id: score(prompt_words, p) for p in personas}
    chosen = next((p for p in personas if p.id == explicit_id), None)
    reason = "explicit personaId"
    if chosen is None:
        best = max(personas, key=lambda p: (scores[p.id], p.is_default))
        if scores[best.id] >= THRESHOLD:
            chosen, reason = best, "best match"
        else:
            chosen = next((p for p in personas if p.is_default), None)
            reason = "default persona" if chosen else f"no persona scored >= {THRESHOLD}"
    injected = [k for k in (chosen.keywords if chosen else []) if k.lower() not in prompt.lower()]
    return {
        "personaId": chosen.id if chosen else None,
        "matchScore": scores.get(chosen.id) if chosen else None,
        "injectedKeywords": injected[:MAX_INJECTED],
        "scores": scores,
        "reason": reason,
    }


def run(ctx: StageContext) -> StageResult:
    personas = list(
        ctx.session.scalars(
            select(Persona).where(Persona.user_id == ctx.generation.user_id).order_by(Persona.id)
        )
    )
    if not personas:
        return StageResult({"reason": "user has no personas"}, skipped=True)
    prompt = ctx.output_of("enhance").get("mainPrompt", ctx.generation.prompt or "")
    result = match(prompt, personas, ctx.generation.persona_id)
    if result["injectedKeywords"]:
        result["prompt"] = prompt + ", " + ", ".join(result["injectedKeywords"])
    return StageResult(result)
