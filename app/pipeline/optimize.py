"""Stage 5, ``optimize``: feedback-driven prompt optimisation.

Tokens are the prompt's comma-separated terms (compared lower-cased, written
as they came). Each user has a score per token (start 0.5) in
``prompt_token_scores``. Feedback moves the scores of the tokens a
generation's final prompt (``app.pipeline.learning``, in the
``feedback.apply`` task, never in the request).

At generation time a random generator seeded from the generation id decides
(so a rerun gives the same prompt):
- exploit (80 %): add the user's best learnt tokens (score >= ``GOOD``) not
  yet present, up to ``EXPLOIT_BUDGET``, right after the user's own words;
- explore (20 %): add one or two terms of the *other* templates, untried or
  not disliked.
Tokens scoring below ``BAD`` go to the negative prompt (the user's own words
excepted): present ones are moved there, and the user's worst known ones
are added, up to ``NEGATIVE_BUDGET``. The prompt is fitted to the chosen
provider's maximum prompt length.

Feedback teaches style, lighting, composition and quality, never the subject:
a learnt term naming a garment, colour, material, pattern or construction
detail ("double breasted", "floor length") the prompt does not name is never
added (``heldBackTokens``), and terms naming any are never demoted or made
negative. Under ``enhance: off`` nothing is added or moved.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.pipeline.context import StageContext, StageResult
from app.pipeline.enhance import passes_through
from app.pipeline.subject import Subject, strays, subject_of
from app.pipeline.templates import TEMPLATES, fit_prompt
from app.providers import PROVIDERS

ALPHA = 0.1
EXPLORE_WEIGHT = 1.5
EXPLORE_RATE = 0.2
START = 0.5
GOOD, BAD = 0.55, 0.3
EXPLOIT_BUDGET = 3
NEGATIVE_BUDGET = 8
# Learnt terms looked at, best (or worst) first, for what to add (or make
# negative): a few qualify among the first, and a vocabulary of 100,000
# terms (prompts of many short terms, hearted) cost seconds of CPU a job.
CONSIDERED = 1000
MAX_TOKEN = 80  # prompt_token_scores.token is VARCHAR(80)


def terms(prompt: str) -> list[str]:
    """The prompt's comma-separated terms, whitespace-normalised, first occurrence kept."""
    seen: list[str] = []
    keys: set[str] = set()
    for part in prompt.split(","):
        t = " ".join(part.split())
        if t and (key := t.lower()) not in keys:
            keys.add(key)
            seen.append(t)
    return seen


def tokens(prompt: str) -> list[str]:
    """Score keys: the terms, lower-cased (terms too long to score are left out)."""
    return [t.lower() for t in terms(prompt) if len(t) <= MAX_TOKEN]


def _rng(generation_id: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(generation_id.encode()).digest()[:8]))


def _additions(
    mode: str,
    rng: random.Random,
    scores: dict[str, float],
    keys: set[str],
    request: Subject,
    template_id: str | None,
) -> tuple[list[str], list[str]]:
    """Terms to add, and learnt ones held back because they name a garment,
    colour, material, pattern or construction detail the request does not."""
    if mode == "exploit":
        best = ((-s, t) for t, s in scores.items() if s >= GOOD and t not in keys)
        added: list[str] = []
        held: list[str] = []  # passed over, ranked above what was added
        for _, t in heapq.nsmallest(CONSIDERED, best):
            if len(added) == EXPLOIT_BUDGET:
                break
            (held if strays(t, request) else added).append(t)
        return added, held[:EXPLOIT_BUDGET]
    pool = sorted(
        {
            term
            for tid, t in TEMPLATES.items()
            if tid != template_id
            for term in t["terms"]
            if term.lower() not in keys
            and scores.get(term.lower(), START) >= BAD
            and not strays(term, request)
        }
    )
    return rng.sample(pool, k=min(len(pool), rng.choice((1, 2)))), []


def optimize(
    generation_id: str,
    prompt: str,
    negative: str,
    scores: dict[str, float],
    user_words: str = "",
    max_len: int = 5000,
    template_id: str | None = None,
) -> dict[str, Any]:
    rng = _rng(generation_id)
    mode = "explore" if rng.random() < EXPLORE_RATE else "exploit"
    present = terms(prompt)
    keys = {t.lower() for t in present}
    request = subject_of(prompt)
    added, held = _additions(mode, rng, scores, keys, request, template_id)
    # The designer's words and the garment itself (terms naming a garment,
    # colour, material, pattern or detail) are never demoted or made negative.
    protected = set(tokens(user_words))

    def learnable(t: str) -> bool:
        return t.lower() not in protected and not subject_of(t)

    demoted = [t for t in present if scores.get(t.lower(), START) < BAD and learnable(t)]
    kept = [t for t in present if t not in demoted]
    lead = 0
    while lead < len(kept) and kept[lead].lower() in protected:
        lead += 1
    final = fit_prompt(kept[: max(lead, 1)] + added + kept[max(lead, 1) :], max_len)
    extra = len(terms(negative)) + len(demoted) + NEGATIVE_BUDGET
    worst = heapq.nsmallest(CONSIDERED, ((s, t) for t, s in scores.items() if s < BAD))
    disliked = [t for _, t in worst if learnable(t)][:extra]  # each fills a slot at most
    negatives = terms(", ".join([negative, *demoted, *disliked]))
    used = tokens(final)

    def mean(ts: list[str]) -> float:
        return round(sum(scores.get(t, START) for t in ts) / len(ts), 4) if ts else START

    reason = (
        f"exploit: the user's best tokens scoring >= {GOOD} not yet in the prompt"
        if mode == "exploit"
        else "explore: trying terms from other templates"
    )
    if held:
        reason += f"; held back learnt terms naming what the request does not ask for: {held}"
    return {
        "finalPrompt": final,
        "negativePrompt": ", ".join(negatives[:extra]),
        "mode": mode,
        "addedTokens": [t for t in added if t.lower() in used],
        "demotedTokens": demoted,
        "heldBackTokens": held,
        "currentReward": mean([t.lower() for t in present]),
        "expectedReward": mean(used),
        "reason": reason,
        "promptLimit": max_len,
    }


def pass_through(prompt: str, negative: str, max_len: int) -> dict[str, Any]:
    """``enhance: off``: the designer's prompt, cut only to the provider's limit."""
    reason = "settings.enhance is off: the designer's prompt is passed on, nothing learnt added"
    if len(prompt) > max_len:
        reason += f"; cut to the provider's limit of {max_len} characters"
    return {
        "finalPrompt": prompt[:max_len],
        "negativePrompt": negative,
        "mode": "off",
        "addedTokens": [],
        "demotedTokens": [],
        "passedThrough": True,
        "reason": reason,
        "promptLimit": max_len,
    }


# Plain SQL: the ORM's select costs twice the CPU of this read (one per generation).
_USER_SCORES = text("SELECT token, score FROM prompt_token_scores WHERE user_id = :user_id")


def user_scores(session: Session, user_id: int) -> dict[str, float]:
    return dict(session.execute(_USER_SCORES, {"user_id": user_id}).all())


def run(ctx: StageContext) -> StageResult:
    gen = ctx.generation
    enhance, persona = ctx.output_of("enhance"), ctx.output_of("persona")
    provider = PROVIDERS.get(ctx.output_of("route").get("provider") or "")
    max_len = provider.capabilities.max_prompt_length if provider else 5000
    prompt = persona.get("prompt") or enhance.get("mainPrompt") or gen.prompt or ""
    negative = enhance.get("negativePrompt") or gen.negative_prompt or ""
    if passes_through(gen):
        result = pass_through(prompt, negative, max_len)
        result["inputs"] = {"promptLength": len(prompt)}
        return StageResult(result)
    scores = user_scores(ctx.session, gen.user_id)
    result = optimize(
        gen.id,
        prompt,
        negative,
        scores,
        user_words=gen.prompt or "",
        max_len=max_len,
        template_id=enhance.get("templateId"),
    )
    result["inputs"] = {"learntTokens": len(scores), "promptLength": len(prompt)}
    return StageResult(result)
