"""The ``store`` stage (the seventh; ``refine`` may follow): fetch every
output, check it is an image, put it in the bucket under its deterministic
key and record the asset; a re-run overwrites the same keys and rows.
Downloads come only from provider hosts (``registry.is_output_url_allowed``),
never following a redirect elsewhere, size-capped. A bucket outage fails the
job here with ``generate``'s output reference kept, so a retry resumes at
this stage without paying again.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any
from urllib.parse import urljoin

import requests
from PIL import Image
from sqlalchemy.orm import Session

from app.domain.models import GenerationAsset, utcnow
from app.pipeline.context import StageContext, StageFailed, StageResult, StageTransient
from app.platform.config import Settings
from app.platform.db import dialect_insert
from app.platform.storage import StorageError, asset_key
from app.providers.registry import is_output_url_allowed

MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
# Past this Pillow refuses to open an image (a decompression bomb): not storable.
STORABLE_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
MAX_REDIRECTS = 3
FORMATS = {
    "PNG": ("image/png", "png"),
    "JPEG": ("image/jpeg", "jpg"),
    "WEBP": ("image/webp", "webp"),
}


def download(settings: Settings, url: str, limit: int = MAX_DOWNLOAD_BYTES) -> bytes:
    """Fetch a provider output, refusing other hosts, non-images and anything over ``limit``."""
    try:
        for _ in range(MAX_REDIRECTS + 1):
            if not is_output_url_allowed(settings, url):
                raise StageFailed("refusing to download a provider output from an unexpected host")
            with requests.get(url, stream=True, timeout=(5, 60), allow_redirects=False) as resp:
                if resp.is_redirect:
                    url = urljoin(url, resp.headers.get("Location", ""))
                    continue
                return _read(resp, limit)
        raise StageFailed("too many redirects downloading the provider output")
    except requests.RequestException as exc:
        raise StageTransient(f"output download failed: {type(exc).__name__}") from exc


def _read(resp: requests.Response, limit: int) -> bytes:
    if resp.status_code in (404, 410):
        raise StageFailed(
            "the provider's output has expired or was deleted (Replicate keeps outputs "
            "for an hour); generate the image again"
        )
    if resp.status_code >= 500 or resp.status_code == 429:
        raise StageTransient(f"output download failed with HTTP {resp.status_code}")
    if resp.status_code >= 400:
        raise StageFailed(f"output download refused with HTTP {resp.status_code}")
    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
    if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
        raise StageFailed(f"provider output is not an image ({ctype})")
    declared = resp.headers.get("Content-Length", "")
    if declared.isascii() and declared.isdecimal() and int(declared) > limit:
        raise StageFailed(f"provider output exceeds {limit // (1024 * 1024)} MB")
    chunks, size = [], 0
    for chunk in resp.iter_content(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise StageFailed(f"provider output exceeds {limit // (1024 * 1024)} MB")
        chunks.append(chunk)
    return b"".join(chunks)


def _fetch(ctx: StageContext, ref: dict) -> bytes:
    if ref.get("storedKey"):
        try:
            return ctx.storage.get(ref["storedKey"])
        except KeyError as exc:
            raise StageFailed("the generated image is missing from storage") from exc
    if ref.get("data"):  # bytes kept inline because the bucket was down at generate
        try:
            return base64.b64decode(ref["data"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise StageFailed("the generated image data is corrupt") from exc
    if ref.get("url"):
        return download(ctx.settings, ref["url"])
    raise StageFailed("the provider returned no image reference")


# What a re-run rewrites of an asset row it finds (not its id, generation,
# position or created_at: feedback keeps pointing at the same asset).
_REWRITTEN = "r2_key cdn_url content_type file_size width height provider_id asset_type metadata"
_NOT_METADATA = ("storedKey", "index", "data")  # generate's bookkeeping, and the bytes


def _put_asset(session: Session, values: dict[str, Any]) -> None:
    """Insert the asset row, or rewrite the one an earlier attempt left at
    its position: one statement, no read first."""
    insert = dialect_insert(session.get_bind().dialect.name)
    stmt = insert(GenerationAsset.__table__).values(values)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["generation_id", "position"],
            set_={c: stmt.excluded[c] for c in _REWRITTEN.split()},
        )
    )


def _image(data: bytes) -> tuple[str, str, int, int]:
    """Content type, file extension, width and height of an image we store."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format, img.size
    except Exception as exc:
        raise StageFailed("the provider returned data that is not an image") from exc
    if fmt not in FORMATS:
        raise StageFailed(f"the provider returned an unsupported image format ({fmt})")
    return *FORMATS[fmt], width, height


def _store(ctx: StageContext, ref: dict[str, Any]) -> dict[str, Any]:
    gen, i = ctx.generation, int(ref["index"])
    data = _fetch(ctx, ref)
    size = len(data)
    content_type, ext, width, height = _image(data)
    key = asset_key(gen.user_id, gen.id, i, ext)
    stored = ref.get("storedKey") == key  # generate already put it there
    url = ctx.storage.url(key) if stored else ctx.storage.put(key, data, content_type)
    _put_asset(
        ctx.session,
        {
            "generation_id": gen.id,
            "position": i,
            "r2_key": key,
            "cdn_url": url,
            "content_type": content_type,
            "file_size": size,
            "width": width,
            "height": height,
            "provider_id": gen.provider,
            "asset_type": "image",
            "metadata": {k: v for k, v in ref.items() if k not in _NOT_METADATA},
            "created_at": utcnow(),
        },
    )
    return {"index": i, "key": key, "url": url, "width": width, "height": height, "fileSize": size}


def run(ctx: StageContext) -> StageResult:
    outputs = ctx.output_of("generate").get("outputs") or []
    if not outputs:
        raise StageFailed("the provider returned no images")
    try:
        return StageResult({"assets": [_store(ctx, ref) for ref in outputs]})
    except StorageError as exc:
        raise StageTransient(f"storage unavailable: {exc}") from exc
