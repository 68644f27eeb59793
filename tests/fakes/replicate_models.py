"""The models the fake Replicate serves, each with its documented input schema
(read from the model's API page, cited per model), and the validation
Replicate applies to a create: unknown fields, wrong JSON types, values
outside an enum or a range, missing required fields -> 422 with
``invalid_fields``. Adding a model to the fake is one entry here.

The Stage 7 refine models are versioned entries (``app/providers/refiners.py``
pins the same versions); their output is made from the uploaded ``image``
(``output``): ``upscale``, a PNG ``scale`` times its size; ``cutout``, an
RGBA PNG of its size, its border transparent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Input:
    type: str  # JSON Schema type: string | integer | number | boolean | array
    enum: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    format: str | None = None  # "uri": a URL (files are uploaded first, then named by URL)
    items: Input | None = None  # arrays: each item's schema
    required: bool = False


@dataclass(frozen=True)
class Model:
    version: str  # the latest version's id (what an official model runs)
    inputs: dict[str, Input]
    source: str
    official: bool = True  # official: POST /v1/models/{owner}/{name}/predictions
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # aspect ratio -> output
    output: str | None = None  # "upscale" | "cutout": made from the uploaded image


RATIO_SIZES = {
    "1:1": (256, 256),
    "9:16": (144, 256),
    "16:9": (256, 144),
    "3:4": (192, 256),
    "4:3": (256, 192),
}
URI = Input("string", format="uri")

MODELS = {
    "google/imagen-4-ultra": Model(
        # The current version, whose schema has image_size (1K default, 2K).
        version="94d9d5a0e8bf7691286756bf150fa0c81e1bc3d6e2cddfc7084781f54e0199b5",
        source="https://replicate.com/google/imagen-4-ultra/api/schema",
        inputs={
            "prompt": Input("string", required=True),
            "aspect_ratio": Input("string", ("1:1", "9:16", "16:9", "3:4", "4:3")),
            "output_format": Input("string", ("jpg", "png")),
            "image_size": Input("string", ("1K", "2K")),
            "safety_filter_level": Input(
                "string", ("block_low_and_above", "block_medium_and_above", "block_only_high")
            ),
        },
        sizes=RATIO_SIZES,
    ),
    "black-forest-labs/flux-1.1-pro": Model(
        version="96ccd0e758a1796926584ded2246369cdf8eb3d7c34475cf9c442be5e097d926",
        source="https://replicate.com/black-forest-labs/flux-1.1-pro/versions/"
        "96ccd0e758a1796926584ded2246369cdf8eb3d7c34475cf9c442be5e097d926/api",
        inputs={
            "prompt": Input("string", required=True),
            "image_prompt": URI,
            "aspect_ratio": Input(
                "string",
                ("custom", "1:1", "16:9", "3:2", "2:3", "4:5", "5:4", "9:16", "3:4", "4:3"),
            ),
            "width": Input("integer", minimum=256, maximum=1440),
            "height": Input("integer", minimum=256, maximum=1440),
            "safety_tolerance": Input("integer", minimum=1, maximum=6),
            "seed": Input("integer"),
            "prompt_upsampling": Input("boolean"),
            "output_format": Input("string", ("webp", "jpg", "png")),
            "output_quality": Input("integer", minimum=0, maximum=100),
        },
        sizes=RATIO_SIZES,
    ),
    "google/nano-banana": Model(
        version="f0a9d34b12ad1c1cd76269a844b218ff4e64e128ddaba93e15891f47368958a0",
        source="https://replicate.com/google/nano-banana/versions/"
        "f0a9d34b12ad1c1cd76269a844b218ff4e64e128ddaba93e15891f47368958a0/api",
        inputs={
            "prompt": Input("string", required=True),
            "image_input": Input("array", items=URI),
            "output_format": Input("string", ("jpg", "png")),
        },
    ),
    # Versioned community models (POST /v1/predictions with "version"): Stage
    # 7's refiners, at the versions app/providers/refiners.py pins.
    "nightmareai/real-esrgan": Model(
        version="42fed1c4974146d4d2414e2be2c5277c7fcf05fcc3a73abf41610695738c1d7b",
        source="https://replicate.com/nightmareai/real-esrgan/api",
        official=False,
        inputs={
            "image": Input("string", format="uri", required=True),
            "scale": Input("number", minimum=0, maximum=10),
            "face_enhance": Input("boolean"),
        },
        output="upscale",
    ),
    "851-labs/background-remover": Model(
        version="a029dff38972b5fda4ec5d75d7d1cd25aeff621d2cf4946a41055d7db66b80bc",
        source="https://replicate.com/851-labs/background-remover/api",
        official=False,
        inputs={
            "image": Input("string", format="uri", required=True),
            "threshold": Input("number", minimum=0, maximum=1),
            "reverse": Input("boolean"),
            "background_type": Input(
                "string", ("rgba", "map", "green", "white", "blur", "overlay")
            ),
            "format": Input("string", ("png", "jpg", "webp")),
        },
        output="cutout",
    ),
}
REAL_ESRGAN = MODELS["nightmareai/real-esrgan"].version
BACKGROUND_REMOVER = MODELS["851-labs/background-remover"].version
BY_VERSION = {m.version: name for name, m in MODELS.items()}

TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
}


def invalid_field(type_: str, field: str, description: str) -> dict[str, str]:
    return {"type": type_, "field": field, "description": description}


def _check(name: str, spec: Input, value: Any) -> list[dict[str, str]]:
    where = f"input.{name}"
    ok_type = isinstance(value, TYPES[spec.type]) and not (
        spec.type in ("integer", "number") and isinstance(value, bool)
    )
    if not ok_type:
        given = type(value).__name__
        return [
            invalid_field(
                "invalid_type", where, f"Invalid type. Expected: {spec.type}, given: {given}"
            )
        ]
    if spec.enum is not None and value not in spec.enum:
        must = f"{name} must be one of the following: {', '.join(map(str, spec.enum))}"
        return [invalid_field("enum", where, must)]
    if spec.minimum is not None and value < spec.minimum:
        return [
            invalid_field("number_gte", where, f"Must be greater than or equal to {spec.minimum}")
        ]
    if spec.maximum is not None and value > spec.maximum:
        return [invalid_field("number_lte", where, f"Must be less than or equal to {spec.maximum}")]
    if spec.format == "uri" and not value.startswith(("http://", "https://", "data:")):
        return [invalid_field("format", where, "Does not match format 'uri'")]
    if spec.items is not None:
        return [e for i, item in enumerate(value) for e in _check(f"{name}.{i}", spec.items, item)]
    return []


def validate(model: Model, inputs: dict[str, Any]) -> list[dict[str, str]]:
    """Replicate's input validation, as its 422 ``invalid_fields`` list."""
    invalid = [
        invalid_field(
            "additional_property_not_allowed", "input", f"Additional property {k} is not allowed"
        )
        for k in inputs
        if k not in model.inputs
    ]
    for name, spec in model.inputs.items():
        if name in inputs:
            invalid += _check(name, spec, inputs[name])
        elif spec.required:
            invalid.append(invalid_field("required", "input", f"{name} is required"))
    return invalid


def uris(model: Model, inputs: dict[str, Any]) -> list[tuple[str, str]]:
    """Every URL a create's inputs name (files it must have been given), with
    the field naming it."""
    out: list[tuple[str, str]] = []
    for name, spec in model.inputs.items():
        value = inputs.get(name)
        if spec.format == "uri" and isinstance(value, str):
            out.append((f"input.{name}", value))
        elif spec.items is not None and spec.items.format == "uri" and isinstance(value, list):
            out += [(f"input.{name}.{i}", v) for i, v in enumerate(value) if isinstance(v, str)]
    return out
