"""How an ``ImageRequest`` becomes a model's input fields: a small vocabulary a
catalogue entry spells its input mapping in, and the one function that
applies it (``map_inputs``).

Each model input field names where its value comes from:

- ``PROMPT``: the prompt; a negative prompt the model has no field for is
  folded in ("… Avoid: …"), and it is cut to the model's length limit. Both
  changes are recorded as notes beside what was sent.
- ``NEGATIVE``: the negative prompt, for models with a field for it.
- ``Const(v)``: always ``v`` (an output format, a response format).
- ``From(attr, table)``: ``request.attr``, through ``table`` when given
  (quality ``hd`` -> ``2K``); a value the table lacks is an error in the entry.
- ``Orientation(table)``: square / landscape / portrait of the aspect ratio,
  through ``table`` (OpenAI's pixel sizes).
- ``Ref(many)``: the reference images (one file, or a list of files); the
  field is left out when the request has none. What is *recorded* is a
  description of each image (JSON, saved with the job); the adapter swaps in
  the bytes as file objects when it calls, so its SDK uploads them.

Also what every Replicate create sends beside its inputs (``webhook_args``).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from app.providers.base import CONTENT_TYPES, EXTENSIONS, ImageRequest, Reference

NEGATIVE_FOLDED = "no negative prompt input: folded into the prompt as 'Avoid: …'"


@dataclass(frozen=True)
class Prompt:
    pass


@dataclass(frozen=True)
class Negative:
    pass


@dataclass(frozen=True)
class Const:
    value: Any


@dataclass(frozen=True)
class From:
    attr: str  # an ImageRequest attribute
    table: dict[str, Any] | None = None  # our value -> the model's


@dataclass(frozen=True)
class Orientation:
    table: dict[str, str]  # square | landscape | portrait -> the model's value


@dataclass(frozen=True)
class Ref:
    many: bool = False  # a list of images (nano-banana) or one (FLUX, gpt-image-1 edits)


PROMPT, NEGATIVE = Prompt(), Negative()
Source = Prompt | Negative | Const | From | Orientation | Ref


def orientation(aspect_ratio: str) -> str:
    w, h = map(int, aspect_ratio.split(":"))
    return "square" if w == h else "landscape" if w > h else "portrait"


def describe_reference(data: bytes, content_type: str) -> dict[str, Any]:
    """What is recorded for a reference image: never its bytes."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    return {"reference": True, "contentType": content_type, "bytes": len(data), "sha256": digest}


def map_inputs(
    mapping: dict[str, Source], request: ImageRequest, max_prompt: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the model's input fields, notes on what we changed) for ``request``."""
    has_negative = any(isinstance(s, Negative) for s in mapping.values())
    out: dict[str, Any] = {}
    notes: dict[str, Any] = {}
    for name, source in mapping.items():
        match source:
            case Prompt():
                prompt = request.prompt
                if request.negative_prompt and not has_negative:
                    prompt = f"{prompt}. Avoid: {request.negative_prompt}"
                    notes["negativePromptHandling"] = NEGATIVE_FOLDED
                if len(prompt) > max_prompt:
                    prompt, notes["promptTruncatedFrom"] = prompt[:max_prompt], len(prompt)
                out[name] = prompt
            case Negative():
                if request.negative_prompt:
                    out[name] = request.negative_prompt
            case Const(value=value):
                out[name] = value
            case From(attr=attr, table=table):
                value = getattr(request, attr)
                out[name] = table[value] if table else value
            case Orientation(table=table):
                out[name] = table[orientation(request.aspect_ratio)]
            case Ref(many=many):
                refs = [describe_reference(r.data, r.content_type) for r in request.references]
                if refs:
                    out[name] = refs if many else refs[0]
    return out, notes


def reference_fields(mapping: dict[str, Source]) -> dict[str, Ref]:
    return {name: s for name, s in mapping.items() if isinstance(s, Ref)}


def upload_file(ref: Reference, index: int) -> io.BytesIO:
    """A reference image as a named file object: an SDK takes the upload's
    content type from its name."""
    file = io.BytesIO(ref.data)
    file.name = f"reference-{index}.{EXTENSIONS.get(ref.content_type, 'png')}"
    return file


def content_type_of(url: str) -> str:
    """An output's content type, from its URL's extension."""
    ext = url.rsplit("?", 1)[0].rsplit(".", 1)[-1].lower()
    return CONTENT_TYPES.get(ext, "image/png")


def webhook_args(webhook_url: str | None, generation_id: str) -> dict[str, Any]:
    """A create's webhook arguments: Replicate calls back when the prediction
    ends, waking the stage that waits on it (app/api/replicate_webhook.py);
    the generation rides in the URL. None without a reachable URL."""
    if not webhook_url:
        return {}
    query = urlencode({"generation": generation_id})
    return {"webhook": f"{webhook_url}?{query}", "webhook_events_filter": ["completed"]}
