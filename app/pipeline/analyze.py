"""Stage 1, ``analyze``: garment photo -> VLT spec. With ``OPENAI_API_KEY`` a
vision model answers one record (``llm.chat_json``); on any LLM failure the
offline Pillow engine (``garment.py``) runs and the fallback is recorded. From
a text prompt the stage is skipped; a supplied ``vltSpec`` is validated and
passed on.
"""

from __future__ import annotations

from typing import Any

from app.pipeline import llm
from app.pipeline.context import StageContext, StageFailed, StageResult
from app.pipeline.garment import GarmentReading, read_garment
from app.pipeline.vlt import RECORD_SCHEMA, normalize_record, normalize_spec

NEUTRALS = {"black", "white", "grey", "charcoal", "ivory", "cream", "beige", "camel", "tan"}
JEWELS = {"burgundy", "emerald", "gold", "navy", "plum", "maroon", "cobalt", "purple", "silver"}
PASTELS = {"blush", "lavender", "sage", "sky blue", "coral", "pink"}

VISION_SYSTEM = (
    "You are a fashion technologist. Describe the single main garment in the photo as "
    "one JSON record: garmentType (e.g. dress, blazer, trousers), silhouette, fabric "
    "(type, texture, weight, finish), colors (primary and secondary as plain colour "
    "names, pattern such as striped/checked/floral or null), construction (seams, "
    "closure, details), style (aesthetic, formality, season), promptText (one sentence "
    "a designer would write) and confidence (0-1). Use null where you cannot tell."
)


def _style_guess(reading: GarmentReading) -> dict[str, str]:
    names = {c for c, _ in reading.colours}
    if reading.pattern == "print":
        aesthetic = "bohemian"
    elif names & JEWELS:
        aesthetic = "elegant"
    elif names & PASTELS:
        aesthetic = "romantic"
    elif names and names <= NEUTRALS:
        aesthetic = "minimalist"
    else:
        aesthetic = "contemporary"
    long_dress = reading.garment == "dress" and reading.aspect >= 2.2
    formality = "formal" if long_dress and aesthetic == "elegant" else "smart casual"
    return {"aesthetic": aesthetic, "formality": formality, "season": "all-season"}


def analyze_image(data: bytes) -> dict[str, Any]:
    """The offline engine: garment photo bytes -> ``{spec, diagnostics, reasoning}``."""
    r = read_garment(data)
    primary = r.colours[0][0] if r.colours else r.background
    secondary = r.colours[1][0] if len(r.colours) > 1 else None
    texture = "patterned" if r.pattern else "smooth"
    prompt_text = f"{primary.capitalize()} {r.silhouette} {r.garment}" + (
        f" with {secondary} {r.pattern or 'accents'}" if secondary else ""
    )
    record = {
        "garmentType": r.garment,
        "silhouette": r.silhouette,
        "fabric": {"type": "unspecified", "texture": texture},
        "colors": {"primary": primary, "secondary": secondary, "pattern": r.pattern},
        "construction": {},
        "style": _style_guess(r),
        "promptText": prompt_text,
        "confidence": r.confidence,
    }
    shares = ", ".join(f"{n} {s:.0%}" for n, s in r.colours) or "none"
    reasoning = [
        f"background {r.background} from the border pixels "
        f"({r.border_uniformity:.0%} of them agree)",
        f"garment mask: distance to background > {r.threshold:.0f} (Otsu), "
        f"covering {r.fg_fraction:.0%} of the frame",
        f"dominant garment colours: {shares}",
        f"edge density {r.edge_density:.3f} (horizontal {r.h_edges:.3f}, vertical "
        f"{r.v_edges:.3f}) -> {r.pattern or 'solid'}",
        f"mask {r.aspect:.2f} tall per unit width, hem/shoulder width {r.flare:.2f}"
        + (", two legs at the hem" if r.legs else "")
        + f" -> {r.silhouette} {r.garment}",
    ]
    return {
        "spec": normalize_spec({"records": [record]}),
        "diagnostics": {
            "background": r.background,
            "threshold": round(r.threshold, 1),
            "foregroundFraction": round(r.fg_fraction, 3),
            "edgeDensity": round(r.edge_density, 3),
            "colorShares": {n: round(s, 3) for n, s in r.colours},
            "aspect": round(r.aspect, 2),
            "flare": round(r.flare, 2),
        },
        "reasoning": reasoning,
    }


def analyze_with_vision(data: bytes, settings: Any) -> dict[str, Any]:
    """The vision engine; raises ``llm.LLMError`` when it gives no valid record."""
    answer = llm.chat_json(
        settings,
        system=VISION_SYSTEM,
        content=llm.user_content("Analyse this garment photo.", image=data),
        schema_name="vlt_record",
        schema=RECORD_SCHEMA,
        validate=normalize_record,
    )
    return {"spec": answer.value, "llm": answer.meta()}


def run(ctx: StageContext) -> StageResult:
    gen = ctx.generation
    supplied = ctx.output_of("input").get("vltSpec")
    if gen.mode == "prompt":
        return StageResult({"reason": "text prompt: nothing to analyse"}, skipped=True)
    if supplied:
        spec = normalize_spec(supplied)
        return StageResult(
            {
                "engine": "supplied",
                "inputs": {"records": len(spec["records"])},
                "spec": spec,
                "reason": "a vltSpec was supplied: validated and normalised, not analysed",
            }
        )
    if not gen.input_key:
        raise StageFailed("no garment image was stored for this generation")
    try:
        data = ctx.storage.get(gen.input_key)
    except KeyError as exc:
        raise StageFailed("the uploaded garment image is missing from storage") from exc
    inputs = {"imageKey": gen.input_key, "bytes": len(data)}
    fallback = None
    if llm.available(ctx.settings):
        try:
            result = analyze_with_vision(data, ctx.settings)
            return StageResult({"engine": "openai-vision", "inputs": inputs, **result})
        except llm.LLMError as exc:
            fallback = {"from": "openai-vision", "reason": str(exc)}
    result = analyze_image(data)
    out: dict[str, Any] = {"engine": "offline-pillow", "inputs": inputs, **result}
    if fallback:
        out["fallback"] = fallback
    return StageResult(out)
