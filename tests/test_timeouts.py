"""Nothing waits minutes: a service that takes the connection and then never
answers (a stopped process, a half-open link) is given up on in seconds,
through each library's own timeouts. The tests shrink those seconds; each
call runs on a thread of its own so that, without its bound, the test fails
(after HANG_GUARD seconds) instead of hanging."""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery

from app.platform import queue
from app.platform.config import Settings

HANG_GUARD = 15.0  # far above any bound under test: only a hang reaches it


class Silent:
    """A TCP server that accepts every connection and never says a word."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.server.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:  # closed
                return
            with self.changed:
                self.accepted.append(conn)
                self.changed.notify_all()

    def connections(self, at_least: int) -> int:
        """How many connections came, once ``at_least`` did (or HANG_GUARD
        passed): the kernel takes them before the accept thread, which may
        run late on busy cores, counts them."""
        with self.changed:
            self.changed.wait_for(lambda: len(self.accepted) >= at_least, timeout=HANG_GUARD)
            return len(self.accepted)

    def close(self) -> None:
        self.server.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


def returns(call: Callable[[], Any]) -> Any:
    """``call()``'s result (or exception), on a thread: failing the test if it
    has not returned after HANG_GUARD seconds."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = call()
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(HANG_GUARD)
    assert not worker.is_alive(), f"still waiting after {HANG_GUARD:g} s"
    return out


def test_a_publish_to_a_redis_broker_that_never_answers_gives_up(silent, monkeypatch):
    """kombu's Redis transport has no socket timeout by default: the submit's
    ``dispatch`` waited for ever on a Redis that took the connection."""
    monkeypatch.setattr(queue, "BROKER_SOCKET_TIMEOUT", 0.2, raising=False)
    monkeypatch.setattr(queue, "BROKER_CONNECT_TIMEOUT", 0.2, raising=False)
    env = {"REDIS_URL": f"redis://127.0.0.1:{silent.port}/0", "BFF_VAR_DIR": tempfile.mkdtemp()}
    app = Celery("timeouts")
    app.config_from_object(queue.celery_config(Settings.from_env(env)))
    try:
        out = returns(lambda: queue.dispatch(app, "gen_silent"))
    finally:
        app.close()
    assert out == {"value": False}  # left for the dispatcher (beat) to send
    assert silent.connections(1)  # it did get through to the silent server


def silent_bucket(silent: Silent, monkeypatch) -> Any:
    from app.platform import storage

    for name in ("READ_TIMEOUT", "CONNECT_TIMEOUT", "PROBE_READ_TIMEOUT", "PROBE_CONNECT_TIMEOUT"):
        monkeypatch.setattr(storage, name, 0.2, raising=False)
    env = {
        "R2_ENDPOINT_URL": f"http://127.0.0.1:{silent.port}",
        "R2_ACCESS_KEY_ID": "key",
        "R2_SECRET_ACCESS_KEY": "secret",
        "R2_BUCKET_NAME": "bff",
        "R2_CDN_URL": "https://cdn.example.com",
    }
    return storage.S3Storage(Settings.from_env(env))


def test_health_asks_a_bucket_that_never_answers_once(silent, monkeypatch):
    """/health's bucket check: one short try, where five of 30 s each held
    the probe (and a gunicorn thread) for two and a half minutes."""
    from app.platform.storage import StorageError

    bucket = silent_bucket(silent, monkeypatch)
    out = returns(bucket.check)
    assert isinstance(out.get("error"), StorageError), out
    assert silent.connections(1) == 1


def test_an_upload_to_a_bucket_that_never_answers_is_tried_three_times(silent, monkeypatch):
    """A submit's photo upload: three tries, each READ_TIMEOUT at most."""
    from app.platform.storage import StorageError

    bucket = silent_bucket(silent, monkeypatch)
    out = returns(lambda: bucket.put("users/1/in.png", b"\x89PNG", "image/png"))
    assert isinstance(out.get("error"), StorageError), out
    assert silent.connections(3) == 3


def test_a_replicate_key_check_is_a_probe_of_seconds(silent, monkeypatch):
    """/health checks the key on a request thread (every TTL): 10 s, not the
    30 s a prediction's call may take."""
    from app.providers import replicate
    from app.providers.base import ProviderTransient

    monkeypatch.setattr(replicate, "PROBE_TIMEOUT", 0.2, raising=False)
    env = {"REPLICATE_API_TOKEN": "r8_x", "REPLICATE_BASE_URL": f"http://127.0.0.1:{silent.port}"}
    out = returns(lambda: replicate.ReplicateModel.verify_key(Settings.from_env(env)))
    assert isinstance(out.get("error"), ProviderTransient), out


class Unreachable:
    """A port whose SYNs go unanswered (its one-place accept queue is full),
    as a host behind a firewall that drops packets: a connect waits."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = socket.create_server((host, port), backlog=0)
        self.port = self.server.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex((host, self.port))
            self.fillers.append(filler)

    def close(self) -> None:
        for sock in (*self.fillers, self.server):
            sock.close()


@pytest.fixture
def unreachable() -> Iterator[Unreachable]:
    port = Unreachable()
    yield port
    port.close()


def openai_env(port: int) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}


def test_an_llm_call_to_a_host_that_drops_packets_gives_up_in_seconds(unreachable, monkeypatch):
    """Each of the SDK's three attempts waited BFF_LLM_TIMEOUT (30 s) for the
    connection: ~100 s before analyze or enhance fell back."""
    from app.pipeline import llm

    monkeypatch.setattr(llm, "CONNECT_TIMEOUT", 0.2, raising=False)
    monkeypatch.setattr(llm, "SDK_RETRIES", 0)  # one attempt shows it (and skips the backoff)
    settings = Settings.from_env(openai_env(unreachable.port))
    schema = {"type": "object"}
    out = returns(
        lambda: llm.chat_json(
            settings, system="s", content="c", schema_name="n", schema=schema, validate=dict
        )
    )
    assert isinstance(out.get("error"), llm.LLMCallFailed), out


def test_an_image_call_to_a_host_that_drops_packets_gives_up_in_seconds(unreachable, monkeypatch):
    """The image client's 180 s (an image may take minutes) was its connect's too."""
    import openai

    from app.providers import openai_images

    monkeypatch.setattr(openai_images, "CONNECT_TIMEOUT", 0.2, raising=False)
    env = openai_env(unreachable.port)
    client = openai_images._client(env["OPENAI_API_KEY"], env["OPENAI_BASE_URL"])  # noqa: SLF001
    out = returns(lambda: client.images.generate(model="gpt-image-1", prompt="a coat"))
    assert isinstance(out.get("error"), openai.APITimeoutError), out


def test_a_webhook_host_of_many_silent_addresses_costs_one_connect_budget(monkeypatch):
    """A name may resolve to dozens of addresses that drop our packets: each
    cost CONNECT_TIMEOUT (5 s) in turn, a receiver's choice of how long a
    delivery holds a worker's thread."""
    from urllib3.exceptions import ConnectTimeoutError

    from app.webhooks import guard

    monkeypatch.setattr(guard, "CONNECT_BUDGET", 0.5, raising=False)
    first = Unreachable("127.0.0.2")
    ports = [first] + [Unreachable(f"127.0.0.{n}", first.port) for n in (3, 4, 5)]
    try:
        ips = [f"127.0.0.{n}" for n in (2, 3, 4, 5)]
        url = f"http://receiver.test:{first.port}/hook"
        out = returns(lambda: guard.post(url, ips, {}, b"{}"))
    finally:
        for port in ports:
            port.close()
    assert isinstance(out.get("error"), ConnectTimeoutError), out
