"""Checking an uploaded garment photo by its content, never its name: the
format from its bytes, the pixel count from its header, then a full decode,
so a truncated or corrupt file is refused at submit rather than failing the
``analyze`` stage later."""

from __future__ import annotations

import io
import threading
import warnings

from PIL import Image, UnidentifiedImageError
from werkzeug.datastructures import FileStorage

from app.api.errors import ApiError, invalid, megabytes

ALLOWED = {
    "PNG": ("image/png", "png"),
    "JPEG": ("image/jpeg", "jpg"),
    "MPO": ("image/jpeg", "jpg"),  # a phone camera's JPEG with extra pictures after the first
    "WEBP": ("image/webp", "webp"),
}
# Containers Pillow cannot read, by their ISO BMFF brand (bytes 8-12, after
# "ftyp"): an iPhone's photos are HEIC unless exported.
HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"hevx", b"mif1", b"msf1"}
# Decoding a 40 M pixel image holds ~150 MB (PNG) to ~600 MB (WebP) for about
# a second; one web process decodes at most this many at once, so a burst of
# small files that claim many pixels cannot exhaust its memory.
_DECODES = threading.BoundedSemaphore(2)
# A progressive JPEG is drawn in scans, each a pass over the whole image: a
# small file can repeat one scan thousands of times and take minutes of CPU to
# decode. Cameras and encoders write about ten (libjpeg's own -maxscans advice
# is 100); the start-of-scan marker cannot occur inside the coded data.
MAX_SCANS = 100


def _unsupported(message: str) -> ApiError:
    details = [{"field": "image", "message": message}]
    return ApiError(415, "unsupported_media_type", message, details)


def read_image(file: FileStorage, max_bytes: int, max_pixels: int) -> tuple[bytes, str, str]:
    """Returns (bytes, content type, extension) or raises the right 4xx."""
    data = file.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, "payload_too_large", f"image exceeds {megabytes(max_bytes)}")
    if not data:
        raise invalid("image", "the image file is empty", "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                _check(img, max_pixels)
                if img.format in ("JPEG", "MPO") and data.count(b"\xff\xda") > MAX_SCANS:
                    scans = f"more than {MAX_SCANS} scans"
                    why = f"the JPEG has {scans} (a camera's has about ten): save it again"
                    raise invalid("image", why, scans, "invalid_image")
                # A JPEG's (and MPO's) every block still decoded, at 1/8 scale;
                # a no-op for the other formats.
                img.draft("RGB", (1, 1))
                with _DECODES:
                    img.load()
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        too_many = f"image has too many pixels; at most {_pixels(max_pixels)} are accepted"
        raise ApiError(422, "image_too_large", too_many) from None
    except UnidentifiedImageError:
        raise _unsupported(_unreadable(data)) from None
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError, ...
        why = str(exc) or type(exc).__name__
        message = f"the image cannot be decoded ({why}): it is corrupt or truncated"
        raise invalid("image", message, why, "invalid_image") from None
    content_type, ext = ALLOWED[img.format]
    return data, content_type, ext


def _check(img: Image.Image, max_pixels: int) -> None:
    """Format and size from the header alone: before anything is decoded."""
    if img.format not in ALLOWED:
        raise _unsupported(f"{img.format} images are not accepted: send PNG, JPEG or WebP")
    w, h = img.size
    if w * h > max_pixels:
        raise ApiError(
            422,
            "image_too_large",
            f"image has {w * h:,} pixels; at most {_pixels(max_pixels)} are accepted",
        )


def _unreadable(data: bytes) -> str:
    """What to say about a file Pillow cannot identify."""
    if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
        return "HEIC images are not accepted: send PNG, JPEG or WebP (export the photo as JPEG)"
    return "the upload is not a readable PNG, JPEG or WebP image"


def _pixels(n: int) -> str:
    return f"{n / 1_000_000:g} M pixels" if n >= 1_000_000 else f"{n:,} pixels"
