"""``local``: the offline provider. A procedural Pillow renderer that draws a
real PNG of the requested aspect ratio: a studio backdrop graded from the
palette, a garment silhouette in the primary colour with its pattern, and
highlights. Deterministic for a (generation, image index) pair."""

from __future__ import annotations

import hashlib
import io
import random

from PIL import Image, ImageDraw, ImageFilter

from app.pipeline.colors import color_rgb
from app.providers.base import (
    ASPECT_RATIOS,
    Capabilities,
    ImageOutput,
    ImageRequest,
    ProviderResult,
)

LONG_SIDE = 1024
_RATIO = {"1:1": (1, 1), "3:4": (3, 4), "4:3": (4, 3), "16:9": (16, 9), "9:16": (9, 16)}


def dimensions(aspect_ratio: str, long_side: int = LONG_SIDE) -> tuple[int, int]:
    w, h = _RATIO.get(aspect_ratio, (1, 1))
    if w >= h:
        return long_side, max(8, round(long_side * h / w))
    return max(8, round(long_side * w / h)), long_side


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))  # type: ignore


def _silhouette(garment: str, w: int, h: int, rng: random.Random) -> list[tuple[float, float]]:
    cx = w / 2 + rng.uniform(-0.03, 0.03) * w
    top, bottom = h * 0.14, h * 0.9
    sh = min(w, h) * 0.16  # half shoulder width
    g = (garment or "dress").lower()
    if any(k in g for k in ("pant", "trouser", "jean", "short")):
        waist = sh * 0.9
        return [
            (cx - waist, top),
            (cx + waist, top),
            (cx + waist * 1.25, bottom),
            (cx + waist * 0.15, bottom),
            (cx, top + (bottom - top) * 0.35),
            (cx - waist * 0.15, bottom),
            (cx - waist * 1.25, bottom),
        ]
    if any(k in g for k in ("top", "shirt", "blouse", "jacket", "coat", "sweater", "tee")):
        hem = top + (bottom - top) * (0.75 if "coat" in g else 0.5)
        return [
            (cx - sh * 0.5, top),
            (cx + sh * 0.5, top),
            (cx + sh * 1.6, top + sh * 1.6),
            (cx + sh * 1.2, top + sh * 1.9),
            (cx + sh, hem),
            (cx - sh, hem),
            (cx - sh * 1.2, top + sh * 1.9),
            (cx - sh * 1.6, top + sh * 1.6),
        ]
    if "skirt" in g:
        return [
            (cx - sh * 0.8, top + h * 0.2),
            (cx + sh * 0.8, top + h * 0.2),
            (cx + sh * 1.8, bottom),
            (cx - sh * 1.8, bottom),
        ]
    flare = rng.uniform(1.5, 2.3)
    waist_y = top + (bottom - top) * 0.32
    return [
        (cx - sh * 0.45, top),
        (cx + sh * 0.45, top),
        (cx + sh, top + sh * 0.6),
        (cx + sh * 0.62, waist_y),
        (cx + sh * flare, bottom),
        (cx - sh * flare, bottom),
        (cx - sh * 0.62, waist_y),
        (cx - sh, top + sh * 0.6),
    ]


def render(request: ImageRequest, index: int, long_side: int = LONG_SIDE) -> bytes:
    w, h = dimensions(request.aspect_ratio, long_side)
    seed = int.from_bytes(hashlib.sha256(f"{request.generation_id}:{index}".encode()).digest()[:8])
    rng = random.Random(seed)
    palette = [color_rgb(c) for c in request.palette] or [(110, 40, 140), (240, 235, 225)]
    primary = palette[0]
    secondary = palette[1] if len(palette) > 1 else _mix(primary, (255, 255, 255), 0.6)
    backdrop_top = _mix(secondary, (255, 255, 255), 0.55)
    backdrop_bottom = _mix(secondary, (0, 0, 0), 0.25)

    # Backdrop gradient drawn as a 1-px column then stretched: cheap at any size.
    column = Image.new("RGB", (1, h))
    for y in range(h):
        column.putpixel((0, y), _mix(backdrop_top, backdrop_bottom, y / max(1, h - 1)))
    img = column.resize((w, h))
    draw = ImageDraw.Draw(img)
    draw.ellipse([w * 0.2, h * 0.86, w * 0.8, h * 0.96], fill=_mix(backdrop_bottom, (0, 0, 0), 0.3))

    shape = _silhouette(request.garment_type or "dress", w, h, rng)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon(shape, fill=255)
    garment = Image.new("RGB", (w, h), primary)
    gd = ImageDraw.Draw(garment)
    pattern = (request.pattern or "").lower()
    if pattern in ("striped", "stripes", "stripe"):
        step = max(6, w // 28)
        for x in range(-h, w, step * 2):
            gd.polygon(
                [(x, 0), (x + step, 0), (x + step + h // 3, h), (x + h // 3, h)], fill=secondary
            )
    elif pattern in ("floral", "polka dot", "dotted", "patterned", "print"):
        for _ in range(120):
            x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(w * 0.01, w * 0.03)
            gd.ellipse([x - r, y - r, x + r, y + r], fill=secondary)
    # Soft vertical shading gives the fabric some volume.
    shade = Image.linear_gradient("L").rotate(90).resize((w, h))
    garment = Image.composite(garment, _mix_image(garment, (0, 0, 0), 0.35), shade)
    img.paste(garment, (0, 0), mask.filter(ImageFilter.GaussianBlur(max(1, w // 400))))
    for _ in range(3):
        x = rng.uniform(w * 0.4, w * 0.6)
        draw.line(
            [(x, h * 0.2), (x + rng.uniform(-w * 0.05, w * 0.05), h * 0.85)],
            fill=_mix(primary, (255, 255, 255), 0.25),
            width=max(1, w // 300),
        )
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def _mix_image(img: Image.Image, rgb: tuple[int, int, int], t: float) -> Image.Image:
    return Image.blend(img, Image.new("RGB", img.size, rgb), t)


class LocalProvider:
    id = "local"
    model = "bff-local-v1"
    key_env_var = None
    capabilities = Capabilities(
        aspect_ratios=ASPECT_RATIOS,
        negative_prompt=True,
        max_prompt_length=5000,
        max_images=4,
        quality_score=0.2,
        typical_latency_s=0.2,
    )

    def __init__(self, long_side: int = LONG_SIDE) -> None:
        self.long_side = long_side

    @staticmethod
    def price_for(request: ImageRequest) -> float:
        return 0.0

    def generate(self, request: ImageRequest) -> ProviderResult:
        outputs = [
            ImageOutput(data=render(request, i, self.long_side), content_type="image/png")
            for i in range(request.count)
        ]
        w, h = dimensions(request.aspect_ratio, self.long_side)
        return ProviderResult(
            outputs=outputs,
            sent={"aspectRatio": request.aspect_ratio, "size": f"{w}x{h}", "n": request.count},
        )
