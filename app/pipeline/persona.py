"""Stage 3, ``persona``: blend in the user's best-matching saved style.

    score = 0.75 x TF-IDF cosine + 0.25 x palette overlap

An explicit ``personaId`` wins, else the best score if it reaches
``THRESHOLD``; keywords that contradict the designer's words are not
injected. Rules and examples: docs/judgement.md, "Personas".
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from sqlalchemy import select

from app.domain.models import Persona
from app.pipeline.context import StageContext, StageResult
from app.pipeline.enhance import OFF_REASON, passes_through
from app.pipeline.subject import conflicts, subject_of

THRESHOLD = 0.12
MAX_INJECTED = 5
COSINE_WEIGHT, PALETTE_WEIGHT = 0.75, 0.25
STOP = frozenset(
    "a an and at by for from in into of on or the to with without very style look".split()
)


def tokens(text: str) -> list[str]:
    return [t for t in re.findall(r"[a-z][a-z-]+", text.lower()) if t not in STOP]


def persona_tokens(p: Persona) -> list[str]:
    return tokens(" ".join([*p.keywords, p.aesthetic or "", p.description or ""]))


def tfidf_cosines(query: list[str], docs: dict[str, list[str]]) -> dict[str, float]:
    """Cosine of each doc's TF-IDF vector with the query's (smoothed IDF)."""
    corpus = [query, *docs.values()]
    n = len(corpus)
    df = Counter(t for doc in corpus for t in set(doc))
    idf = {t: math.log((1 + n) / (1 + d)) + 1 for t, d in df.items()}

    def vector(doc: list[str]) -> dict[str, float]:
        return {t: c * idf[t] for t, c in Counter(doc).items()}

    def norm(v: dict[str, float]) -> float:
        return math.sqrt(sum(x * x for x in v.values()))

    q = vector(query)
    out = {}
    for key, doc in docs.items():
        d = vector(doc)
        denom = norm(q) * norm(d)
        out[key] = sum(q[t] * d.get(t, 0.0) for t in q) / denom if denom else 0.0
    return out


def names_colour(text: str, colour: str) -> bool:
    return re.search(rf"(?<![a-z]){re.escape(colour.lower())}(?![a-z])", text.lower()) is not None


def palette_overlap(text: str, palette: list[str]) -> float:
    return sum(names_colour(text, c) for c in palette) / len(palette) if palette else 0.0


def match(
    prompt: str, personas: list[Persona], explicit_id: str | None, words: str = ""
) -> dict[str, Any]:
    """The persona to blend into ``prompt``; ``words``: the designer's own."""
    cosines = tfidf_cosines(tokens(prompt), {p.id: persona_tokens(p) for p in personas})
    detail = {
        p.id: {
            "cosine": round(cosines[p.id], 4),
            "palette": round(palette_overlap(prompt, p.palette), 4),
        }
        for p in personas
    }
    scores = {
        pid: round(COSINE_WEIGHT * d["cosine"] + PALETTE_WEIGHT * d["palette"], 4)
        for pid, d in detail.items()
    }
    best = max(personas, key=lambda p: (scores[p.id], p.is_default))
    chosen = next((p for p in personas if p.id == explicit_id), None)
    if chosen is not None:
        reason = "explicit personaId"
    elif explicit_id:
        reason = f"requested persona {explicit_id} no longer exists; nothing blended"
    elif scores[best.id] >= THRESHOLD:
        chosen, reason = best, f"best match ({scores[best.id]} >= {THRESHOLD})"
    else:
        reason = f"best match {best.name!r} scored {scores[best.id]} < {THRESHOLD}: nothing blended"
    # A keyword naming another garment, colour, material or pattern than the
    # designer's words do would override them: it is left out.
    said = subject_of(words)
    missing = [k for k in (chosen.keywords if chosen else []) if k.lower() not in prompt.lower()]
    conflicting = [k for k in missing if conflicts(k, said)]
    injected = [k for k in missing if k not in conflicting]
    return {
        "personaId": chosen.id if chosen else None,
        "personaName": chosen.name if chosen else None,
        "matchScore": scores[chosen.id] if chosen else None,
        "injectedKeywords": injected[:MAX_INJECTED],
        "skippedKeywords": conflicting,
        "palette": list(chosen.palette) if chosen else [],
        "scores": scores,
        "components": detail,
        "threshold": THRESHOLD,
        "reason": reason,
    }


def run(ctx: StageContext) -> StageResult:
    gen = ctx.generation
    prompt = ctx.output_of("enhance").get("mainPrompt") or gen.prompt or ""
    if passes_through(gen):
        return StageResult(
            {"reason": OFF_REASON, "passedThrough": True, "prompt": prompt}, skipped=True
        )
    personas = ctx.session.scalars(
        select(Persona).where(Persona.user_id == gen.user_id).order_by(Persona.id)
    ).all()
    if not personas:
        return StageResult({"reason": "user has no personas"}, skipped=True)
    result = match(prompt, personas, gen.persona_id, words=gen.prompt or "")
    result["inputs"] = {"personas": len(personas), "requested": gen.persona_id}
    result["prompt"] = (
        prompt + ", " + ", ".join(result["injectedKeywords"])
        if result["injectedKeywords"]
        else prompt
    )
    return StageResult(result)
