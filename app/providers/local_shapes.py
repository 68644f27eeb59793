"""Garment outlines for the ``local`` renderer: one closed polygon per garment
category (``subject.GARMENTS``), laid on a standing figure so each sits where
it is worn: a skirt from the waist, a top down to the hips, trousers and a
jumpsuit with a gap between the legs. Lengths follow the prompt's words
("mini", "midi", "maxi"...) where it names one."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from app.pipeline.subject import garment_category

Point = tuple[float, float]

# Heights on the figure, as a share of its height from the shoulders down.
SHOULDER, ARMPIT, WAIST, HIP, CROTCH, ANKLE = 0.0, 0.14, 0.33, 0.45, 0.53, 1.0
LENGTHS = {  # word in the prompt -> hem height
    "mini": 0.58,
    "short": 0.6,
    "knee-length": 0.7,
    "midi": 0.8,
    "tea-length": 0.84,
    "ankle-length": 0.97,
    "maxi": 0.98,
    "floor-length": 1.0,
}
LONG_COATS = {"coat", "overcoat", "peacoat", "trench", "trenchcoat", "parka"}


@dataclass(frozen=True)
class Figure:
    """Where the figure stands: centre x, shoulder and ankle y, half shoulder width."""

    cx: float
    top: float
    height: float
    u: float

    def at(self, dx: float, level: float) -> Point:
        return (self.cx + dx * self.u, self.top + level * self.height)


def figure(w: int, h: int, rng: random.Random) -> Figure:
    top, bottom = h * 0.1, h * 0.93
    u = min(w * 0.16, (bottom - top) * 0.13)
    return Figure(w / 2 + rng.uniform(-0.02, 0.02) * w, top, bottom - top, u)


def _mirror(f: Figure, right: list[tuple[float, float]]) -> list[Point]:
    """A symmetric outline from its right half (top to bottom, as (dx, level))."""
    return [f.at(dx, lv) for dx, lv in right] + [f.at(-dx, lv) for dx, lv in reversed(right)]


def _hem(prompt: str, default: float) -> float:
    for word, level in LENGTHS.items():
        if re.search(rf"(?<![a-z-]){word}(?![a-z-])", prompt.lower()):
            return level
    return default


def _upper(sleeve_to: float) -> list[tuple[float, float]]:
    """Neck, shoulder, a sleeve ending at ``sleeve_to``, back to the armpit."""
    return [
        (0.35, SHOULDER),
        (1.0, SHOULDER + 0.03),
        (1.15 + sleeve_to * 1.1, sleeve_to),
        (0.95 + sleeve_to * 1.1, sleeve_to + 0.05),
        (0.85, ARMPIT + 0.02),
    ]


def _legs(hem: float) -> list[tuple[float, float]]:
    """Hips down to the hem, then up the inside leg to the crotch (the centre)."""
    return [(0.92, HIP), (0.85, hem), (0.25, hem), (0.0, CROTCH)]


def outline(garment: str | None, prompt: str, w: int, h: int, rng: random.Random) -> list[Point]:
    """The garment's polygon on a ``w`` x ``h`` canvas (a dress when unknown)."""
    f = figure(w, h, rng)
    word = (garment or "").lower()
    kind = garment_category(word) or "dress"
    if kind == "skirt":
        hem = _hem(prompt, 0.72)
        return _mirror(f, [(0.62, WAIST), (0.88, HIP), (0.9 + (hem - HIP) * 1.6, hem)])
    if kind == "trousers":
        hem = 0.66 if "shorts" in word else _hem(prompt, ANKLE)
        return _mirror(f, [(0.65, WAIST), *_legs(max(hem, CROTCH + 0.1))])
    if kind == "top":
        return _mirror(f, [*_upper(0.3), (0.88, HIP), (0.9, HIP + 0.03)])
    if kind == "jacket":
        hem = _hem(prompt, 0.85 if any(c in word for c in LONG_COATS) else 0.58)
        return _mirror(f, [*_upper(0.45), (0.95, WAIST), (1.0 + (hem - WAIST) * 0.3, hem)])
    if kind == "jumpsuit":
        return _mirror(f, [*_upper(0.2), (0.68, WAIST), *_legs(_hem(prompt, ANKLE))])
    flare = rng.uniform(1.5, 2.1)
    hem = _hem(prompt, 0.95 if "gown" in word else 0.82)
    return _mirror(
        f,
        [(0.4, SHOULDER), (0.95, SHOULDER + 0.05), (0.8, ARMPIT), (0.62, WAIST), (flare, hem)],
    )
