"""Schemathesis hooks for tests/test_openapi.py (``SCHEMATHESIS_HOOKS``).

Uploads are real images: the document lists the media types the API takes,
and a schema cannot say more about a file's bytes (so a refused upload that
is not one of these images is no mismatch).

The document says which requests are well formed; a few well-formed values
are still refused, with a 422 naming the field, for state no schema can
describe: a webhook host must resolve to public addresses, a personaId must
name one of the caller's personas, an assetId one of the generation's
images, and a provider must be configured and able to serve the settings;
in a batch, the same fields of each item (``items.3.personaId``), and a
matrix may make at most 100 combinations (a product no schema can bound)
and its ``promptsText`` must read as a .txt batch file does (notes, repeats:
``app.domain.batch_text``'s rules, no schema's); its prompts and colourways
are each given once, compared without case (``uniqueItems`` compares exactly).
Only those refusals are dropped; every other failure fails the run.
"""

from __future__ import annotations

import io
import re

import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis.openapi.checks import RejectedPositiveData

STATEFUL_FIELDS = {"webhookUrl", "personaId", "assetId", "settings.provider"}

IMAGES = {}
for media_type, fmt in (("image/png", "PNG"), ("image/jpeg", "JPEG"), ("image/webp", "WEBP")):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "crimson").save(buf, fmt)
    IMAGES[media_type] = buf.getvalue()
    schemathesis.openapi.media_type(media_type, st.just(IMAGES[media_type]))


@schemathesis.hook
def filter_failure(ctx, failure, case, response) -> bool:
    """False (drop it) only for a valid request refused for those fields alone."""
    if not isinstance(failure, RejectedPositiveData) or response.status_code not in (415, 422):
        return True
    details = response.json()["error"]["details"] or [{"field": None}]
    # A batch item's field is the single submit's: items.3.personaId is personaId.
    fields = {re.sub(r"^(items|matrix)\.\d+\.", "", d["field"] or "") or None for d in details}
    if case.path == "/api/batches" and fields in ({"matrix"}, {"matrix.promptsText"}):
        return False  # more than 100 combinations, a text with no prompt or one twice
    twice = all("twice" in (d["message"] or "") for d in details)
    if case.path == "/api/batches" and twice and fields <= {"matrix.prompts", "matrix.colorways"}:
        return False  # "Navy" and "navy": unique items to a schema, one colourway twice here
    body = case.body if isinstance(case.body, dict) else {}
    junk = "image" in body and body["image"] not in IMAGES.values()
    return not fields <= STATEFUL_FIELDS | ({"image"} if junk else set())
