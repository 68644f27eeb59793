"""The offline refiners for images of the ``local`` renderer (free, Pillow only).

- ``upscale``: Lanczos resize by 2 or 4, then an unsharp mask to give back the
  edge contrast resampling softens.
- ``cutout``: the renderer paints the garment on a known backdrop, a vertical
  gradient between two colours it derives from the palette
  (``local.backdrop_colours``). Alpha is how far each pixel is from the
  backdrop colour of its row (a soft ramp, so the outline stays smooth), and
  only backdrop-coloured pixels *connected to the image border* turn
  transparent: a stripe or dot of the backdrop's colour inside the garment
  stays opaque. The result is an RGBA PNG.
"""

from __future__ import annotations

import io

from PIL import Image, ImageChops, ImageDraw, ImageFilter

from app.pipeline.colors import RGB, color_rgb
from app.providers.local import DEFAULT_PALETTE, backdrop_colours

NEAR, FAR = 18, 48  # colour distance (largest channel) from the backdrop: alpha 0 … 255
FILL_SIDE = 192  # the border-connectivity test runs on an image this size (fast)


def upscale(data: bytes, scale: int) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        mode = "RGBA" if "A" in img.getbands() else "RGB"
        big = img.convert(mode).resize((img.width * scale, img.height * scale), Image.LANCZOS)
    big = big.filter(ImageFilter.UnsharpMask(radius=2, percent=60, threshold=2))
    return _png(big)


def backdrop_for(palette: list[str]) -> tuple[RGB, RGB]:
    """Top and bottom backdrop colours the renderer used for this palette
    (what ``local.render`` derives from the request's palette)."""
    colours = [color_rgb(c) for c in palette] or DEFAULT_PALETTE
    primary = colours[0]
    secondary = colours[1] if len(colours) > 1 else _mix(primary, (255, 255, 255), 0.6)
    return backdrop_colours(primary, secondary)


def cutout(data: bytes, palette: list[str]) -> bytes:
    top, bottom = backdrop_for(palette)
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    w, h = rgb.size
    column = Image.new("RGB", (1, h))
    column.putdata([_mix(top, bottom, y / max(1, h - 1)) for y in range(h)])
    diff = ImageChops.difference(rgb, column.resize((w, h)))
    r, g, b = diff.split()
    distance = ImageChops.lighter(ImageChops.lighter(r, g), b)  # largest channel difference
    ramp = [
        0 if d <= NEAR else 255 if d >= FAR else round(255 * (d - NEAR) / (FAR - NEAR))
        for d in range(256)
    ]
    alpha = distance.point(ramp)
    outside = _outside(distance)
    # Inside the garment everything is opaque; outside, the soft ramp.
    alpha = ImageChops.lighter(alpha, ImageChops.invert(outside))
    out = rgb.convert("RGBA")
    out.putalpha(alpha)
    return _png(out)


def _outside(distance: Image.Image) -> Image.Image:
    """255 where the pixel belongs to the backdrop region that touches the
    border, else 0. Found by flood fill on a small copy in which a cell is
    backdrop only if *every* pixel in it is (a max filter first): the
    garment's darker rim then walls the fill off from pattern inside it. The
    region is grown by a cell so the full-size ramp decides the outline."""
    w, h = distance.size
    cell = max(1, -(-max(w, h) // FILL_SIDE))  # ceil
    if cell > 1:
        distance = distance.filter(ImageFilter.MaxFilter(cell | 1))
    small = distance.resize((max(1, w // cell), max(1, h // cell)), Image.NEAREST)
    near = small.point(lambda d: 0 if d <= NEAR else 255)  # 0: backdrop
    sw, sh = near.size
    border = [(x, y) for x in range(sw) for y in (0, sh - 1)]
    border += [(x, y) for y in range(sh) for x in (0, sw - 1)]
    for xy in border:
        if near.getpixel(xy) == 0:
            ImageDraw.floodfill(near, xy, 128)
    region = near.point(lambda v: 255 if v == 128 else 0).filter(ImageFilter.MaxFilter(3))
    return region.resize((w, h), Image.NEAREST)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))  # type: ignore


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()
