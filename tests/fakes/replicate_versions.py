"""The fake Replicate's community models, run by version (``POST
/v1/predictions`` with ``version``), and the files API they take images from
(``POST /v1/files``, multipart field ``content``, as the SDK uploads).

Each pinned version enforces its model's documented input schema (from its
API page, see ``app/providers/refiners.py``): unknown inputs, wrong types,
out-of-range values and a missing ``image`` are 422 with ``invalid_fields``;
an unknown version is 422 too, as Replicate answers it. ``image`` must be the
URL of a file uploaded here (the fake reads it to size its output):

- ``nightmareai/real-esrgan``: a PNG ``scale`` times the input's size;
- ``851-labs/background-remover``: an RGBA PNG of the input's size, its
  border transparent.
"""

from __future__ import annotations

import io
import secrets
import time
from typing import Any

from PIL import Image, ImageDraw
from werkzeug.wrappers import Request, Response

from ._server import json_response

REAL_ESRGAN = "42fed1c4974146d4d2414e2be2c5277c7fcf05fcc3a73abf41610695738c1d7b"
BACKGROUND_REMOVER = "a029dff38972b5fda4ec5d75d7d1cd25aeff621d2cf4946a41055d7db66b80bc"
BACKGROUND_TYPES = ("rgba", "map", "green", "white", "blur", "overlay")

# version -> (model, {input: (JSON types, check or None)}, required inputs)
NUMBER = (int, float)
VERSIONS: dict[str, tuple[str, dict[str, tuple[tuple[type, ...], Any]], tuple[str, ...]]] = {
    REAL_ESRGAN: (
        "nightmareai/real-esrgan",
        {
            "image": ((str,), None),
            "scale": (NUMBER, lambda v: 0 <= v <= 10 or "scale must be between 0 and 10"),
            "face_enhance": ((bool,), None),
        },
        ("image",),
    ),
    BACKGROUND_REMOVER: (
        "851-labs/background-remover",
        {
            "image": ((str,), None),
            "threshold": (NUMBER, lambda v: 0 <= v <= 1 or "threshold must be 0.0-1.0"),
            "reverse": ((bool,), None),
            "background_type": (
                (str,),
                lambda v: (
                    v in BACKGROUND_TYPES or f"background_type must be one of {BACKGROUND_TYPES}"
                ),
            ),
            "format": ((str,), lambda v: v in ("png", "jpg", "webp") or "unknown format"),
        },
        ("image",),
    ),
}


def invalid_inputs(version: str, inputs: dict[str, Any]) -> list[dict[str, str]]:
    """What Replicate's schema validation would refuse, as ``invalid_fields``."""
    if version not in VERSIONS:
        return [{"type": "invalid", "field": "version", "description": "Invalid version"}]
    _, schema, required = VERSIONS[version]
    bad = []
    for key, value in inputs.items():
        if key not in schema:
            bad.append(("additional_property_not_allowed", "input", f"{key} is not allowed"))
            continue
        types, check = schema[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            bad.append(("invalid_type", f"input.{key}", f"{key} has the wrong type"))
        elif check and (why := check(value)) is not True:
            bad.append(("enum", f"input.{key}", why))
    bad += [("required", "input", f"{k} is required") for k in required if k not in inputs]
    return [{"type": t, "field": f, "description": d} for t, f, d in bad]


class VersionedModels:
    """Mixed into ``FakeReplicate``: its ``lock``, ``counters``, ``predictions``."""

    def init_versions(self) -> None:
        self.files: dict[str, bytes] = {}
        self.uploads = 0

    def upload(self, request: Request) -> Response:
        content = request.files.get("content")
        if content is None:
            return json_response({"detail": "content is required", "status": 422}, 422)
        data = content.read()
        fid = secrets.token_hex(12)
        with self.lock:
            self.files[fid] = data
            self.counters["upload"] += 1
        base = request.host_url.rstrip("/")
        return json_response(
            {
                "id": fid,
                "name": content.filename,
                "content_type": content.mimetype,
                "size": len(data),
                "etag": fid,
                "checksums": {},
                "metadata": {},
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "expires_at": None,
                "urls": {"get": f"{base}/v1/files/{fid}"},
            },
            201,
        )

    def uploaded(self, url: str) -> bytes | None:
        return self.files.get(url.rstrip("/").rsplit("/", 1)[-1])

    def refine_output(self, p: dict[str, Any]) -> bytes:
        """What a succeeded refine prediction serves."""
        with Image.open(io.BytesIO(self.uploaded(p["input"]["image"]) or b"")) as src:
            w, h = src.size
        if p["version"] == REAL_ESRGAN:
            scale = p["input"].get("scale", 4)
            img = Image.new("RGB", (round(w * scale), round(h * scale)), (200, 40, 60))
        else:
            img = Image.new("RGBA", (w, h), (0, 0, 0, 0))
            ImageDraw.Draw(img).ellipse([w // 4, h // 4, 3 * w // 4, 3 * h // 4], (200, 40, 60))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return buf.getvalue()

    def check_versioned(self, body: dict[str, Any]) -> list[dict[str, str]]:
        inputs = body.get("input")
        if not isinstance(inputs, dict):
            return [{"type": "required", "field": "input", "description": "input is required"}]
        invalid = invalid_inputs(str(body.get("version")), inputs)
        image = inputs.get("image")
        if isinstance(image, str) and self.uploaded(image) is None:
            invalid.append(
                {"type": "format", "field": "input.image", "description": "image: not a file"}
            )
        return invalid
