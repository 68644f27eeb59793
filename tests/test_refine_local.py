"""Stage 7 on the offline engine: a Lanczos upscale of the right size, a real
cut-out (transparent backdrop, opaque garment), both variants of their
source in the generation's JSON, free."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from app.pipeline import ALL_STAGES, STAGES
from app.providers import local_refine
from app.providers.base import ImageRequest
from app.providers.local import render
from tests.support.pipeline import load, run_all, services, stages_by_name, submit_prompt


def _image(app, url: str) -> Image.Image:
    key = url.split("/cdn/", 1)[1]
    return Image.open(io.BytesIO(services(app).storage.get(key)))


def test_a_generation_without_refine_runs_seven_stages_and_its_assets_are_originals(app, user):
    gen_id = submit_prompt(app.test_client(), user.headers, "red silk dress", provider="local")
    run_all(app, gen_id, ALL_STAGES)
    gen = load(app, gen_id)
    assert gen["status"] == "completed"
    assert [s["name"] for s in gen["stages"]] == list(STAGES)
    assert [(a["variant"], a["sourceAssetId"]) for a in gen["assets"]] == [("original", None)]
    assert "upscale" not in gen["settings"] and "removeBackground" not in gen["settings"]


def test_upscale_and_cut_out_in_the_chain_make_two_variants_of_each_image(app, user):
    gen_id = submit_prompt(
        app.test_client(),
        user.headers,
        "red silk dress",
        provider="local",
        count=2,
        upscale=2,
        removeBackground=True,
    )
    run_all(app, gen_id, ALL_STAGES)
    gen = load(app, gen_id)
    assert gen["status"] == "completed", gen["error"]
    assert [s["name"] for s in gen["stages"]] == [*STAGES, "refine"]
    assert stages_by_name(gen)["refine"]["status"] == "completed"
    originals = [a for a in gen["assets"] if a["variant"] == "original"]
    assert len(originals) == 2 and len(gen["assets"]) == 6
    for orig in originals:
        variants = {a["variant"]: a for a in gen["assets"] if a["sourceAssetId"] == orig["id"]}
        assert set(variants) == {"upscaled", "cutout"}
        up, cut = variants["upscaled"], variants["cutout"]
        assert (up["width"], up["height"]) == (orig["width"] * 2, orig["height"] * 2)
        assert _image(app, up["url"]).size == (up["width"], up["height"])
        assert cut["contentType"] == "image/png" and (cut["width"], cut["height"]) == (
            orig["width"],
            orig["height"],
        )
        img = _image(app, cut["url"])
        assert img.mode == "RGBA"
        assert img.getpixel((1, 1))[3] == 0  # backdrop: transparent
        assert img.getpixel((img.width // 2, img.height // 2))[3] == 255  # garment: opaque
    assert gen["cost"] == 0.0


def test_running_refine_again_adds_nothing(app, user):
    gen_id = submit_prompt(
        app.test_client(), user.headers, "red dress", provider="local", upscale=4
    )
    run_all(app, gen_id, ALL_STAGES)
    from app.pipeline.runner import run_stage

    s = services(app)
    run_stage(s.db, s.settings, s.storage, gen_id, "refine", task_id="again")
    assets = load(app, gen_id)["assets"]
    assert [a["variant"] for a in assets] == ["original", "upscaled"]
    assert assets[1]["width"] == assets[0]["width"] * 4


@pytest.mark.parametrize("pattern", [None, "striped", "floral"])
def test_the_cut_out_keeps_the_garment_whole_and_drops_the_backdrop(pattern):
    palette = ["black", "white"]
    request = ImageRequest("gen_t", "a dress", palette=palette, garment_type="dress")
    request.pattern = pattern
    original = Image.open(io.BytesIO(render(request, 0, 256))).convert("RGB")
    cut = Image.open(io.BytesIO(local_refine.cutout(render(request, 0, 256), palette)))
    alpha = cut.getchannel("A")
    # The garment: what differs from the backdrop's row colour (its first pixel).
    garment = opaque = 0
    for y in range(0, 256, 4):
        row_bg = original.getpixel((0, y))
        for x in range(0, 256, 4):
            far = max(abs(a - b) for a, b in zip(original.getpixel((x, y)), row_bg, strict=True))
            a = alpha.getpixel((x, y))
            if far > 80:  # surely garment (the darkest of patterns included)
                garment += 1
                opaque += a == 255
            elif far == 0:
                assert a == 0 or _inside(alpha, x, y)  # backdrop, or a pattern dot in the cloth
    assert garment > 100 and opaque / garment > 0.97


def _inside(alpha: Image.Image, x: int, y: int) -> bool:
    """Opaque pixels both left and right of (x, y) on its row: inside the garment."""
    row = [alpha.getpixel((i, y)) for i in range(alpha.width)]
    return any(row[:x]) and any(row[x + 1 :])


def test_upscale_is_lanczos_sized_and_keeps_transparency():
    request = ImageRequest("gen_u", "a skirt", palette=["navy"], garment_type="skirt")
    cut = local_refine.cutout(render(request, 0, 64), ["navy"])
    big = Image.open(io.BytesIO(local_refine.upscale(cut, 4)))
    assert big.size == (256, 256) and big.mode == "RGBA"
    assert big.getpixel((0, 0))[3] == 0
