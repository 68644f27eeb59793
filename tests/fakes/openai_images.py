"""A fake OpenAI Images API (``POST /v1/images/generations``) for ``dall-e-3``
and ``gpt-image-1`` in OpenAI's wire format, validating each model's
parameters (``MODELS``; dall-e-3 only ``n=1``, gpt-image-1 always
``b64_json``), and ``POST /v1/images/edits`` (multipart: ``image`` or
``image[]`` files and the same parameters as form fields; gpt-image-1 only;
``edits`` keeps each call's fields and files); see "Tests and fakes" in
docs/providers.md. ``inject(kind)``: a ``FAILURES`` entry for the next call.
``calls`` counts billed images per model. Standalone: ``python -m
tests.fakes.openai_images --port 8702``."""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any

from werkzeug.wrappers import Request, Response

from ._server import FakeServer, cli, json_response, png

MODELS = {
    "dall-e-3": {
        "size": ("1024x1024", "1792x1024", "1024x1792"),
        "quality": ("standard", "hd"),
        "style": ("vivid", "natural"),
        "response_format": ("url", "b64_json"),
    },
    "gpt-image-1": {
        "size": ("1024x1024", "1536x1024", "1024x1536", "auto"),
        "quality": ("low", "medium", "high", "auto"),
        "background": ("transparent", "opaque", "auto"),
        "output_format": ("png", "jpeg", "webp"),
        "moderation": ("low", "auto"),
    },
}
COMMON = {"model", "prompt", "n", "user"}
SCALE = 8  # served images are 1/8 of the nominal size: real PNGs, small and fast
FAILURES = {  # kind: status, message, type, code
    "rate_limit": (
        429,
        "Rate limit reached for images per minute. Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    "server_error": (
        500,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    "content_policy": (
        400,
        "Your request was rejected as a result of our safety system. Your "
        "prompt may contain text that is not allowed by our safety system.",
        "invalid_request_error",
        "content_policy_violation",
    ),
}


def error(
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return json_response(body, status, headers)


def invalid(param: str, code: str, message: str) -> Response:
    return error(400, message, "invalid_request_error", param, code)


class FakeOpenAIImages(FakeServer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, key: str | None = None) -> None:
        super().__init__(host, port)
        self.key = key  # None: any bearer key is accepted
        self.latency = 0.0
        self.files: dict[str, bytes] = {}
        self.bodies: list[dict[str, Any]] = []
        self.call_times: list[float] = []  # when each billed call was answered
        self.edits: list[dict[str, Any]] = []  # each edits call: form fields and files

    def calls(self, model: str | None = None) -> int:
        with self.lock:
            if model is not None:
                return self.counters[f"generate:{model}"]
            return sum(v for k, v in self.counters.items() if k.startswith("generate:"))

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.bodies.clear()
            self.call_times.clear()
            self.edits.clear()

    def route(self, request: Request) -> Response:
        parts = [p for p in request.path.split("/") if p]
        if parts[:1] == ["files"] and len(parts) == 2 and parts[1] in self.files:
            return Response(self.files[parts[1]], 200, content_type="image/png")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or (self.key and auth != f"Bearer {self.key}"):
            given = auth.removeprefix("Bearer ")  # OpenAI names the key it refused, masked
            masked = f"{given[:8]}{'*' * max(0, len(given) - 12)}{given[-4:]}"
            message = (
                f"Incorrect API key provided: {masked}. "
                "You can find your API key at https://platform.openai.com/account/api-keys."
            )
            return error(401, message, "invalid_request_error", None, "invalid_api_key")
        if request.path.rstrip("/") == "/v1/models" and request.method == "GET":  # a key check
            models = [
                {"id": m, "object": "model", "created": 0, "owned_by": "system"} for m in MODELS
            ]
            return json_response({"object": "list", "data": models})
        if request.path.rstrip("/") == "/v1/images/edits" and request.method == "POST":
            return self.edit(request)
        if request.path.rstrip("/") != "/v1/images/generations" or request.method != "POST":
            message = f"Invalid URL ({request.method} {request.path})"
            return error(404, message, "invalid_request_error")
        body = request.get_json(silent=True) or {}
        with self.lock:
            self.bodies.append(body)
        if (bad := self.validate(body)) is not None:
            return bad
        if self.latency:
            time.sleep(self.latency)
        if failure := self.take_failure(tuple(FAILURES)):
            status, message, type_, code = FAILURES[failure["kind"]]
            ms = str(failure.get("ms", 500))
            after = {"retry-after-ms": ms, "retry-after": str(max(1, int(ms) // 1000))}
            return error(status, message, type_, None, code, after if status == 429 else None)
        return json_response(self.generate(request, body))

    def edit(self, request: Request) -> Response:
        """``POST /v1/images/edits``: the photo as a file, the rest as form fields."""
        if not request.mimetype.startswith("multipart/form-data"):
            return invalid("image", "invalid_request", "send multipart/form-data")
        files = request.files.getlist("image") + request.files.getlist("image[]")
        body: dict[str, Any] = dict(request.form)
        if "n" in body:
            body["n"] = int(body["n"]) if body["n"].isdigit() else body["n"]
        with self.lock:
            self.bodies.append(body)
            self.edits.append(
                {"fields": body, "files": [(f.filename, f.mimetype, f.read()) for f in files]}
            )
        if not files:
            return invalid(
                "image", "missing_required_parameter", "Missing required parameter: 'image'."
            )
        if body.get("model") != "gpt-image-1":
            return invalid(
                "model", "invalid_value", f"Invalid value for 'model' = {body.get('model')}."
            )
        if (bad := self.validate(body)) is not None:
            return bad
        return json_response(self.generate(request, body))

    def validate(self, body: dict[str, Any]) -> Response | None:
        model = body.get("model", "dall-e-2")
        if model not in MODELS:
            return invalid("model", "invalid_value", f"Invalid value for 'model' = {model}.")
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            message = "Missing required parameter: 'prompt'."
            return invalid("prompt", "missing_required_parameter", message)
        spec = MODELS[model]
        for key, value in body.items():
            if key in COMMON:
                continue
            if key not in spec:
                return invalid(key, "unknown_parameter", f"Unknown parameter: '{key}'.")
            if value not in spec[key]:
                allowed = ", ".join(f"'{v}'" for v in spec[key])
                message = f"Invalid value: '{value}'. Supported values are: {allowed}."
                return invalid(key, "invalid_value", message)
        n = body.get("n", 1)
        limit = 1 if model == "dall-e-3" else 10
        if not isinstance(n, int) or not 1 <= n <= limit:
            message = (
                "Invalid 'n': integer above maximum value. "
                f"Expected a value <= {limit}, but got {n} instead."
            )
            return invalid("n", "integer_above_max_value", message)
        return None

    def generate(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        model, n = body["model"], body.get("n", 1)
        size = body.get("size", "1024x1024")
        w, h = (int(x) // SCALE for x in (size if size != "auto" else "1024x1024").split("x"))
        with self.lock:
            self.counters[f"generate:{model}"] += n
            self.call_times.append(time.time())
        data = []
        for _ in range(n):
            image = png(w, h, secrets.token_hex(4))
            if model == "dall-e-3" and body.get("response_format", "url") == "url":
                name = f"img-{secrets.token_hex(8)}.png"
                with self.lock:
                    self.files[name] = image
                item = {"url": f"{request.host_url.rstrip('/')}/files/{name}"}
            else:
                item = {"b64_json": base64.b64encode(image).decode()}
            if model == "dall-e-3":
                item["revised_prompt"] = f"A photograph: {body['prompt']}"
            data.append(item)
        out: dict[str, Any] = {"created": int(time.time()), "data": data}
        if model == "gpt-image-1":
            text_tokens = max(1, len(body["prompt"]) // 4)
            image_tokens = {"low": 272, "medium": 1056, "high": 4160}.get(
                body.get("quality", "auto"), 1056
            ) * n
            out.update(
                background="opaque",
                output_format="png",
                size=size,
                quality=body.get("quality", "medium"),
                usage={
                    "input_tokens": text_tokens,
                    "output_tokens": image_tokens,
                    "total_tokens": text_tokens + image_tokens,
                    "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
                },
            )
        return out


if __name__ == "__main__":
    cli(FakeOpenAIImages, "fake OpenAI Images")
