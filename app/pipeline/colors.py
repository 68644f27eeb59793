"""Named fashion colours: the vocabulary ``analyze`` names pixels with and
the palette the ``local`` renderer paints from."""

from __future__ import annotations

import re

RGB = tuple[int, int, int]


def _table(text: str) -> dict[str, RGB]:
    """``"sky-blue 135 190 235, ..."`` -> ``{"sky blue": (135, 190, 235), ...}``."""
    rows = (row.split() for row in text.split(","))
    return {name.replace("-", " "): (int(r), int(g), int(b)) for name, r, g, b in rows}


FASHION_COLORS = _table(
    """black 20 20 22, charcoal 54 69 79, grey 128 128 128, silver 192 192 196,
    white 250 250 250, ivory 255 255 240, cream 255 253 208, beige 222 203 164,
    camel 193 154 107, tan 210 180 140, brown 110 68 38, chocolate 72 40 22,
    burgundy 128 0 32, maroon 110 20 35, red 210 30 40, coral 255 127 80,
    orange 240 120 20, rust 183 65 14, mustard 225 173 1, yellow 250 220 50,
    gold 212 175 55, olive 110 110 40, sage 156 175 136, green 40 140 60,
    emerald 0 120 80, teal 0 128 128, turquoise 64 224 208, sky-blue 135 190 235,
    blue 30 80 200, cobalt 0 71 171, navy 20 30 75, lavender 190 170 220,
    purple 110 40 140, plum 100 40 80, blush 240 190 190, pink 240 130 170,
    fuchsia 220 40 140"""
)
# Names a designer may write that ``analyze`` does not name pixels with (so
# its vocabulary stays stable): recognised in words and painted by ``local``.
EXTRA_COLORS = _table(
    """gray 128 128 128, crimson 190 20 50, scarlet 230 36 20, ruby 155 17 30,
    wine 114 47 55, mint 170 230 200, lime 150 200 50, khaki 195 176 145,
    lilac 200 162 200, mauve 190 140 170, peach 255 203 164, nude 227 188 154,
    taupe 150 130 115, ecru 215 200 160, champagne 247 231 206, indigo 50 40 110,
    magenta 220 0 140, aqua 0 200 200, copper 184 115 51, bronze 205 127 50,
    terracotta 200 100 70, mocha 120 90 70"""
)
NAMED_COLORS = {**FASHION_COLORS, **EXTRA_COLORS}
# Basic hues that, right after another colour, only qualify it ("sage green").
HUES = frozenset("green blue red pink yellow purple orange brown grey gray".split())


def nearest_color(rgb: RGB) -> str:
    """Name of the closest fashion colour, by a perceptually weighted distance."""
    r, g, b = rgb

    def dist(c: RGB) -> float:
        # "redmean" weighting: cheap and much closer to perception than plain RGB.
        rm = (r + c[0]) / 2
        dr, dg, db = r - c[0], g - c[1], b - c[2]
        return (2 + rm / 256) * dr * dr + 4 * dg * dg + (2 + (255 - rm) / 256) * db * db

    return min(FASHION_COLORS, key=lambda name: dist(FASHION_COLORS[name]))


def color_rgb(name: str | None) -> RGB:
    """The colour a name or #rrggbb says; grey for none or one not known."""
    grey = (128, 128, 128)
    if not name:
        return grey
    key = name.strip().lower()
    if key in NAMED_COLORS:
        return NAMED_COLORS[key]
    if key.startswith("#") and len(key) == 7:
        try:
            return tuple(int(key[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            return grey
    named = named_in(key)  # "deep sage green" -> sage
    if named:
        return NAMED_COLORS[named[0]]
    for known, rgb in FASHION_COLORS.items():
        if known in key or key in known:
            return rgb
    return grey


# Longest first ("sky blue" before "blue"), each compiled once.
_WORDS = [
    (name, re.compile(rf"\b{re.escape(name)}\b"))
    for name in sorted(NAMED_COLORS, key=len, reverse=True)
]


def named_in(text: str) -> list[str]:
    """Fashion colours named in ``text`` as whole words, in order of appearance
    ("tailored" does not name red; "sky blue" beats "blue"; "sage green" is
    sage)."""
    lowered = text.lower()
    found: list[tuple[int, str]] = []
    for name, word in _WORDS:
        if name not in lowered:  # most are not: a substring test is far cheaper
            continue
        for m in word.finditer(lowered):
            if not any(start <= m.start() < start + len(n) for start, n in found):
                found.append((m.start(), name))
    kept: list[str] = []
    end = -2
    for start, name in sorted(found):
        qualifies = name in HUES and start - end <= 1 and lowered[end:start] in ("", " ", "-")
        if not qualifies:
            kept.append(name)
        end = start + len(name)
    return list(dict.fromkeys(kept))
