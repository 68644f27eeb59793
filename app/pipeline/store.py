"""Stage 7, ``store``: fetch every output, verify it is an image, put it in the
bucket under its deterministic key and record the asset (size, dimensions,
content type, CDN URL). Re-running it overwrites the same keys and rows."""

from __future__ import annotations

import io

import requests
from PIL import Image
from sqlalchemy import select

from ..models import GenerationAsset
from ..storage import StorageError, asset_key
from .context import StageContext, StageFailed, StageResult, StageTransient

MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
FORMATS = {
    "PNG": ("image/png", "png"),
    "JPEG": ("image/jpeg", "jpg"),
    "WEBP": ("image/webp", "webp"),
}


def download(url: str, limit: int = MAX_DOWNLOAD_BYTES) -> bytes:
    """Fetch a provider output, refusing non-images and anything over ``limit``."""
    try:
        with requests.get(url, stream=True, timeout=(5, 60)) as resp:
            if resp.status_code in (404, 410):
                raise StageFailed(
                    "the provider's output has expired or was deleted; generate the image again"
                )
            if resp.status_code >= 500 or resp.status_code == 429:
                raise StageTransient(f"output download failed with HTTP {resp.status_code}")
            if resp.status_code >= 400:
                raise StageFailed(f"output download refused with HTTP {resp.status_code}")
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
            if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
                raise StageFailed(f"provider output is not an image ({ctype})")
            chunks, size = [], 0
            for chunk in resp.iter_content(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise StageFailed(f"provider output exceeds {limit // (1024 * 1024)} MB")
                chunks.append(chunk)
            return b"".join(chunks)
    except requests.RequestException as exc:
        raise StageTransient(f"output download failed: {type(exc).__name__}") from exc


def run(ctx: StageContext) -> StageResult:
    gen = ctx.generation
    outputs = ctx.output_of("generate").get("outputs") or []
    if not outputs:
        raise StageFailed("the provider returned no images")
    existing = {
        a.position: a
        for a in ctx.session.scalars(
            select(GenerationAsset).where(GenerationAsset.generation_id == gen.id)
        )
    }
    recorded = []
    for ref in outputs:
        i = int(ref["index"])
        try:
            data = (
                ctx.storage.get(ref["storedKey"]) if ref.get("storedKey") else download(ref["url"])
            )
        except KeyError as exc:
            raise StageFailed("the generated image is missing from storage") from exc
        except StorageError as exc:
            raise StageTransient(f"storage unavailable: {exc}") from exc
        try:
            with Image.open(io.BytesIO(data)) as img:
                fmt, (width, height) = img.format, img.size
        except Exception as exc:
            raise StageFailed("the provider returned data that is not an image") from exc
        if fmt not in FORMATS:
            raise StageFailed(f"the provider returned an unsupported image format ({fmt})")
        content_type, ext = FORMATS[fmt]
        key = asset_key(gen.user_id, gen.id, i, ext)
        try:
            url = (
                ctx.storage.url(key)
                if ref.get("storedKey") == key
                else ctx.storage.put(key, data, content_type)
            )
        except StorageError as exc:
            raise StageTransient(f"storage unavailable: {exc}") from exc
        asset = existing.get(i) or GenerationAsset(generation_id=gen.id, position=i)
        asset.r2_key, asset.cdn_url, asset.content_type = key, url, content_type
        asset.file_size, asset.width, asset.height = len(data), width, height
        asset.provider_id, asset.asset_type = gen.provider, "image"
        asset.meta = {k: v for k, v in ref.items() if k not in ("storedKey", "index")}
        ctx.session.add(asset)
        recorded.append(
            {
                "index": i,
                "key": key,
                "url": url,
                "width": width,
                "height": height,
                "fileSize": len(data),
            }
        )
    return StageResult({"assets": recorded})
