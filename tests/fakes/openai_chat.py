"""A fake OpenAI chat-completions server in the real wire format (see "Tests and
fakes" in docs/judgement.md). Answers are scripted (``script_content``,
``script_error``, or ``POST /__fake__/script``); with nothing scripted it answers
a plausible document for the request's JSON schema (``vlt_record`` or
``prompt_package``). Standalone: ``python -m tests.fakes.openai_chat --port 8089``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from typing import Any

from werkzeug.wrappers import Request, Response

from ._server import FakeServer, cli, json_response

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "server_error",
}

DEFAULT_RECORD = {
    "garmentType": "dress",
    "silhouette": "a-line",
    "fabric": {"type": "silk", "texture": "smooth", "weight": "light", "finish": "satin"},
    "colors": {"primary": "Emerald", "secondary": None, "pattern": None},
    "construction": {"seams": "princess seams", "closure": "back zipper", "details": None},
    "style": {"aesthetic": "elegant", "formality": "formal", "season": "spring"},
    "promptText": "Emerald silk a-line evening dress with princess seams",
    "confidence": 0.88,
}


def default_package(user_text: str) -> dict[str, Any]:
    return {
        "mainPrompt": f"{user_text}, editorial fashion photograph, soft studio light",
        "negativePrompt": "blurry, low quality, watermark",
        "keywords": ["editorial", "studio light"],
        "photographyStyle": "editorial studio fashion photography",
        "templateId": "elegant-evening",
    }


def error(status: int, message: str, code: str | None = None, **headers: str) -> Response:
    err = {"message": message, "type": ERROR_TYPES.get(status, "api_error"), "param": None}
    return json_response({"error": {**err, "code": code}}, status, headers)


class FakeOpenAIChat(FakeServer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.steps: deque[dict[str, Any]] = deque()
        self.requests: list[dict[str, Any]] = []  # every request body received, in order
        self.headers: list[dict[str, str]] = []

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def script_content(self, content: str | dict[str, Any], finish_reason: str = "stop") -> None:
        text = content if isinstance(content, str) else json.dumps(content)
        self.steps.append({"content": text, "finishReason": finish_reason})

    def script_error(
        self, status: int, message: str, code: str | None = None, retry_after: float | None = None
    ) -> None:
        self.steps.append(
            {"status": status, "message": message, "code": code, "retryAfter": retry_after}
        )

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.steps.clear()
            self.requests.clear()
            self.headers.clear()

    def _next_step(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if self.steps:
                return self.steps.popleft()
        fmt = (body.get("response_format") or {}).get("json_schema") or {}
        if fmt.get("name") == "vlt_record":
            return {"content": json.dumps(DEFAULT_RECORD), "finishReason": "stop"}
        user = next((m for m in body.get("messages", []) if m.get("role") == "user"), {})
        text = user.get("content") if isinstance(user.get("content"), str) else "garment"
        return {"content": json.dumps(default_package(text[:200])), "finishReason": "stop"}

    def route(self, request: Request) -> Response:
        response = self._answer(request)
        response.headers["x-request-id"] = f"req_{uuid.uuid4().hex[:16]}"
        return response

    def _answer(self, request: Request) -> Response:
        try:
            body = json.loads(request.get_data() or b"{}")
        except ValueError:
            return error(400, "We could not parse the JSON body of your request.")
        if request.path == "/__fake__/script" and request.method == "POST":
            for step in body:
                if "status" in step:
                    self.script_error(
                        step["status"], step.get("message", "error"), step.get("code")
                    )
                else:
                    self.script_content(step["content"])
            return json_response({"scripted": len(body)})
        if request.path != "/v1/chat/completions" or request.method != "POST":
            return error(404, f"Invalid URL ({request.method} {request.path})", "unknown_url")
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return error(401, "You didn't provide an API key.", "missing_api_key")
        with self.lock:
            self.requests.append(body)
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
        if not body.get("model") or not body.get("messages"):
            return error(400, "'model' and 'messages' are required", "missing")
        step = self._next_step(body)
        if "status" in step:
            hdrs = {}
            if (after := step.get("retryAfter")) is not None:  # the SDK reads -ms first
                hdrs["retry-after-ms"] = str(round(after * 1000))
                hdrs["retry-after"] = str(max(1, round(after)))
            return error(step["status"], step["message"], step.get("code"), **hdrs)
        prompt_tokens = len(json.dumps(body["messages"])) // 4
        completion_tokens = len(step["content"]) // 4
        message = {"role": "assistant", "content": step["content"], "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None}
        return json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{**choice, "finish_reason": step["finishReason"]}],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "system_fingerprint": "fp_fake",
            }
        )


if __name__ == "__main__":
    cli(FakeOpenAIChat, "fake OpenAI chat server")
