"""Stage 5, ``optimize``: feedback-driven prompt optimisation.

Tokens are the prompt's comma-separated terms, lower-cased. Each user has a
score per token (start 0.5) in ``prompt_token_scores``. Feedback moves the
scores of the tokens a generation's final prompt used by an exponential
moving average toward the feedback's reward (alpha 0.1; exploratory tokens
count 1.5x): outlier 1.0, heart 0.9, rating r -> (r - 1) / 4, comment none.

At generation time a random generator seeded from the generation id decides:
80 % exploit (add the user's best learnt tokens not yet present), 20 %
explore (add one or two terms from other templates). Tokens scoring below
0.3 move to the negative prompt. Re-running the stage gives the same prompt.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..models import Generation, GenerationFeedback, PromptTokenScore, utcnow
from .context import StageContext, StageResult
from .enhance import TEMPLATES, fit_prompt

ALPHA = 0.1
EXPLORE_WEIGHT = 1.5
EXPLORE_RATE = 0.2
START = 0.5
GOOD, BAD = 0.6, 0.3
EXPLOIT_BUDGET = 3
REWARDS = {"outlier": 1.0, "heart": 0.9}


def tokens(prompt: str) -> list[str]:
    seen: list[str] = []
    for part in prompt.split(","):
        t = " ".join(part.lower().split())
        if t and len(t) <= 80 and t not in seen:
            seen.append(t)
    return seen


def reward_of(feedback_type: str, rating: int | None) -> float | None:
    if feedback_type == "rating" and rating is not None:
        return (rating - 1) / 4
    return REWARDS.get(feedback_type)


def _rng(generation_id: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(generation_id.encode()).digest()[:8]))


def optimize(
    generation_id: str,
    prompt: str,
    negative: str,
    scores: dict[str, float],
    user_words: str = "",
    max_len: int = 5000,
) -> dict[str, Any]:
    rng = _rng(generation_id)
    present = tokens(prompt)
    protected = set(tokens(user_words))
    mode = "explore" if rng.random() < EXPLORE_RATE else "exploit"
    if mode == "exploit":
        ranked = sorted(
            ((s, t) for t, s in scores.items() if s >= GOOD and t not in present), reverse=True
        )
        added = [t for _, t in ranked[:EXPLOIT_BUDGET]]
    else:
        pool = sorted({term for t in TEMPLATES.values() for term in t["terms"]} - set(present))
        added = rng.sample(pool, k=min(len(pool), rng.choice((1, 2))))
    demoted = [t for t in present if scores.get(t, START) < BAD and t not in protected]
    kept = [t for t in present if t not in demoted]
    final = fit_prompt(kept[:1] + added + kept[1:], max_len) if kept else ", ".join(added)
    negatives = tokens(negative) + [t for t in demoted if t not in tokens(negative)]
    used = tokens(final)

    def mean(ts: list[str]) -> float:
        return round(sum(scores.get(t, START) for t in ts) / len(ts), 4) if ts else START

    return {
        "finalPrompt": final,
        "negativePrompt": ", ".join(negatives),
        "mode": mode,
        "addedTokens": added,
        "demotedTokens": demoted,
        "currentReward": mean(present),
        "expectedReward": mean(used),
    }


def user_scores(session: Session, user_id: int) -> dict[str, float]:
    rows = session.execute(
        select(PromptTokenScore.token, PromptTokenScore.score).where(
            PromptTokenScore.user_id == user_id
        )
    )
    return {t: s for t, s in rows}


def apply_feedback(session: Session, feedback: GenerationFeedback) -> int:
    """Move token scores toward this feedback's reward; returns tokens updated.
    Idempotent: a feedback row is applied once (``applied_at``)."""
    if feedback.applied_at is not None:
        return 0
    feedback.applied_at = utcnow()
    reward = reward_of(feedback.feedback_type, feedback.rating)
    gen = session.get(Generation, feedback.generation_id)
    opt = (gen.pipeline_data or {}).get("optimize") if gen else None
    if reward is None or not opt:
        return 0
    explored = set(opt.get("addedTokens", [])) if opt.get("mode") == "explore" else set()
    existing = {
        r.token: r
        for r in session.scalars(
            select(PromptTokenScore).where(PromptTokenScore.user_id == feedback.user_id)
        )
    }
    toks = tokens(opt.get("finalPrompt", ""))
    for t in toks:
        row = existing.get(t)
        if row is None:
            row = PromptTokenScore(user_id=feedback.user_id, token=t, score=START, uses=0)
            session.add(row)
        step = min(1.0, ALPHA * (EXPLORE_WEIGHT if t in explored else 1.0))
        row.score = row.score + step * (reward - row.score)
        row.uses = (row.uses or 0) + 1
    return len(toks)


def run(ctx: StageContext) -> StageResult:
    gen = ctx.generation
    enhance = ctx.output_of("enhance")
    persona = ctx.output_of("persona")
    prompt = persona.get("prompt") or enhance.get("mainPrompt") or gen.prompt or ""
    negative = enhance.get("negativePrompt") or gen.negative_prompt or ""
    result = optimize(
        gen.id, prompt, negative, user_scores(ctx.session, gen.user_id), user_words=gen.prompt or ""
    )
    return StageResult(result)
