"""``bff generate`` as a user runs it: a subprocess talking HTTP to the
embedded system (``bff dev``), started once for this module."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import requests
from PIL import Image

from tests.support.pipeline import png_bytes
from tests.support.services import free_port

BFF = str(Path(sys.executable).parent / "bff")
URL = re.compile(r"^https?://\S+$", re.M)


def bff_generate(env: dict[str, str], *args: str, cwd: Path | None = None):
    return subprocess.run(
        [BFF, "generate", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def assert_png_urls(stdout: str, size: tuple[int, int] | None = None) -> list[str]:
    urls = URL.findall(stdout)
    assert urls, stdout
    for url in urls:
        resp = requests.get(url, timeout=10)
        assert resp.status_code == 200, url
        img = Image.open(io.BytesIO(resp.content))
        assert img.format == "PNG"
        if size:
            assert img.size == size
    return urls


def test_generate_from_a_prompt_and_wait(embedded):
    done = bff_generate(embedded.env, "emerald silk slip dress", "--wait", "--size", "16:9")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"^submitted gen_\w+$", out, re.M), out
    for stage in ("enhance", "route", "generate", "store"):
        assert re.search(rf"^\s+(\S\s+)?{stage}\s+completed", out, re.M), out
    assert re.search(r"^\s+(\S\s+)?analyze\s+skipped", out, re.M), out
    assert "completed in local" in out
    [url] = assert_png_urls(out)
    assert url.startswith(f"{embedded.base_url}/cdn/users/")
    img = Image.open(io.BytesIO(requests.get(url, timeout=10).content))
    assert img.width > img.height  # 16:9


def test_generate_from_an_image_and_wait(embedded, tmp_path):
    photo = tmp_path / "coat.jpg"
    photo.write_bytes(png_bytes((120, 160), "navy", fmt="JPEG"))
    done = bff_generate(embedded.env, "a navy coat", "--image", str(photo), "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^\s+(\S\s+)?analyze\s+completed", done.stdout, re.M), done.stdout
    assert_png_urls(done.stdout)


def test_generate_from_the_photo_itself_on_the_embedded_default(embedded, tmp_path):
    """``--reference image`` without keys: ``local`` stands in for the models
    that take the photo, and records the photo it was given."""
    photo = tmp_path / "skirt.png"
    photo.write_bytes(png_bytes((100, 120), "olive"))
    done = bff_generate(
        embedded.env, "an olive skirt", "--image", str(photo), "--reference", "image", "--wait"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "completed in local" in done.stdout
    gen_id = re.search(r"^submitted (gen_\w+)$", done.stdout, re.M).group(1)
    gen = requests.get(
        f"{embedded.base_url}/api/generate/{gen_id}",
        headers={"Authorization": f"Bearer {embedded.key}"},
        timeout=10,
    ).json()
    assert gen["settings"]["reference"] == "image"
    generate = next(s for s in gen["stages"] if s["name"] == "generate")
    assert generate["output"]["sent"]["reference"]["bytes"] == photo.stat().st_size
    refused = bff_generate(embedded.env, "x", "--reference", "image")  # no photo to send
    assert refused.returncode != 0 and "422" in refused.stderr


def test_generate_without_wait_only_submits(embedded):
    done = bff_generate(embedded.env, "red wool coat")
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.strip().splitlines()
    gen_id = line.removeprefix("submitted ")
    resp = requests.get(
        f"{embedded.base_url}/api/generate/{gen_id}",
        headers={"Authorization": f"Bearer {embedded.key}"},
        timeout=10,
    )
    assert resp.status_code == 200


def test_generate_reports_errors_in_words(embedded):
    no_key = bff_generate(embedded.env, "x", "--provider", "google-imagen")
    assert no_key.returncode != 0
    assert "422" in no_key.stderr and "REPLICATE_API_TOKEN" in no_key.stderr
    bad = bff_generate({**embedded.env, "BFF_API_KEY": "bff_00000000_nope"}, "x")
    assert bad.returncode != 0 and "401" in bad.stderr
    unset = bff_generate({k: v for k, v in embedded.env.items() if k != "BFF_API_KEY"}, "x")
    assert unset.returncode != 0 and "BFF_API_KEY" in unset.stderr
    down = bff_generate({**embedded.env, "BFF_API_URL": f"http://127.0.0.1:{free_port()}"}, "x")
    assert down.returncode != 0 and "cannot reach the API" in down.stderr


def test_refine_an_image_and_wait(embedded):
    done = bff_generate(embedded.env, "black wool coat", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    gen_id = re.search(r"^submitted (gen_\w+)$", done.stdout, re.M).group(1)
    headers = {"Authorization": f"Bearer {embedded.key}"}
    gen = requests.get(f"{embedded.base_url}/api/generate/{gen_id}", headers=headers, timeout=10)
    [asset] = gen.json()["assets"]
    args = ["--upscale", "2", "--remove-background", "--wait"]
    refine = subprocess.run(
        [BFF, "refine", gen_id, str(asset["id"]), *args],
        env=embedded.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refine.returncode == 0, refine.stdout + refine.stderr
    assert re.search(r"^\s+(\S\s+)?refine\s+completed", refine.stdout, re.M), refine.stdout
    assert "analyze" not in refine.stdout  # the stages of before are not shown again
    shown = re.findall(r"^asset \d+ (\w+) from (\d+), (\S+):\n(\S+)$", refine.stdout, re.M)
    sizes = {variant: (int(source), size) for variant, source, size, _url in shown}
    double = f"{asset['width'] * 2}x{asset['height'] * 2}"
    same = f"{asset['width']}x{asset['height']}"
    want = {"upscaled": (asset["id"], double), "cutout": (asset["id"], same)}
    assert sizes == want, refine.stdout
    assert_png_urls("\n".join(url for *_, url in shown))
    no_option = subprocess.run([BFF, "refine", gen_id, str(asset["id"])], env=embedded.env,
                               capture_output=True, text=True, timeout=60)  # fmt: skip
    assert no_option.returncode != 0 and "--upscale" in no_option.stderr
