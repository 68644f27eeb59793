"""The offline ``local`` renderer draws the garment asked for, judged by its
mask (pixels far from the backdrop of their row), not by eye."""

from __future__ import annotations

import io
from collections import Counter

import pytest
from PIL import Image, ImageDraw

from app.pipeline.colors import nearest_color
from app.providers.base import ImageRequest
from app.providers.local import LocalProvider, render
from tests.support.pipeline import load, run_all, services, stages_by_name, submit_prompt

SIDE = 240
FAR = 60  # colour distance from the backdrop that counts as garment


def facts(img: Image.Image) -> dict:
    """Shape facts of the garment mask (pixels far from the backdrop, which is
    a vertical gradient: its colour in a row is the row's first pixel)."""
    w, h = img.size
    raw = img.convert("RGB").tobytes()
    px = list(zip(raw[0::3], raw[1::3], raw[2::3], strict=True))
    inside = [
        sum((a - b) ** 2 for a, b in zip(p, px[i - i % w], strict=True)) > FAR**2
        for i, p in enumerate(px)
    ]
    mask = Image.new("L", (w, h))
    mask.putdata([255 * v for v in inside])
    left, top, right, bottom = mask.getbbox()
    probe = round(top + 0.85 * (bottom - top))  # near the hem: are there two legs?
    row = [x for x in range(w) if inside[probe * w + x]]
    gaps = [  # between the legs: a gap in the middle (not beside a sleeve)
        b - a - 1
        for a, b in zip(row, row[1:], strict=False)
        if b - a > 1 and abs((a + b) / 2 - (left + right) / 2) < 0.1 * (right - left)
    ]
    colours: Counter[str] = Counter()
    for rgb, n in Counter(p for p, v in zip(px, inside, strict=True) if v).items():
        colours[nearest_color(rgb)] += n
    first = inside.index(True)  # one piece: a flood fill from one pixel reaches all
    ImageDraw.floodfill(mask, (first % w, first // w), 128, thresh=0)
    return {
        "top": top / h,
        "bottom": bottom / h,
        "leg_gap": max(gaps, default=0),
        "colour": colours.most_common(1)[0][0],
        "one_piece": mask.histogram()[255] == 0,
    }


def drawn(garment: str, colour: str, ratio: str = "3:4", prompt: str = "") -> dict:
    request = ImageRequest(
        generation_id="gen_shapes",
        prompt=prompt or f"{colour} {garment}",
        palette=[colour],
        garment_type=garment,
        aspect_ratio=ratio,
    )
    return facts(Image.open(io.BytesIO(render(request, 0, SIDE))))


# (a white blouse would vanish on the light backdrop: it turns dark)
SHAPES = dict(dress="maroon", skirt="cobalt", trousers="sage", blouse="white", blazer="navy")
SHAPES["jumpsuit"] = "emerald"


@pytest.mark.parametrize("ratio", ["3:4", "1:1", "16:9"])
def test_each_garment_type_has_its_own_shape_in_its_colour_and_nothing_else(ratio):
    f = {g: drawn(g, c, ratio) for g, c in SHAPES.items()}
    for garment, colour in SHAPES.items():
        assert f[garment]["colour"] == colour, garment
        assert f[garment]["one_piece"], garment  # no stray lines or shadows
    shoulders = f["dress"]["top"]
    assert f["skirt"]["top"] > shoulders + 0.2  # from the waist, not the shoulders
    for upper in ("blouse", "blazer", "jumpsuit"):
        assert f[upper]["top"] == pytest.approx(shoulders, abs=0.02)
    assert f["blouse"]["bottom"] < 0.55  # at the hips
    assert f["blouse"]["bottom"] < f["blazer"]["bottom"] < f["dress"]["bottom"]
    for legs in ("trousers", "jumpsuit"):
        assert f[legs]["leg_gap"] >= 2 and f[legs]["bottom"] > 0.85
    for one_piece in ("dress", "skirt", "blouse", "blazer"):
        assert f[one_piece]["leg_gap"] == 0


def test_lengths_follow_the_prompts_words():
    mini, maxi = (
        drawn("skirt", "red", prompt="red mini skirt"),
        drawn("skirt", "red", prompt="maxi"),
    )
    assert mini["bottom"] + 0.2 < maxi["bottom"]
    assert drawn("coat", "camel")["bottom"] > drawn("jacket", "camel")["bottom"] + 0.15


def test_a_text_prompt_renders_the_garment_it_names(app, user):
    gen_id = submit_prompt(
        app.test_client(), user.headers, "black leather trousers", provider="local"
    )
    run_all(app, gen_id)
    out = stages_by_name(load(app, gen_id))["generate"]["output"]
    assert out["sent"]["garment"] == "trousers" and out["sent"]["palette"] == ["black"]
    data = services(app).storage.get(out["outputs"][0]["storedKey"])
    f = facts(Image.open(io.BytesIO(data)).resize((SIDE, SIDE)))
    assert f["leg_gap"] >= 2 and f["colour"] == "black" and f["one_piece"]


def test_the_request_is_recorded_and_rendering_is_deterministic():
    request = ImageRequest(generation_id="g", prompt="p", palette=["teal"], garment_type="kilt")
    result = LocalProvider(long_side=64).generate(request)
    assert result.sent["garment"] == "kilt" and result.sent["drawn"] == "skirt"
    assert result.outputs[0].data == render(request, 0, 64)
