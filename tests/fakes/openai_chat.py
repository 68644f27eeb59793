"""A fake OpenAI chat-completions server speaking the real wire format.

``POST /v1/chat/completions`` answers ``{id, object: "chat.completion",
created, model, choices: [{index, message: {role, content}, finish_reason}],
usage}``; errors are ``{"error": {message, type, param, code}}`` with the
real status codes. Responses are scripted (a FIFO queue); with nothing
scripted it answers a plausible document for the request's JSON schema
(``vlt_record`` or ``prompt_package``), so it also serves a whole stack.

In process::

    with FakeOpenAIChat() as fake:
        fake.script_content('{"garmentType": ...}')
        fake.script_error(429, "rate limited", retry_after=0)
        ...  # OPENAI_BASE_URL=fake.base_url

Standalone: ``python -m tests.fakes.openai_chat --port 8089``; script it over
HTTP with ``POST /__fake__/script`` (a JSON list of steps, as below).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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


class FakeOpenAIChat:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.steps: deque[dict[str, Any]] = deque()
        self.requests: list[dict[str, Any]] = []  # every request body received, in order
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    # ----------------------------------------------------------- scripting
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
        with self._lock:
            self.steps.clear()
            self.requests.clear()
            self.headers.clear()

    # ----------------------------------------------------------- lifecycle
    def start(self) -> FakeOpenAIChat:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeOpenAIChat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------- wire format
    def _next_step(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self.steps:
                return self.steps.popleft()
        fmt = (body.get("response_format") or {}).get("json_schema") or {}
        if fmt.get("name") == "vlt_record":
            return {"content": json.dumps(DEFAULT_RECORD), "finishReason": "stop"}
        user = next((m for m in body.get("messages", []) if m.get("role") == "user"), {})
        text = user.get("content") if isinstance(user.get("content"), str) else "garment"
        return {"content": json.dumps(default_package(text[:200])), "finishReason": "stop"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:16]}")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def _error(self, status: int, message: str, code: str | None = None, **hdrs: str):
                err = {
                    "message": message,
                    "type": ERROR_TYPES.get(status, "api_error"),
                    "param": None,
                    "code": code,
                }
                self._send(status, {"error": err}, hdrs)

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    return self._error(400, "We could not parse the JSON body of your request.")
                if self.path == "/__fake__/script":
                    for step in body:
                        if "status" in step:
                            fake.script_error(
                                step["status"], step.get("message", "error"), step.get("code")
                            )
                        else:
                            fake.script_content(step["content"])
                    return self._send(200, {"scripted": len(body)})
                if self.path != "/v1/chat/completions":
                    return self._error(404, f"Invalid URL (POST {self.path})", "unknown_url")
                if not (self.headers.get("Authorization") or "").startswith("Bearer "):
                    return self._error(401, "You didn't provide an API key.", "missing_api_key")
                with fake._lock:
                    fake.requests.append(body)
                    fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                if not body.get("model") or not body.get("messages"):
                    return self._error(400, "'model' and 'messages' are required", "missing")
                step = fake._next_step(body)
                if "status" in step:
                    extra = {}
                    if step.get("retryAfter") is not None:
                        # The SDK reads retry-after-ms first: sub-second waits in tests.
                        extra["retry-after-ms"] = str(round(step["retryAfter"] * 1000))
                        extra["retry-after"] = str(max(1, round(step["retryAfter"])))
                    return self._error(step["status"], step["message"], step.get("code"), **extra)
                prompt_tokens = len(json.dumps(body["messages"])) // 4
                completion_tokens = len(step["content"]) // 4
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {
                                    "role": "assistant",
                                    "content": step["content"],
                                    "refusal": None,
                                },
                                "logprobs": None,
                                "finish_reason": step["finishReason"],
                            }
                        ],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens,
                        },
                        "system_fingerprint": "fp_fake",
                    },
                )

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    args = parser.parse_args()
    fake = FakeOpenAIChat(args.host, args.port)
    print(f"fake OpenAI chat server on {fake.base_url}", flush=True)
    try:
        fake.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake.server.server_close()


if __name__ == "__main__":
    main()
