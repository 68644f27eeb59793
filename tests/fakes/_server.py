"""What the fakes share: a WSGI app served from a thread, a real PNG, failure injection."""

from __future__ import annotations

import argparse
import io
import json
import threading
from collections import Counter, deque
from typing import Any

from PIL import Image, ImageDraw
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


def png(width: int, height: int, seed: str = "") -> bytes:
    h = abs(hash(seed)) % 200
    img = Image.new("RGB", (width, height), (30 + h % 50, 60, 90 + h % 100))
    ImageDraw.Draw(img).ellipse([width // 4, height // 4, 3 * width // 4, 3 * height // 4], "white")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, headers, content_type="application/json")


class FakeServer:
    """Subclasses implement ``route(request) -> Response``. Thread-safe state via ``lock``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.lock = threading.RLock()
        self.counters: Counter[str] = Counter()
        self.failures: deque[dict[str, Any]] = deque()
        self.server = make_server(host, port, self.wsgi, threaded=True)
        self.host, self.port = host, self.server.server_port
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- control (Python API; the same over HTTP under /_fake/)
    def inject(self, kind: str, times: int = 1, **options: Any) -> None:
        """The next ``times`` matching calls fail with ``kind`` (see the subclass)."""
        with self.lock:
            for _ in range(times):
                self.failures.append({"kind": kind, **options})

    def take_failure(self, kinds: tuple[str, ...]) -> dict[str, Any] | None:
        with self.lock:
            for f in list(self.failures):
                if f["kind"] in kinds:
                    self.failures.remove(f)
                    return f
        return None

    def reset(self) -> None:
        with self.lock:
            self.failures.clear()
            self.counters.clear()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"counters": dict(self.counters), "pending_failures": list(self.failures)}

    # -- serving
    def wsgi(self, environ, start_response):
        request = Request(environ)
        if request.path == "/_fake/inject" and request.method == "POST":
            body = request.get_json(force=True)
            self.inject(body.pop("kind"), int(body.pop("times", 1)), **body)
            response = json_response({"ok": True})
        elif request.path == "/_fake/stats":
            response = json_response(self.stats())
        elif request.path == "/_fake/reset" and request.method == "POST":
            self.reset()
            response = json_response({"ok": True})
        else:
            response = self.route(request)
        return response(environ, start_response)

    def route(self, request: Request) -> Response:
        raise NotImplementedError

    def start(self) -> FakeServer:
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cli(make, description: str) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=None, help="seconds per image")
    args = parser.parse_args()
    fake = make(args.host, args.port)
    if args.latency is not None:
        fake.latency = args.latency
    print(f"{description} on {fake.url}", flush=True)
    try:
        fake.server.serve_forever()
    except KeyboardInterrupt:
        pass
