"""``local``: the offline provider. A procedural Pillow renderer that draws a
real PNG of the requested aspect ratio: a studio backdrop graded from the
palette, and the requested garment type's outline (``local_shapes``: dress,
skirt, trousers, top, jacket/coat, jumpsuit) in the primary colour with its
pattern, shading and folds, all inside the outline. Deterministic for a
(generation, image index) pair. ``sent`` records what it was asked to draw."""

from __future__ import annotations

import hashlib
import io
import random
from math import dist

from PIL import Image, ImageDraw, ImageFilter

from app.pipeline.colors import RGB, color_rgb
from app.pipeline.subject import garment_category
from app.providers.base import ImageOutput, ImageRequest, ProviderResult
from app.providers.catalog import LOCAL
from app.providers.inputs import describe_reference
from app.providers.local_shapes import outline

LONG_SIDE = 1024
_RATIO = {"1:1": (1, 1), "3:4": (3, 4), "4:3": (4, 3), "16:9": (16, 9), "9:16": (9, 16)}


def dimensions(aspect_ratio: str, long_side: int = LONG_SIDE) -> tuple[int, int]:
    w, h = _RATIO.get(aspect_ratio, (1, 1))
    if w >= h:
        return long_side, max(8, round(long_side * h / w))
    return max(8, round(long_side * w / h)), long_side


MIN_CONTRAST = 110  # garment-to-backdrop colour distance below which the backdrop turns
DARK_BACKDROP, DEFAULT_PALETTE = (52, 56, 62), [(110, 40, 140), (240, 235, 225)]


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))  # type: ignore


def backdrop_colours(primary: RGB, secondary: RGB) -> tuple[RGB, RGB]:
    """Top and bottom of the studio backdrop: a light tint of the secondary
    colour, or a dark one when that would not set the garment off."""
    base = _mix(secondary, (255, 255, 255), 0.55)
    if dist(base, primary) < MIN_CONTRAST:
        base = DARK_BACKDROP
    return _mix(base, (255, 255, 255), 0.15), _mix(base, (0, 0, 0), 0.15)


def _backdrop(w: int, h: int, top: RGB, bottom: RGB) -> Image.Image:
    # A 1-px column stretched sideways: cheap at any size.
    column = Image.new("RGB", (1, h))
    column.putdata([_mix(top, bottom, y / max(1, h - 1)) for y in range(h)])
    return column.resize((w, h))


def _fabric(
    request: ImageRequest, mask: Image.Image, primary: RGB, secondary: RGB, rng
) -> Image.Image:
    """The garment's cloth: its colour and pattern, darker towards its edges
    for volume, a few soft folds. Drawn full-frame; the mask cuts it out."""
    w, h = mask.size
    cloth = Image.new("RGB", (w, h), primary)
    draw = ImageDraw.Draw(cloth)
    pattern = (request.pattern or "").lower()
    if pattern in ("striped", "stripes", "stripe"):
        step = max(6, w // 28)
        for x in range(-h, w, step * 2):
            draw.polygon(
                [(x, 0), (x + step, 0), (x + step + h // 3, h), (x + h // 3, h)], fill=secondary
            )
    elif pattern in ("floral", "polka dot", "dotted", "patterned", "print"):
        for _ in range(120):
            x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(w * 0.01, w * 0.03)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=secondary)
    left, top, right, bottom = mask.getbbox() or (0, 0, w, h)
    for _ in range(3):  # folds falling from the top of the garment
        x = rng.uniform(left + (right - left) * 0.35, left + (right - left) * 0.65)
        draw.line(
            [(x, top + (bottom - top) * 0.15), (x + rng.uniform(-0.05, 0.05) * w, bottom)],
            fill=_mix(primary, (255, 255, 255), 0.2),
            width=max(1, w // 300),
        )
    # Volume: the cloth darkens within a band along its outline.
    inner = mask.filter(ImageFilter.GaussianBlur(max(1, w // 80)))
    return Image.composite(cloth, Image.blend(cloth, Image.new("RGB", (w, h)), 0.25), inner)


def render(request: ImageRequest, index: int, long_side: int = LONG_SIDE) -> bytes:
    """One PNG: the garment asked for (``local_shapes``), in the palette's first
    colour, on a backdrop that sets it off. Nothing is drawn outside it."""
    w, h = dimensions(request.aspect_ratio, long_side)
    seed = int.from_bytes(hashlib.sha256(f"{request.generation_id}:{index}".encode()).digest()[:8])
    rng = random.Random(seed)
    palette = [color_rgb(c) for c in request.palette] or DEFAULT_PALETTE
    primary = palette[0]
    secondary = palette[1] if len(palette) > 1 else _mix(primary, (255, 255, 255), 0.6)
    img = _backdrop(w, h, *backdrop_colours(primary, secondary))
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon(outline(request.garment_type, request.prompt, w, h, rng), fill=255)
    cloth = _fabric(request, mask, primary, secondary, rng)
    img.paste(cloth, (0, 0), mask.filter(ImageFilter.GaussianBlur(max(1, w // 400))))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


class LocalProvider:
    """The catalogue's ``local`` entry. With the photo as a reference it draws
    what the photo's analysis found (garment, colours, pattern): it cannot
    look at pixels the way a model does, but the pipeline runs offline alike."""

    id, model, key_env_var = LOCAL.id, LOCAL.model, LOCAL.key_env_var
    capabilities = LOCAL.capabilities

    def __init__(self, long_side: int = LONG_SIDE) -> None:
        self.long_side = long_side

    @staticmethod
    def price_for(request: ImageRequest) -> float:
        return LOCAL.price_for(request)

    def generate(self, request: ImageRequest) -> ProviderResult:
        outputs = [
            ImageOutput(data=render(request, i, self.long_side), content_type="image/png")
            for i in range(request.count)
        ]
        w, h = dimensions(request.aspect_ratio, self.long_side)
        sent = {
            "aspectRatio": request.aspect_ratio,
            "size": f"{w}x{h}",
            "n": request.count,
            "prompt": request.prompt,
            "negativePrompt": request.negative_prompt,
            "garment": request.garment_type,
            "drawn": garment_category(request.garment_type) or "dress",
            "palette": request.palette,
            "pattern": request.pattern,
        }
        if request.references:  # drawn from its analysis; recorded, never its bytes
            ref = request.references[0]
            sent["reference"] = describe_reference(ref.data, ref.content_type)
        return ProviderResult(outputs=outputs, sent=sent)
