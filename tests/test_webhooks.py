"""Webhooks: Standard Webhooks signatures checked by the receiving side with the
independent ``standardwebhooks`` package, retries, recorded deliveries, and
refused targets."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

from app import create_app
from app.platform.config import Settings
from app.webhooks import REFUSED, Refused, WebhookDelivery, attempt, resolve_target
from tests.conftest import make_user
from tests.support.pipeline import run_all as run_chain
from tests.test_events import run_all


class Receiver:
    """An HTTP endpoint that answers with the next scripted status code and
    keeps what it received."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses, self.received = list(statuses), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((dict(self.headers), body))
                self.send_response(outer.statuses.pop(0) if outer.statuses else 200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/bff?src=test"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def dev_app(app_config):
    return create_app(
        {**app_config, "BFF_ALLOW_HTTP_WEBHOOKS": "1", "BFF_WEBHOOK_RETRY_BASE": "0.05"}
    )


def deliveries(app, gen_id: str) -> list[WebhookDelivery]:
    with app.extensions["bff"].db.session() as session:
        return session.query(WebhookDelivery).filter_by(generation_id=gen_id).all()


def test_secret_follows_the_spec_and_old_style_secrets_are_replaced(app, client, user):
    secret = client.get("/api/webhooks/secret", headers=user.headers).json["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:], validate=True)) == 32
    assert client.get("/api/webhooks/secret", headers=user.headers).json["secret"] == secret
    from app.domain.models import User

    with app.extensions["bff"].db.session() as session:
        session.get(User, user.id).webhook_secret = "whsec_not-base64_url-safe-token"
    fresh = client.get("/api/webhooks/secret", headers=user.headers).json["secret"]
    assert fresh != secret and len(base64.b64decode(fresh[6:], validate=True)) == 32


@pytest.mark.parametrize(
    "url,ok",
    [
        ("https://hooks.example.com/bff", True),
        ("http://hooks.example.com/bff", False),
        ("http://127.0.0.1:9000/hook", False),  # plain http to loopback: development only
        ("ftp://hooks.example.com/", False),
        ("https://", False),
    ],
)
def test_webhook_url_must_be_https(client, user, url, ok):
    resp = client.post(
        "/api/generate/from-prompt",
        headers=user.headers,
        json={"prompt": "red wool coat", "webhookUrl": url},
    )
    assert resp.status_code == (202 if ok else 422), resp.json
    if not ok:
        assert resp.json["error"]["details"][0]["field"] == "webhookUrl"


def test_signed_delivery_retried_after_500_then_delivered(dev_app):
    client, user = dev_app.test_client(), make_user(dev_app, "hooked")
    receiver = Receiver([500, 200])
    try:
        resp = client.post(
            "/api/generate/from-prompt",
            headers=user.headers,
            json={"prompt": "teal satin gown", "webhookUrl": receiver.url},
        )
        assert resp.status_code == 202, resp.json
        gen_id = resp.json["id"]
        with dev_app.app_context():  # as in a worker: the final stage queues the webhook
            run_all(dev_app, gen_id)
        [d] = deliveries(dev_app, gen_id)
        assert d.status == "pending" and d.event_type == "generation.completed"

        s = dev_app.extensions["bff"]
        nxt = attempt(s.db, s.settings, d.id, 1)
        assert nxt is not None and nxt[0] == 2 and 0 < nxt[1] < 1
        [d] = deliveries(dev_app, gen_id)
        assert (d.status, d.attempts, d.last_status_code) == ("pending", 1, 500)
        time.sleep(nxt[1])
        assert attempt(s.db, s.settings, d.id, 2) is None
        assert attempt(s.db, s.settings, d.id, 2) is None  # a duplicate message: dropped
        [d] = deliveries(dev_app, gen_id)
        assert (d.status, d.attempts, d.last_status_code) == ("delivered", 2, 200)
        assert d.delivered_at is not None

        secret = client.get("/api/webhooks/secret", headers=user.headers).json["secret"]
        assert len(receiver.received) == 2
        ids = set()
        for headers, body in receiver.received:
            payload = Webhook(secret).verify(body, headers)  # raises if the signature is wrong
            ids.add(headers["webhook-id"])
            assert payload["mode"] == "prompt" and "stages" in payload
            assert payload["id"] == gen_id and payload["status"] == "completed"
            assert payload["assets"]
        assert ids == {d.id}  # the same message id on every retry
        # A tampered body or another user's secret does not verify.
        headers, body = receiver.received[-1]
        with pytest.raises(Exception, match="signature"):
            Webhook(secret).verify(body.replace(b"completed", b"failed"), headers)
        other = client.get(
            "/api/webhooks/secret", headers=make_user(dev_app, "someone").headers
        ).json["secret"]
        with pytest.raises(Exception, match="signature"):
            Webhook(other).verify(body, headers)
    finally:
        receiver.close()


def test_gives_up_after_the_max_age(app_config):
    app = create_app(
        {
            **app_config,
            "BFF_ALLOW_HTTP_WEBHOOKS": "1",
            "BFF_WEBHOOK_RETRY_BASE": "0.05",
            "BFF_WEBHOOK_MAX_AGE": "0.2",
        }
    )
    client, user = app.test_client(), make_user(app, "gives-up")
    receiver = Receiver([503] * 10)
    try:
        gen_id = client.post(
            "/api/generate/from-prompt",
            headers=user.headers,
            json={"prompt": "grey knit", "webhookUrl": receiver.url},
        ).json["id"]
        with app.app_context():
            run_all(app, gen_id)
        [d] = deliveries(app, gen_id)
        s, n = app.extensions["bff"], 1
        while (nxt := attempt(s.db, s.settings, d.id, n)) is not None:
            n, wait = nxt
            time.sleep(wait)
        [d] = deliveries(app, gen_id)
        assert d.status == "failed" and d.last_error.startswith("gave up: HTTP 503")
        assert d.attempts == len(receiver.received) >= 2
    finally:
        receiver.close()


def test_cancel_queues_a_canceled_webhook(client, user, app):
    gen_id = client.post(
        "/api/generate/from-prompt",
        headers=user.headers,
        json={"prompt": "navy blazer", "webhookUrl": "https://hooks.example.com/x"},
    ).json["id"]
    assert client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers).status_code == 200
    [d] = deliveries(app, gen_id)
    assert d.event_type == "generation.canceled"
    assert json.loads(d.payload)["status"] == "canceled"


@pytest.mark.parametrize(
    "url,why",
    [
        ("https://10.1.2.3/hook", "private"),
        ("https://192.168.0.10/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[fe80::1]/hook", "link-local"),
        ("https://[::ffff:10.0.0.1]/hook", "private"),
        ("https://localhost/hook", "loopback"),
        ("https://127.0.0.1:8443/hook", "loopback"),
        ("https://0.0.0.0/hook", "private"),
        ("https://[ff02::1]/hook", "not a public"),
    ],
)
def test_private_loopback_and_link_local_targets_are_refused(url, why):
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"})  # not development
    with pytest.raises(Refused, match=why):
        resolve_target(url, settings)


def test_public_address_accepted_and_loopback_allowed_in_development():
    prod = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert resolve_target("https://93.184.215.14/hook", prod) == "93.184.215.14"
    dev = Settings.from_env({})  # the embedded default
    assert resolve_target("http://127.0.0.1:9/hook", dev) == "127.0.0.1"


def test_refused_target_is_recorded_and_never_called(dev_app):
    client, user = dev_app.test_client(), make_user(dev_app, "ssrf")
    gen_id = client.post(
        "/api/generate/from-prompt",
        headers=user.headers,
        json={"prompt": "linen", "webhookUrl": "https://169.254.169.254/latest/meta-data"},
    ).json["id"]
    with dev_app.app_context():
        run_all(dev_app, gen_id)
    [d] = deliveries(dev_app, gen_id)
    s = dev_app.extensions["bff"]
    assert attempt(s.db, s.settings, d.id, 1) is None
    [d] = deliveries(dev_app, gen_id)
    assert d.status == REFUSED and "link-local" in d.last_error


def test_completion_and_its_webhook_commit_together(client, user, app):
    gen_id = client.post(
        "/api/generate/from-prompt",
        headers=user.headers,
        json={"prompt": "teal wrap dress", "webhookUrl": "https://hooks.example.com/x"},
    ).json["id"]
    with app.app_context():
        run_chain(app, gen_id)
    [d] = deliveries(app, gen_id)
    payload = json.loads(d.payload)
    # The message written in the completing transaction shows the finished job.
    assert d.event_type == "generation.completed" and payload["status"] == "completed"
    assert len(payload["assets"]) == 1 and payload["completedAt"]


def test_a_job_canceled_mid_stage_gets_one_webhook(client, user, app, monkeypatch):
    import app.pipeline as pipeline

    gen_id = client.post(
        "/api/generate/from-prompt",
        headers=user.headers,
        json={"prompt": "red coat", "webhookUrl": "https://hooks.example.com/x"},
    ).json["id"]
    original = pipeline.STAGE_FUNCS["enhance"]

    def cancel_while_working(ctx):
        assert (
            client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers).status_code == 200
        )
        return original(ctx)

    monkeypatch.setitem(pipeline.STAGE_FUNCS, "enhance", cancel_while_working)
    with app.app_context():
        run_chain(app, gen_id)
    [d] = deliveries(app, gen_id)
    assert d.event_type == "generation.canceled"
