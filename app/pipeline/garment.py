"""Pixel work for the offline ``analyze`` engine: read a garment photo into a
``GarmentReading`` (mask, colours, pattern, shape, confidence). Pure Pillow,
deterministic, on a 128-pixel thumbnail."""

from __future__ import annotations

import io
import statistics
from dataclasses import dataclass
from math import dist
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from app.pipeline.colors import RGB, nearest_color

SIDE = 128
EDGE_STEP = 80  # colour distance that counts as a pattern edge between neighbours
PATTERN_EDGES = 0.06  # share of neighbour pairs that must be edges for a pattern
MIN_SHARE = 0.12  # a colour must cover this much of the garment to be named


@dataclass
class GarmentReading:
    background: str
    border_uniformity: float
    threshold: float
    fg_fraction: float
    colours: list[tuple[str, float]]  # (name, share of garment), largest first
    edge_density: float
    h_edges: float
    v_edges: float
    pattern: str | None
    aspect: float  # mask height / width
    flare: float  # hem width / shoulder width
    legs: bool
    garment: str
    silhouette: str
    confidence: float


def otsu(values: list[int]) -> float:
    """Otsu's threshold over integer values 0..255 (maximises between-class variance)."""
    hist = [0] * 256
    for v in values:
        hist[min(255, v)] += 1
    total, sum_all = len(values), sum(i * h for i, h in enumerate(hist))
    best, best_t, w0, sum0 = -1.0, 0, 0, 0.0
    for t in range(256):
        w0 += hist[t]
        if w0 == 0 or w0 == total:
            continue
        sum0 += t * hist[t]
        m0, m1 = sum0 / w0, (sum_all - sum0) / (total - w0)
        between = w0 * (total - w0) * (m0 - m1) ** 2
        if between > best:
            best, best_t = between, t
    return best_t + 0.5


def _mask(img: Image.Image, bg: RGB) -> tuple[Image.Image, float]:
    """Foreground mask: far from the background, gaps closed, holes filled."""
    w, h = img.size
    raw = img.tobytes()  # row-major RGB triples
    pixels = zip(raw[0::3], raw[1::3], raw[2::3], strict=True)
    dists = [min(255, round(dist(p, bg))) for p in pixels]
    threshold = min(120.0, max(30.0, otsu(dists)))
    mask = Image.new("L", (w, h))
    mask.putdata([255 if d > threshold else 0 for d in dists])
    # Closing bridges thin background-coloured stripes inside the garment.
    mask = mask.filter(ImageFilter.MaxFilter(5)).filter(ImageFilter.MinFilter(5))
    # Whatever background the border cannot reach is a hole in the garment.
    padded = Image.new("L", (w + 2, h + 2), 0)
    padded.paste(mask, (1, 1))
    ImageDraw.floodfill(padded, (0, 0), 128, thresh=0)
    filled = padded.crop((1, 1, w + 1, h + 1)).point(lambda v: 0 if v == 128 else 255)
    return filled, threshold


def _colours(pixels: list[RGB]) -> list[tuple[str, float]]:
    sample = Image.new("RGB", (len(pixels), 1))
    sample.putdata(pixels)
    quant = sample.quantize(colors=4, method=Image.Quantize.MEDIANCUT)
    pal = quant.getpalette() or []
    total = len(pixels)
    shares: dict[str, float] = {}
    for count, idx in quant.getcolors() or []:
        name = nearest_color(tuple(pal[idx * 3 : idx * 3 + 3]))  # type: ignore[arg-type]
        shares[name] = shares.get(name, 0.0) + count / total
    ranked = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(n, s) for n, s in ranked if s >= MIN_SHARE]


def _shape(inside: set[tuple[int, int]]) -> tuple[float, float, bool]:
    xs, ys = [p[0] for p in inside], [p[1] for p in inside]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    rows = [[x for x in range(x0, x1 + 1) if (x, y) in inside] for y in range(y0, y1 + 1)]
    band = max(1, bh // 5)
    top = statistics.mean(len(r) for r in rows[:band]) or 1
    bottom = statistics.mean(len(r) for r in rows[-band:])
    centre = (x0 + x1) / 2

    def split_at_centre(row: list[int]) -> bool:  # a gap between two legs, near the middle
        return any(
            b - a > 2 and abs((a + b) / 2 - centre) < bw * 0.25
            for a, b in zip(row, row[1:], strict=False)
        )

    hem = rows[-max(1, bh // 4) :]
    legs = sum(split_at_centre(r) for r in hem) >= 0.6 * len(hem)
    return bh / bw, bottom / top, legs


def _edge_rate(px: Any, inside: set[tuple[int, int]], dx: int, dy: int) -> float:
    """Share of neighbouring garment pixels (``dx``, ``dy`` apart) whose
    colours differ like a pattern's edge."""
    pairs = [((x, y), (x + dx, y + dy)) for x, y in inside if (x + dx, y + dy) in inside]
    return sum(dist(px[a], px[b]) > EDGE_STEP for a, b in pairs) / len(pairs) if pairs else 0.0


def _classify(aspect: float, flare: float, legs: bool) -> tuple[str, str]:
    if legs and aspect >= 1.2:
        return "trousers", "wide-leg" if flare >= 1.3 else "straight"
    if aspect >= 1.6:
        if flare >= 1.5:
            return "dress", "a-line"
        return "dress", "fitted" if aspect >= 2.2 else "straight"
    if aspect >= 1.15:
        return ("skirt", "a-line") if flare >= 1.5 else ("coat", "straight")
    if aspect >= 0.8:
        return "top", "relaxed"
    return "top", "cropped"


def _pattern(h_rate: float, v_rate: float, colours: list[tuple[str, float]]) -> str | None:
    density = (h_rate + v_rate) / 2
    if density <= PATTERN_EDGES or len(colours) < 2:
        return None
    # Stripes change colour along one axis only; checks and prints along both.
    if min(h_rate, v_rate) < 0.35 * max(h_rate, v_rate):
        return "striped"
    # Checks: two colours in balance. Prints: a ground colour with scattered motifs.
    balanced = len(colours) == 2 and colours[1][1] >= 0.3
    return "checked" if balanced else "print"


def read_garment(data: bytes) -> GarmentReading:
    img = Image.open(io.BytesIO(data))
    # A JPEG decodes at a fraction of its size (1/2 to 1/8, at least 8x the
    # thumbnail, so fine stripes stay apart): a 40-megapixel photo takes a
    # few MB, not 120, in the worker. Other formats decode whole.
    img.draft("RGB", (SIDE * 8, SIDE * 8))
    img = img.convert("RGB")
    # Nearest-neighbour sampling keeps real fabric colours (no blended edge pixels).
    img.thumbnail((SIDE, SIDE), resample=Image.Resampling.NEAREST)
    w, h = img.size
    px = img.load()
    border = [px[x, y] for x in range(w) for y in (0, h - 1)]
    border += [px[x, y] for y in range(h) for x in (0, w - 1)]
    bg: RGB = tuple(int(statistics.median(c[i] for c in border)) for i in range(3))  # type: ignore
    uniformity = sum(dist(c, bg) < 40 for c in border) / len(border)
    mask, threshold = _mask(img, bg)
    mpx = mask.load()
    inside = {(x, y) for y in range(h) for x in range(w) if mpx[x, y]}
    fg_fraction = len(inside) / (w * h)
    whole_frame = fg_fraction < 0.02  # nothing stands out: the garment fills the frame
    if whole_frame:
        inside = {(x, y) for y in range(h) for x in range(w)}

    colours = _colours([px[p] for p in sorted(inside)])
    h_rate, v_rate = _edge_rate(px, inside, 1, 0), _edge_rate(px, inside, 0, 1)
    pattern = _pattern(h_rate, v_rate, colours)
    aspect, flare, legs = _shape(inside)
    garment, silhouette = _classify(aspect, flare, legs)

    mean_fg: RGB = tuple(int(statistics.mean(px[p][i] for p in inside)) for i in range(3))  # type: ignore
    separation = 0.0 if whole_frame else min(1.0, dist(mean_fg, bg) / 200)
    plausible = 1.0 if 0.08 <= fg_fraction <= 0.85 else 0.4
    confidence = 0.25 + 0.3 * separation + 0.2 * uniformity + 0.15 * plausible
    return GarmentReading(
        background=nearest_color(bg),
        border_uniformity=uniformity,
        threshold=threshold,
        fg_fraction=fg_fraction,
        colours=colours,
        edge_density=(h_rate + v_rate) / 2,
        h_edges=h_rate,
        v_edges=v_rate,
        pattern=pattern,
        aspect=aspect,
        flare=flare,
        legs=legs,
        garment=garment,
        silhouette=silhouette,
        confidence=round(min(0.9, confidence), 2),
    )
