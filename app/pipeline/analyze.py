"""Stage 1, ``analyze``: garment photo -> VLT spec.

Offline engine (Pillow, deterministic):
1. downscale; estimate the background from the border pixels (median);
2. foreground = pixels far from the background colour;
3. dominant foreground colours by median-cut quantisation, named from the
   fashion colour table;
4. pattern vs solid from how many strong colours share the garment and how
   often neighbouring pixels change colour (edge density);
5. silhouette and garment type from the foreground's bounding-box proportions;
6. confidence from how clearly garment and background separate.
From a text prompt the stage is skipped; a supplied ``vltSpec`` is passed on.
"""

from __future__ import annotations

import io
import statistics
from typing import Any

from PIL import Image

from .colors import nearest_color
from .context import StageContext, StageFailed, StageResult
from .vlt import normalize_spec

ANALYSIS_SIDE = 96


def _border_pixels(img: Image.Image) -> list[tuple[int, int, int]]:
    w, h = img.size
    px = img.load()
    edge = [px[x, 0] for x in range(w)] + [px[x, h - 1] for x in range(w)]
    edge += [px[0, y] for y in range(h)] + [px[w - 1, y] for y in range(h)]
    return edge


def _dist(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5


def analyze_image(data: bytes) -> dict[str, Any]:
    """Analyse garment photo bytes into one VLT record (plus diagnostics)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((ANALYSIS_SIDE, ANALYSIS_SIDE))
    w, h = img.size
    border = _border_pixels(img)
    bg = tuple(int(statistics.median(c[i] for c in border)) for i in range(3))
    px = img.load()
    fg = [(x, y) for y in range(h) for x in range(w) if _dist(px[x, y], bg) > 60]
    fg_fraction = len(fg) / (w * h)
    if fg_fraction < 0.02:  # nothing stands out: treat the whole frame as garment
        fg = [(x, y) for y in range(h) for x in range(w)]
    fg_set = set(fg)

    sample = Image.new("RGB", (len(fg), 1))
    sample.putdata([px[p] for p in fg])
    quant = sample.quantize(colors=4, method=Image.Quantize.MEDIANCUT)
    pal = quant.getpalette() or []
    counts = sorted(quant.getcolors() or [], reverse=True)
    total = sum(c for c, _ in counts) or 1
    colours = []
    for count, idx in counts:
        rgb = tuple(pal[idx * 3 : idx * 3 + 3])
        name = nearest_color(rgb)  # type: ignore[arg-type]
        share = count / total
        if share >= 0.12 and name not in [c[0] for c in colours]:
            colours.append((name, share))

    # Edge density: how often a foreground pixel differs sharply from its right/lower neighbour.
    changes = comparisons = 0
    for x, y in fg:
        for nx, ny in ((x + 1, y), (x, y + 1)):
            if (nx, ny) in fg_set:
                comparisons += 1
                changes += _dist(px[x, y], px[nx, ny]) > 80
    edge_density = changes / comparisons if comparisons else 0.0
    patterned = edge_density > 0.08 and len(colours) >= 2

    xs = [p[0] for p in fg]
    ys = [p[1] for p in fg]
    bw, bh = max(xs) - min(xs) + 1, max(ys) - min(ys) + 1
    ratio = bh / bw
    if ratio >= 1.6:
        garment, silhouette = "dress", "fitted" if ratio >= 2.2 else "a-line"
    elif ratio >= 1.15:
        garment, silhouette = "coat", "straight"
    elif ratio >= 0.8:
        garment, silhouette = "top", "relaxed"
    else:
        garment, silhouette = "top", "cropped"

    primary = colours[0][0] if colours else nearest_color(bg)  # type: ignore[arg-type]
    secondary = colours[1][0] if len(colours) > 1 else None
    separation = min(
        1.0, _dist(tuple(int(statistics.mean(px[p][i] for p in fg)) for i in range(3)), bg) / 200
    )
    confidence = round(0.35 + 0.4 * separation + 0.2 * (1 - abs(0.45 - fg_fraction)), 2)
    pattern = "striped" if patterned else None
    prompt_text = f"{primary.capitalize()} {silhouette} {garment}" + (
        f" with {secondary} {pattern or 'accents'}" if secondary else ""
    )
    record = {
        "garmentType": garment,
        "silhouette": silhouette,
        "fabric": {"type": "unspecified", "texture": "patterned" if patterned else "smooth"},
        "colors": {"primary": primary, "secondary": secondary, "pattern": pattern},
        "construction": {},
        "style": {},
        "promptText": prompt_text,
        "confidence": min(0.95, confidence),
    }
    return {
        "spec": normalize_spec({"records": [record]}),
        "diagnostics": {
            "background": nearest_color(bg),  # type: ignore[arg-type]
            "foregroundFraction": round(fg_fraction, 3),
            "edgeDensity": round(edge_density, 3),
            "colorShares": {n: round(s, 3) for n, s in colours},
            "aspect": round(ratio, 2),
        },
    }


def run(ctx: StageContext) -> StageResult:
    gen = ctx.generation
    supplied = ctx.output_of("input").get("vltSpec")
    if gen.mode == "prompt":
        return StageResult({"reason": "text prompt: nothing to analyse"}, skipped=True)
    if supplied:
        return StageResult({"engine": "supplied", "spec": normalize_spec(supplied)})
    if not gen.input_key:
        raise StageFailed("no garment image was stored for this generation")
    try:
        data = ctx.storage.get(gen.input_key)
    except KeyError as exc:
        raise StageFailed("the uploaded garment image is missing from storage") from exc
    result = analyze_image(data)
    return StageResult({"engine": "offline-pillow", **result})
