"""Checking an uploaded garment photo by its content, never its name."""

from __future__ import annotations

import io
import warnings

from PIL import Image
from werkzeug.datastructures import FileStorage

from app.api.errors import ApiError

ALLOWED = {
    "PNG": ("image/png", "png"),
    "JPEG": ("image/jpeg", "jpg"),
    "WEBP": ("image/webp", "webp"),
}


def read_image(file: FileStorage, max_bytes: int, max_pixels: int) -> tuple[bytes, str, str]:
    """Returns (bytes, content type, extension) or raises the right 4xx."""
    data = file.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, "payload_too_large", f"image exceeds {max_bytes // (1024 * 1024)} MB")
    if not data:
        raise ApiError(
            422,
            "validation_error",
            "the image file is empty",
            [{"field": "image", "message": "empty file"}],
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, (w, h) = img.format, img.size
                if fmt in ALLOWED and w * h <= max_pixels:
                    img.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(422, "image_too_large", "image has too many pixels") from None
    except Exception:
        raise ApiError(
            415, "unsupported_media_type", "the upload is not a readable PNG, JPEG or WebP image"
        ) from None
    if fmt not in ALLOWED:
        raise ApiError(
            415, "unsupported_media_type", f"{fmt} images are not accepted: send PNG, JPEG or WebP"
        )
    if w * h > max_pixels:
        raise ApiError(
            422, "image_too_large", f"image has {w * h} pixels; at most {max_pixels} are accepted"
        )
    content_type, ext = ALLOWED[fmt]
    return data, content_type, ext
