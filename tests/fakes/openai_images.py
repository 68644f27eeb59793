"""A fake OpenAI Images API (``POST /v1/images/generations``) for ``dall-e-3``
and ``gpt-image-1``, in OpenAI's wire format.

- dall-e-3: ``n`` must be 1; ``size`` 1024x1024 | 1792x1024 | 1024x1792;
  ``quality`` standard | hd; ``style`` vivid | natural; ``response_format`` url
  (default; a PNG this server serves under ``/files/``) | b64_json; each image
  has a ``revised_prompt``.
- gpt-image-1: ``n`` 1-10; ``size`` 1024x1024 | 1536x1024 | 1024x1536 | auto;
  ``quality`` low | medium | high | auto; always ``b64_json`` (sending
  ``response_format`` is a 400); the response carries ``usage``.
- Answer: ``{"created", "data": [{"url"|"b64_json", "revised_prompt"?}], "usage"?}``.
- Errors: ``{"error": {"message", "type", "param", "code"}}``.

Injectable failures (``inject(kind, times)``, next matching calls): ``rate_limit``
(429 with ``retry-after-ms``, option ``ms``), ``server_error`` (500),
``content_policy`` (400 ``content_policy_violation``). ``latency``: seconds per
call. ``calls`` counts successful (billed) generations per model.

Standalone: ``python -m tests.fakes.openai_images --port 8702``; point
``OPENAI_BASE_URL`` at ``http://127.0.0.1:8702/v1``.
"""

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


class FakeOpenAIImages(FakeServer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, key: str | None = None) -> None:
        super().__init__(host, port)
        self.key = key  # None: any bearer key is accepted
        self.latency = 0.0
        self.files: dict[str, bytes] = {}
        self.bodies: list[dict[str, Any]] = []
        self.call_times: list[float] = []  # when each billed call was answered

    def calls(self, model: str | None = None) -> int:
        with self.lock:
            return (
                sum(v for k, v in self.counters.items() if k.startswith("generate:"))
                if (model is None)
                else self.counters[f"generate:{model}"]
            )

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.bodies.clear()
            self.call_times.clear()

    def route(self, request: Request) -> Response:
        parts = [p for p in request.path.split("/") if p]
        if parts[:1] == ["files"] and len(parts) == 2 and parts[1] in self.files:
            return Response(self.files[parts[1]], 200, content_type="image/png")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or (self.key and auth != f"Bearer {self.key}"):
            return error(
                401, "Incorrect API key provided.", "invalid_request_error", None, "invalid_api_key"
            )
        if request.path.rstrip("/") == "/v1/models" and request.method == "GET":  # a key check
            models = [
                {"id": m, "object": "model", "created": 0, "owned_by": "system"} for m in MODELS
            ]
            return json_response({"object": "list", "data": models})
        if request.path.rstrip("/") != "/v1/images/generations" or request.method != "POST":
            return error(
                404, f"Invalid URL ({request.method} {request.path})", "invalid_request_error"
            )
        body = request.get_json(silent=True) or {}
        with self.lock:
            self.bodies.append(body)
        if (bad := self.validate(body)) is not None:
            return bad
        if self.latency:
            time.sleep(self.latency)
        failure = self.take_failure(("rate_limit", "server_error", "content_policy"))
        if failure and failure["kind"] == "rate_limit":
            ms = str(failure.get("ms", 500))
            after = {"retry-after-ms": ms, "retry-after": str(max(1, int(ms) // 1000))}
            return error(
                429,
                "Rate limit reached for images per minute. Please try again later.",
                "requests",
                None,
                "rate_limit_exceeded",
                after,
            )
        if failure and failure["kind"] == "server_error":
            return error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
            )
        if failure and failure["kind"] == "content_policy":
            return error(
                400,
                "Your request was rejected as a result of our safety system. Your "
                "prompt may contain text that is not allowed by our safety system.",
                "invalid_request_error",
                None,
                "content_policy_violation",
            )
        return json_response(self.generate(request, body))

    def validate(self, body: dict[str, Any]) -> Response | None:
        model = body.get("model", "dall-e-2")
        if model not in MODELS:
            return error(
                400,
                f"Invalid value for 'model' = {model}.",
                "invalid_request_error",
                "model",
                "invalid_value",
            )
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            return error(
                400,
                "Missing required parameter: 'prompt'.",
                "invalid_request_error",
                "prompt",
                "missing_required_parameter",
            )
        spec = MODELS[model]
        for key, value in body.items():
            if key in COMMON:
                continue
            if key not in spec:
                return error(
                    400,
                    f"Unknown parameter: '{key}'.",
                    "invalid_request_error",
                    key,
                    "unknown_parameter",
                )
            if value not in spec[key]:
                return error(
                    400,
                    f"Invalid value: '{value}'. Supported values are: "
                    + ", ".join(f"'{v}'" for v in spec[key])
                    + ".",
                    "invalid_request_error",
                    key,
                    "invalid_value",
                )
        n = body.get("n", 1)
        limit = 1 if model == "dall-e-3" else 10
        if not isinstance(n, int) or not 1 <= n <= limit:
            return error(
                400,
                f"Invalid 'n': integer above maximum value. Expected a value <= "
                f"{limit}, but got {n} instead.",
                "invalid_request_error",
                "n",
                "integer_above_max_value",
            )
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
