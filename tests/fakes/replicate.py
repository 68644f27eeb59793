"""A fake Replicate API in Replicate's wire format for the models of
``replicate_models.MODELS`` (see "Tests and fakes" in docs/providers.md):
official models at ``POST /v1/models/{owner}/{name}/predictions``, versions at
``POST /v1/predictions``; creates are validated against the model's schema
(422 with ``invalid_fields``). ``POST /v1/files`` takes uploads (multipart
``content``, as the SDK sends files in an input) and a create may name them
only by the URL it answered (``uploads`` keeps them; a URL from anywhere else
is refused, as a private upload must never need a public URL); a refused
create's ``invalid_fields`` are kept in ``last_invalid``. A prediction is
``starting`` for ``starting_s``, ``processing`` until ``latency`` s after its
creation, then ``succeeded`` with a PNG served under ``/files/`` (a refine
model's made from its uploaded image: ``replicate_models``; 404 after
``expire_outputs()``, as after Replicate's one-hour retention); cancel works
until it is final.

``inject(kind, times)`` on the next creates: ``throttle`` (429 "Your rate limit
resets in ~Ns", option ``seconds``), ``server_error`` (500), ``safety`` (ends
``failed`` with E005), ``aborted``, ``empty`` (``succeeded`` with no output);
``get_server_error``: the next GET is a 500.
Webhooks as Replicate sends them: a create may carry ``webhook`` (a URL) and
``webhook_events_filter`` (start, output, logs, completed); when such a
prediction ends, its JSON is POSTed there, signed per Standard Webhooks with
the secret ``GET /v1/webhooks/default/secret`` serves (``webhook_secret``).
``lose_webhooks`` drops them; ``webhook_answers`` holds our API's statuses.
Standalone: ``python -m tests.fakes.replicate --port 8701 [--latency 2]``."""

from __future__ import annotations

import base64
import hashlib
import io
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any

from PIL import Image, ImageDraw, UnidentifiedImageError
from werkzeug.wrappers import Request, Response

from ._server import FakeServer, cli, json_response, png
from .replicate_models import BY_VERSION, MODELS, invalid_field, uris, validate
from .replicate_webhooks import WEBHOOK_EVENTS, WebhookSender

E005 = (
    "The input or output was flagged as sensitive. Please try again with different inputs. (E005)"
)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    return json_response({"title": title, "detail": detail, "status": status, **extra}, status)


class FakeReplicate(WebhookSender, FakeServer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        super().__init__(host, port)
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
        self.uploads: dict[str, dict[str, Any]] = {}  # POST /v1/files: id -> file
        self.last_invalid: list[dict[str, str]] = []  # what the last create was refused for

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
            self.uploads.clear()
            self.last_invalid = []
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
            if parts[-1] != "predictions" or model not in MODELS or not MODELS[model].official:
                return problem(404, "Not found", f"Model {model} not found")
            return self.create(request, model)
        if parts == ["v1", "predictions"] and request.method == "POST":
            version = (request.get_json(silent=True) or {}).get("version")
            if version not in BY_VERSION:
                self.last_invalid = [invalid_field("invalid", "version", "Invalid version")]
                return problem(
                    422,
                    "Invalid version",
                    "Invalid version or not permitted",
                    invalid_fields=self.last_invalid,
                )
            return self.create(request, BY_VERSION[version])
        if parts == ["v1", "files"] and request.method == "POST":
            return self.upload(request)
        if parts[:2] == ["v1", "files"] and len(parts) == 3 and parts[2] in self.uploads:
            return json_response(self.uploads[parts[2]]["json"])
        if parts == ["v1", "account"] and request.method == "GET":  # what a key check calls
            return json_response({"type": "user", "username": "bff-test", "name": "BFF test"})
        if parts == ["v1", "webhooks", "default", "secret"] and request.method == "GET":
            return json_response({"key": self.webhook_secret})
        if parts[:2] == ["v1", "predictions"] and len(parts) == 3 and request.method == "GET":
            return self.get(parts[2])
        if parts[:2] == ["v1", "predictions"] and parts[3:] == ["cancel"]:
            return self.cancel(parts[2])
        return problem(404, "Not found", "Not found")

    def upload(self, request: Request) -> Response:
        """``POST /v1/files``: the SDK's upload of a file given in an input."""
        file = request.files.get("content")
        if file is None:
            return problem(400, "Bad request", "content is required")
        data, fid = file.read(), secrets.token_hex(12)
        url = f"{request.host_url.rstrip('/')}/v1/files/{fid}"
        doc = {
            "id": fid,
            "name": file.filename,
            "content_type": file.mimetype,
            "size": len(data),
            "etag": hashlib.md5(data).hexdigest(),  # noqa: S324 - an etag, not security
            "checksums": {"sha256": hashlib.sha256(data).hexdigest()},
            "metadata": {},
            "created_at": _iso(time.time()),
            "expires_at": _iso(time.time() + 86400),
            "urls": {"get": url},
        }
        with self.lock:
            self.counters["upload"] += 1
            self.uploads[fid] = {"json": doc, "data": data, "url": url}
        return json_response(doc, 201)

    def create(self, request: Request, model: str) -> Response:
        body = request.get_json(silent=True) or {}
        inputs = body.get("input")
        if not isinstance(inputs, dict):
            return problem(422, "Invalid request", "input is required")
        invalid = validate(MODELS[model], inputs) + self.invalid_webhook(body)
        uploaded = {u["url"] for u in self.uploads.values()}
        for where, url in uris(MODELS[model], inputs):
            if url not in uploaded:  # a test fake stands for a private upload
                invalid.append(invalid_field("format", where, f"{url} is not an uploaded file"))
        self.last_invalid = invalid
        if invalid:
            detail = "\n".join(f"- {i['field']}: {i['description']}" for i in invalid)
            return problem(422, "Input validation failed", detail, invalid_fields=invalid)
        failure = self.take_failure(("throttle", "server_error", "safety", "aborted", "empty"))
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
                "model": model,
                "input": inputs,
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
        if MODELS[p["model"]].output:
            return Response(self.refined(p), 200, content_type="image/png")
        w, h = MODELS[p["model"]].sizes.get(p["input"].get("aspect_ratio", "1:1"), (256, 256))
        return Response(png(w, h, pid), 200, content_type="image/png")

    def refined(self, p: dict[str, Any]) -> bytes:
        """A refine model's output, made from its uploaded ``image``: upscaled
        ``scale`` times (default 4), or a cut-out (RGBA, its border clear)."""
        data = next(u["data"] for u in self.uploads.values() if u["url"] == p["input"]["image"])
        try:
            with Image.open(io.BytesIO(data)) as src:
                w, h = src.size
        except UnidentifiedImageError:  # bytes standing for a photo
            w, h = 64, 64
        if MODELS[p["model"]].output == "upscale":
            scale = p["input"].get("scale", 4)
            img = Image.new("RGB", (round(w * scale), round(h * scale)), (200, 40, 60))
        else:
            img = Image.new("RGBA", (w, h), (0, 0, 0, 0))
            ImageDraw.Draw(img).ellipse([w // 4, h // 4, 3 * w // 4, 3 * h // 4], (200, 40, 60))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return buf.getvalue()

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
        png_out = p["input"].get("output_format") == "png" or MODELS[p["model"]].output
        ext = "png" if png_out else "jpg"
        ok = status == "succeeded" and p["outcome"] != "empty"
        return {
            "id": pid,
            "model": p["model"],
            "version": MODELS[p["model"]].version,
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
