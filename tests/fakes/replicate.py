"""A fake Replicate API for ``google/imagen-4-ultra`` (and, by version, the
refine models of ``replicate_versions``) in Replicate's wire format
(see "Tests and fakes" in docs/providers.md): creates are validated against the
model's ``SCHEMA`` (422 with ``invalid_fields``); a prediction is ``starting`` for
``starting_s``, ``processing`` until ``latency`` s after its creation, then
``succeeded`` with a PNG served under ``/files/`` (404 after ``expire_outputs()``,
as after Replicate's one-hour retention); cancel works until it is final.

``inject(kind, times)`` on the next creates: ``throttle`` (429 "Your rate limit
resets in ~Ns", option ``seconds``), ``server_error`` (500), ``safety`` (ends
``failed`` with E005), ``aborted``; ``get_server_error``: the next GET is a 500.
Webhooks as Replicate sends them: a create may carry ``webhook`` (a URL) and
``webhook_events_filter`` (start, output, logs, completed); when such a
prediction ends, its JSON is POSTed there, signed per Standard Webhooks with
the secret ``GET /v1/webhooks/default/secret`` serves (``webhook_secret``).
``lose_webhooks`` drops them; ``webhook_answers`` holds our API's statuses.
Standalone: ``python -m tests.fakes.replicate --port 8701 [--latency 2]``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from werkzeug.wrappers import Request, Response

from ._server import FakeServer, cli, json_response, png
from .replicate_versions import VERSIONS, VersionedModels

MODEL = "google/imagen-4-ultra"
# The current version, whose schema has image_size (1K default, 2K).
VERSION = "94d9d5a0e8bf7691286756bf150fa0c81e1bc3d6e2cddfc7084781f54e0199b5"
SCHEMA = {
    "prompt": None,
    "aspect_ratio": ("1:1", "9:16", "16:9", "3:4", "4:3"),
    "output_format": ("jpg", "png"),
    "image_size": ("1K", "2K"),
    "safety_filter_level": ("block_low_and_above", "block_medium_and_above", "block_only_high"),
}
SIZES = {
    "1:1": (256, 256),
    "9:16": (144, 256),
    "16:9": (256, 144),
    "3:4": (192, 256),
    "4:3": (256, 192),
}
WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
FINAL = ("succeeded", "failed", "canceled", "aborted")
E005 = (
    "The input or output was flagged as sensitive. Please try again with different inputs. (E005)"
)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    return json_response({"title": title, "detail": detail, "status": status, **extra}, status)


def invalid_field(type_: str, field: str, description: str) -> dict[str, str]:
    return {"type": type_, "field": field, "description": description}


class FakeReplicate(VersionedModels, FakeServer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        super().__init__(host, port)
        self.init_versions()  # community models by version, and uploaded files
        self.last_invalid: list[dict[str, str]] = []  # what the last create was refused for
        self.token = token  # None: any bearer token is accepted
        self.starting_s = 0.1
        self.latency = 0.6
        self.predictions: dict[str, dict[str, Any]] = {}
        self.expired = False
        self.create_times: list[float] = []
        self.polled: set[str] = set()
        self.create_bodies: list[dict[str, Any]] = []  # each create's JSON, as sent
        self.webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        self.lose_webhooks = False
        self.webhook_answers: list[int] = []  # our API's status per delivery

    @property
    def creates(self) -> int:
        return self.counters["create"]

    def never_polled(self) -> set[str]:
        """Predictions nobody asked about after creating them: ids the client lost."""
        with self.lock:
            return set(self.predictions) - self.polled

    def expire_outputs(self) -> None:
        self.expired = True

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.predictions.clear()
            self.create_times.clear()
            self.polled.clear()
            self.create_bodies.clear()
            self.webhook_answers.clear()
            self.files.clear()
            self.expired = self.lose_webhooks = False

    # -- routes
    def route(self, request: Request) -> Response:
        parts = [p for p in request.path.split("/") if p]
        if parts[:1] == ["files"] and len(parts) == 2:
            return self.file(parts[1])
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or (self.token and auth != f"Bearer {self.token}"):
            return problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        if parts[:2] == ["v1", "models"] and request.method == "POST":
            model = "/".join(parts[2:-1])
            if parts[-1] != "predictions" or model != MODEL:
                return problem(404, "Not found", f"Model {model} not found")
            return self.create(request)
        if parts == ["v1", "predictions"] and request.method == "POST":  # by version
            return self.create(request, versioned=True)
        if parts == ["v1", "files"] and request.method == "POST":
            return self.upload(request)
        if parts == ["v1", "account"] and request.method == "GET":  # what a key check calls
            return json_response({"type": "user", "username": "bff-test", "name": "BFF test"})
        if parts == ["v1", "webhooks", "default", "secret"] and request.method == "GET":
            return json_response({"key": self.webhook_secret})
        if parts[:2] == ["v1", "predictions"] and len(parts) == 3 and request.method == "GET":
            return self.get(parts[2])
        if parts[:2] == ["v1", "predictions"] and parts[3:] == ["cancel"]:
            return self.cancel(parts[2])
        return problem(404, "Not found", "Not found")

    def create(self, request: Request, versioned: bool = False) -> Response:
        body = request.get_json(silent=True) or {}
        inputs = body.get("input")
        if not isinstance(inputs, dict):
            return problem(422, "Invalid request", "input is required")
        invalid = self.check_versioned(body) if versioned else self.invalid_imagen(inputs)
        invalid += self.invalid_webhook(body)
        self.last_invalid = invalid
        if invalid:
            detail = "\n".join(f"- {i['field']}: {i['description']}" for i in invalid)
            return problem(422, "Input validation failed", detail, invalid_fields=invalid)
        return self.accept(request, body, inputs)

    def invalid_imagen(self, inputs: dict[str, Any]) -> list[dict[str, str]]:
        """Imagen's schema (``SCHEMA``)."""
        invalid = []
        for k in [k for k in inputs if k not in SCHEMA]:
            extra = f"Additional property {k} is not allowed"
            invalid.append(invalid_field("additional_property_not_allowed", "input", extra))
        for k, allowed in SCHEMA.items():
            if allowed and k in inputs and inputs[k] not in allowed:
                must = f"{k} must be one of the following: {', '.join(allowed)}"
                invalid.append(invalid_field("enum", f"input.{k}", must))
        if not inputs.get("prompt"):
            invalid.append(invalid_field("required", "input", "prompt is required"))
        return invalid

    def accept(self, request: Request, body: dict[str, Any], inputs: dict[str, Any]) -> Response:
        failure = self.take_failure(("throttle", "server_error", "safety", "aborted"))
        with self.lock:
            self.counters["create_attempt"] += 1
            self.create_bodies.append(body)
        if failure and failure["kind"] == "throttle":
            secs = failure.get("seconds", 1)
            return problem(
                429,
                "Request was throttled",
                f"Request was throttled. Your rate limit resets in ~{secs}s.",
            )
        if failure and failure["kind"] == "server_error":
            return problem(500, "Internal Server Error", "Internal server error")
        pid = secrets.token_hex(13)[:26]
        now = time.time()
        with self.lock:
            self.counters["create"] += 1
            self.create_times.append(now)
            self.predictions[pid] = {
                "id": pid,
                "input": inputs,
                "version": body.get("version") or VERSION,
                "model": VERSIONS[body["version"]][0] if body.get("version") else MODEL,
                "created": now,
                "latency": self.latency,
                "starting_s": self.starting_s,
                "outcome": failure["kind"] if failure else "succeeded",
                "canceled_at": None,
                "host": request.host_url.rstrip("/"),
                "webhook": body.get("webhook"),
                "events": body.get("webhook_events_filter") or list(WEBHOOK_EVENTS),
                "notified": False,
            }
        if body.get("webhook"):  # when it ends: aborted at its start, else at its latency
            for delay in (self.starting_s, self.latency):
                threading.Timer(delay + 0.01, self.notify, (pid,)).start()
        return json_response(self.render(pid), 201)

    @staticmethod
    def invalid_webhook(body: dict[str, Any]) -> list[dict[str, str]]:
        invalid = []
        hook, events = body.get("webhook"), body.get("webhook_events_filter")
        if hook is not None and not (
            isinstance(hook, str) and hook.startswith(("http://", "https://"))
        ):
            invalid.append(invalid_field("format", "webhook", "webhook must be a URI"))
        if events is not None and (
            not isinstance(events, list) or any(e not in WEBHOOK_EVENTS for e in events)
        ):
            must = "webhook_events_filter items must be one of: " + ", ".join(WEBHOOK_EVENTS)
            invalid.append(invalid_field("enum", "webhook_events_filter", must))
        return invalid

    def notify(self, pid: str) -> None:
        """The ``completed`` webhook, once, if the prediction has ended."""
        with self.lock:
            p = self.predictions.get(pid)
            if p is None or p["notified"] or self.status(p)[0] not in FINAL:
                return
            p["notified"] = True
            if self.lose_webhooks or "completed" not in p["events"]:
                return
            body, url = json.dumps(self.render(pid)), p["webhook"]
        headers = self.signed(f"msg_{secrets.token_hex(8)}", int(time.time()), body)
        try:
            status = httpx.post(url, content=body, headers=headers, timeout=10).status_code
        except httpx.HTTPError:
            status = 0
        with self.lock:
            self.counters["webhook"] += 1
            self.webhook_answers.append(status)

    def signed(self, msg_id: str, timestamp: int, body: str) -> dict[str, str]:
        """Replicate's headers: HMAC-SHA256 of ``id.timestamp.body`` keyed by the
        secret's base64 part (done by hand: our API verifies with the package)."""
        key = base64.b64decode(self.webhook_secret.removeprefix("whsec_"))
        mac = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
        return {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        }

    def get(self, pid: str) -> Response:
        with self.lock:
            self.counters["get"] += 1
            self.polled.add(pid)
        if self.take_failure(("get_server_error",)):
            return problem(500, "Internal Server Error", "Internal server error")
        if pid not in self.predictions:
            return problem(404, "Not found", "The requested resource could not be found.")
        return json_response(self.render(pid))

    def cancel(self, pid: str) -> Response:
        with self.lock:
            self.counters["cancel"] += 1
            p = self.predictions.get(pid)
            if p is None:
                return problem(404, "Not found", "The requested resource could not be found.")
            if self.status(p)[0] in ("starting", "processing"):
                p["canceled_at"] = time.time()
        if p.get("webhook"):
            threading.Thread(target=self.notify, args=(pid,), daemon=True).start()
        return json_response(self.render(pid))

    def file(self, name: str) -> Response:
        pid, _, ext = name.partition(".")
        p = self.predictions.get(pid)
        if self.expired or p is None or self.status(p)[0] != "succeeded":
            return problem(404, "Not found", "Not found")
        if p["version"] in VERSIONS:
            return Response(self.refine_output(p), 200, content_type="image/png")
        w, h = SIZES[p["input"].get("aspect_ratio", "1:1")]
        return Response(png(w, h, pid), 200, content_type="image/png")

    # -- the prediction document
    def status(self, p: dict[str, Any]) -> tuple[str, float | None, float | None]:
        """(status, started_at, completed_at) as of now."""
        created, now = p["created"], time.time()
        started = created + p["starting_s"]
        done = created + p["latency"]
        if p["canceled_at"] is not None:
            return "canceled", (started if p["canceled_at"] > started else None), p["canceled_at"]
        if p["outcome"] == "aborted" and now >= started:
            return "aborted", None, started
        if now < started:
            return "starting", None, None
        if now < done:
            return "processing", started, None
        return ("failed" if p["outcome"] == "safety" else "succeeded"), started, done

    def render(self, pid: str) -> dict[str, Any]:
        p = self.predictions[pid]
        status, started, completed = self.status(p)
        base = p["host"]
        png_out = p["input"].get("output_format") == "png" or p["version"] in VERSIONS
        ext = "png" if png_out else "jpg"
        ok = status == "succeeded"
        return {
            "id": pid,
            "model": p["model"],
            "version": p["version"],
            "input": p["input"],
            "logs": "" if status == "starting" else "Generating image...\n",
            "output": f"{base}/files/{pid}.{ext}" if ok else None,
            "data_removed": False,
            "error": E005 if status == "failed" else None,
            "status": status,
            "source": "api",
            "created_at": _iso(p["created"]),
            "started_at": _iso(started),
            "completed_at": _iso(completed),
            "urls": {
                "get": f"{base}/v1/predictions/{pid}",
                "cancel": f"{base}/v1/predictions/{pid}/cancel",
                "stream": f"{base}/v1/predictions/{pid}/stream",
                "web": f"https://replicate.com/p/{pid}",
            },
            "metrics": (
                {"predict_time": round(completed - started, 3)}
                if ok and completed and started
                else {}
            ),
        }


if __name__ == "__main__":
    cli(FakeReplicate, "fake Replicate")
