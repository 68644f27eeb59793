"""Webhooks: Standard Webhooks signatures checked by the receiving side with
``standardwebhooks``'s ``Webhook.verify``, retries, recorded deliveries, and
targets refused at submit and at delivery. Name resolution is faked: no test
needs the network."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

from app import create_app
from app.domain.models import User, utcnow
from app.platform.config import Settings
from app.webhooks import (
    REFUSED,
    Refused,
    WebhookDelivery,
    attempt,
    due_deliveries,
    guard,
    resolve_target,
)
from app.webhooks.guard import post
from tests.conftest import make_user
from tests.support.pipeline import run_all


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


PUBLIC = "93.184.215.14"


@pytest.fixture(autouse=True)
def dns(monkeypatch) -> dict[str, list[str]]:
    """Names resolve from this table (tests may change it); IP literals resolve
    as themselves; any other name is unknown. Nothing leaves the process."""
    names = {"hooks.example.com": [PUBLIC], "localhost": ["127.0.0.1", "::1"]}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kw):
        kw["flags"] = socket.AI_NUMERICHOST
        return [info for raw in names.get(host, [host]) for info in real(raw, port, *args, **kw)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


DEV = {"BFF_ALLOW_HTTP_WEBHOOKS": "1", "BFF_WEBHOOK_RETRY_BASE": "0.05"}


@pytest.fixture
def dev_app(app_config):
    return create_app({**app_config, **DEV})


def deliveries(app, gen_id: str) -> list[WebhookDelivery]:
    with app.extensions["bff"].db.session() as session:
        return session.query(WebhookDelivery).filter_by(generation_id=gen_id).all()


def submit(client, user, url: str) -> str:
    resp = client.post(
        "/api/generate/from-prompt",
        headers=user.headers,
        json={"prompt": "coat", "webhookUrl": url},
    )
    assert resp.status_code == 202, resp.json
    return resp.json["id"]


def finished(app, gen_id: str) -> WebhookDelivery:
    """Run the job to its end as a worker would; its one (unsent) delivery."""
    with app.app_context():
        run_all(app, gen_id)
    [d] = deliveries(app, gen_id)
    return d


def test_a_delivery_the_broker_refused_is_the_next_sweeps(dev_app, monkeypatch):
    """Redis down as the job ended: its webhook goes at the beat's next pass
    (seconds), not after the minute a lost message waits."""
    s = dev_app.extensions["bff"]
    client, user = dev_app.test_client(), make_user(dev_app, "offline")
    sent = submit(client, user, "http://127.0.0.1:9/hook")
    finished(dev_app, sent)  # its message went: nothing for the sweep
    real = s.celery.send_task

    def refused(name, *args, **kwargs):
        if name == "webhooks.deliver":
            raise ConnectionError("the broker is down")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(s.celery, "send_task", refused)
    d = finished(dev_app, submit(client, user, "http://127.0.0.1:9/hook"))
    assert (d.status, d.attempts) == ("pending", 0)
    assert due_deliveries(s.db) == [(d.id, 1)]


def test_a_refused_send_leaves_an_attempt_a_worker_claimed_alone(dev_app, monkeypatch):
    """The message got through though the send raised (a reply lost as Redis
    flapped), and a worker claimed the attempt: it is not marked overdue,
    which would send a second POST while the first is in flight."""
    from app.webhooks import send

    s = dev_app.extensions["bff"]
    client, user = dev_app.test_client(), make_user(dev_app, "flapping")
    d = finished(dev_app, submit(client, user, "http://127.0.0.1:9/hook"))
    with s.db.session() as session:  # the worker's claim of attempt 1
        claimed = session.get(WebhookDelivery, d.id)
        claimed.attempts, claimed.next_attempt_at = 1, utcnow() + timedelta(seconds=120)

    def refused(*args, **kwargs):
        raise ConnectionError("no reply")

    monkeypatch.setattr(s.celery, "send_task", refused)
    send(s.db, s.celery, d.id, 1)
    assert due_deliveries(s.db) == []


def test_the_sweep_sends_an_overdue_delivery_once_a_minute_not_every_pass(dev_app):
    s = dev_app.extensions["bff"]
    client, user = dev_app.test_client(), make_user(dev_app, "lost")
    d = finished(dev_app, submit(client, user, "http://127.0.0.1:9/hook"))
    with s.db.session() as session:  # its message lost two minutes ago
        session.get(WebhookDelivery, d.id).next_attempt_at = utcnow() - timedelta(minutes=2)
    assert due_deliveries(s.db) == [(d.id, 1)]
    assert due_deliveries(s.db) == []  # the next pass, seconds later


def test_the_sweep_leaves_a_claim_made_as_it_looked_alone(dev_app):
    """SQLite has no FOR UPDATE: a worker may claim an overdue attempt between
    the sweep's look and its write; the claim must stand (it guards the
    attempt in flight from a second POST for two minutes)."""
    import sqlite3

    from sqlalchemy import event

    s = dev_app.extensions["bff"]
    client, user = dev_app.test_client(), make_user(dev_app, "racing")
    d = finished(dev_app, submit(client, user, "http://127.0.0.1:9/hook"))
    with s.db.session() as session:
        session.get(WebhookDelivery, d.id).next_attempt_at = utcnow() - timedelta(minutes=2)
    claim_until = utcnow() + timedelta(seconds=120)
    path = s.settings.database_url.removeprefix("sqlite:///")

    claimed: list[bool] = []

    def claim_first(conn, cursor, statement, *args) -> None:
        if statement.startswith("UPDATE webhook_deliveries") and not claimed:
            claimed.append(True)
            with sqlite3.connect(path) as worker:  # the worker's claim, committed
                worker.execute(
                    "UPDATE webhook_deliveries SET attempts = 1, next_attempt_at = ? WHERE id = ?",
                    (claim_until.replace(tzinfo=None).isoformat(" "), d.id),
                )

    event.listen(s.db.engine, "before_cursor_execute", claim_first)
    try:
        due_deliveries(s.db)
    finally:
        event.remove(s.db.engine, "before_cursor_execute", claim_first)
    assert claimed
    [after] = deliveries(dev_app, d.generation_id)
    assert after.attempts == 1
    assert after.next_attempt_at.replace(tzinfo=None) == claim_until.replace(tzinfo=None)


def test_secret_follows_the_spec_per_user_and_old_style_secrets_are_replaced(
    app, client, user, other_user
):
    assert client.get("/api/webhooks/secret").status_code == 401
    secret = client.get("/api/webhooks/secret", headers=user.headers).json["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:], validate=True)) == 32
    assert client.get("/api/webhooks/secret", headers=user.headers).json["secret"] == secret
    theirs = client.get("/api/webhooks/secret", headers=other_user.headers).json["secret"]
    assert theirs.startswith("whsec_") and theirs != secret
    with app.extensions["bff"].db.session() as session:
        session.get(User, user.id).webhook_secret = "whsec_not-base64_url-safe-token"
    fresh = client.get("/api/webhooks/secret", headers=user.headers).json["secret"]
    assert fresh != secret and len(base64.b64decode(fresh[6:], validate=True)) == 32


SPEC = {"records": [{"garmentType": "Dress", "colors": {"primary": "Black"}}]}


@pytest.mark.parametrize(
    "path,body", [("from-prompt", {"prompt": "red coat"}), ("from-image", {"vltSpec": SPEC})]
)
@pytest.mark.parametrize(
    "url,problem",
    [
        ("https://hooks.example.com/bff", None),
        ("http://hooks.example.com/bff", "must be https"),
        ("http://127.0.0.1:9000/hook", "must be https"),  # plain http to loopback: development only
        ("ftp://hooks.example.com/", "must be an https"),
        ("https://", "must be an https"),
        ("https://10.0.0.1/hook", "10.0.0.1 is a private address"),
        ("https://127.0.0.1/x", "loopback"),
        ("https://[::1]/x", "loopback"),
        ("https://169.254.169.254/x", "link-local"),
        ("https://hooks.example.invalid/x", "cannot resolve hooks.example.invalid"),
        (f"https://{'a' * 64}.example.com/x", "not a valid host name"),
    ],
)
def test_webhook_url_checked_at_submit(client, user, path, body, url, problem):
    resp = client.post(
        f"/api/generate/{path}", headers=user.headers, json={**body, "webhookUrl": url}
    )
    assert resp.status_code == (202 if problem is None else 422), resp.json
    if problem:
        [detail] = resp.json["error"]["details"]
        assert detail["field"] == "webhookUrl" and problem in detail["message"]


def test_signed_delivery_retried_after_500_then_delivered(dev_app):
    client, user = dev_app.test_client(), make_user(dev_app, "hooked")
    receiver = Receiver([500, 200])
    try:
        gen_id = submit(client, user, receiver.url)
        d = finished(dev_app, gen_id)
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
        for headers, body in receiver.received:
            payload = Webhook(secret).verify(body, headers)  # raises if the signature is wrong
            assert payload["mode"] == "prompt" and "stages" in payload and payload["assets"]
            assert payload["id"] == gen_id and payload["status"] == "completed"
            assert headers["BFF-Event"] == "generation.completed"  # (a refine's: .refined)
        assert {h["webhook-id"] for h, _ in receiver.received} == {d.id}  # the same on retries
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


def test_a_long_retry_wait_is_taken_in_hops_a_broker_lets_a_worker_hold(app, monkeypatch):
    """A countdown's message is held by a worker, unacked, until it runs: past
    RabbitMQ's consumer_timeout (30 min by default, delivery to ack) RabbitMQ
    closes the channel and the generator's every unacked message with it;
    past Redis' visibility timeout (1 h) it is delivered again. A 4 h wait
    (BFF_WEBHOOK_RETRY_BASE doubled to its cap) goes in hops well inside both."""
    import workers.notify as notify

    sent = []
    monkeypatch.setattr(notify, "attempt", lambda db, settings, d, n: (n + 1, 4 * 3600.0))
    monkeypatch.setattr(notify, "send", lambda db, celery, d, n, countdown: sent.append(countdown))
    with app.app_context():
        notify.deliver.run("whd_x", 9)
    [countdown] = sent
    rabbitmq_consumer_timeout = 1800
    assert 0 < countdown <= rabbitmq_consumer_timeout / 2


def test_gives_up_after_the_max_age(app_config):
    app = create_app({**app_config, **DEV, "BFF_WEBHOOK_MAX_AGE": "0.2"})
    receiver = Receiver([503] * 10)
    try:
        gen_id = submit(app.test_client(), make_user(app, "gives-up"), receiver.url)
        d, s, n = finished(app, gen_id), app.extensions["bff"], 1
        while (nxt := attempt(s.db, s.settings, d.id, n)) is not None:
            n, wait = nxt
            time.sleep(wait)
        [d] = deliveries(app, gen_id)
        assert d.status == "failed" and d.last_error.startswith("gave up: HTTP 503")
        assert d.attempts == len(receiver.received) >= 2
    finally:
        receiver.close()


def test_cancel_queues_a_canceled_webhook(client, user, app):
    gen_id = submit(client, user, "https://hooks.example.com/x")
    assert client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers).status_code == 200
    [d] = deliveries(app, gen_id)
    assert d.event_type == "generation.canceled"
    assert json.loads(d.payload)["status"] == "canceled"


@pytest.mark.parametrize(
    "url,why",
    [
        ("https://192.168.0.10/hook", "private"),
        ("https://[fe80::1]/hook", "link-local"),
        ("https://[::ffff:10.0.0.1]/hook", "private"),
        ("https://localhost/hook", "^localhost resolves to an address that is not public$"),
        ("https://0.0.0.0/hook", "private"),
        ("https://[ff02::1]/hook", "not a public"),
        ("https://[2002:7f00:1::]/hook", "loopback"),  # 6to4 of 127.0.0.1
        ("https://[2002:a00:1::]/hook", "private"),  # 6to4 of 10.0.0.1
        ("https://[fec0::1]/hook", "not a public"),  # site-local
        # A name's addresses are not told: they would map the network's names.
        (
            "https://mixed.example.com/hook",
            "^mixed.example.com resolves to an address that is not public$",
        ),
    ],
)
def test_private_loopback_and_link_local_targets_are_refused(dns, url, why):
    dns["mixed.example.com"] = [PUBLIC, "10.9.8.7"]  # every address is checked
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"})  # not development
    with pytest.raises(Refused, match=why):
        resolve_target(url, settings)


def test_public_address_accepted_and_loopback_allowed_in_development():
    prod = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert resolve_target("https://hooks.example.com/hook", prod) == [PUBLIC]
    dev = Settings.from_env({})  # the embedded default
    assert resolve_target("http://127.0.0.1:9/hook", dev) == ["127.0.0.1"]
    assert resolve_target("http://localhost:9/hook", dev) == ["127.0.0.1", "::1"]
    with pytest.raises(Refused, match="must be https"):  # plain http to a public host
        resolve_target("http://hooks.example.com/hook", dev)


def test_a_dual_stack_receiver_is_called_on_ipv4_first_then_each_address(dns):
    """Hosts without IPv6 (containers often) cannot reach an AAAA address."""
    dns["dual.example.com"] = ["2600:9000:2000::1", "52.84.1.1"]
    prod = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"})
    ips = resolve_target("https://dual.example.com/hook", prod)
    assert ips == ["52.84.1.1", "2600:9000:2000::1"]
    receiver = Receiver([204])
    try:  # nothing listens on 127.0.0.2: the next address takes the call
        url = f"http://receiver.test:{receiver.server.server_port}/hook"
        assert post(url, ["127.0.0.2", "127.0.0.1"], {}, b"{}") == 204
        assert len(receiver.received) == 1
    finally:
        receiver.close()


class Dripper:
    """A hostile receiver: reads the request, then sends its status line and
    headers (or, ``headers=False``, only the first bytes of them) and then a
    byte at a time, for ever, with a huge Content-Length."""

    def __init__(self, headers: bool) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port, self.sent = self.sock.getsockname()[1], 0
        threading.Thread(target=self._serve, args=(headers,), daemon=True).start()

    def _serve(self, headers: bool) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 400000000\r\n\r\n"
            conn.sendall(head if headers else head[:12])
            try:
                while True:
                    conn.sendall(b"x")
                    self.sent += 1
                    time.sleep(0.2)
            except OSError:  # the caller hung up: what we want
                pass


@pytest.mark.parametrize("headers", [True, False])
def test_a_receiver_dripping_its_answer_holds_no_thread(headers):
    """The status is what counts: a body is never read (it may be endless or
    huge), and a status line sent a byte at a time ends at the deadline."""
    dripper, outcome = Dripper(headers), []
    url = f"http://receiver.test:{dripper.port}/hook"

    def call() -> None:
        try:
            outcome.append(post(url, ["127.0.0.1"], {}, b"{}", timeout=1.5))
        except Exception as exc:  # whatever the hang-up raises: the delivery is retried
            outcome.append(type(exc))

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(6)
    dripper.sock.close()
    assert not caller.is_alive(), f"still reading after {dripper.sent} bytes"
    assert outcome == [200] if headers else issubclass(outcome[0], Exception)


def test_a_receiver_has_the_whole_timeout_to_answer_not_the_connects(monkeypatch):
    """The connect's timeout bounds taking the connection only: a receiver
    answering after it, within the delivery's timeout, is heard."""
    monkeypatch.setattr(guard, "CONNECT_TIMEOUT", 0.3)

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            time.sleep(0.8)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://receiver.test:{server.server_port}/hook"
        assert post(url, ["127.0.0.1"], {}, b"{}", timeout=3) == 200
    finally:
        server.shutdown()


def test_a_resolver_hiccup_at_delivery_is_retried_not_refused(dev_app, dns):
    receiver = Receiver([200])
    dns["receiver.test"] = ["127.0.0.1"]
    try:
        url = f"http://receiver.test:{receiver.server.server_port}/hook"
        gen_id = submit(dev_app.test_client(), make_user(dev_app, "hiccup"), url)
        d, s = finished(dev_app, gen_id), dev_app.extensions["bff"]
        del dns["receiver.test"]  # the resolver fails for a moment
        nxt = attempt(s.db, s.settings, d.id, 1)
        [d] = deliveries(dev_app, gen_id)
        assert nxt is not None and nxt[0] == 2, (d.status, d.last_error)
        assert d.status == "pending" and "cannot resolve receiver.test" in d.last_error
        dns["receiver.test"] = ["127.0.0.1"]
        time.sleep(nxt[1])
        assert attempt(s.db, s.settings, d.id, 2) is None
        [d] = deliveries(dev_app, gen_id)
        assert d.status == "delivered" and len(receiver.received) == 1
    finally:
        receiver.close()


def test_target_re_pointed_after_submit_is_refused_at_delivery(dev_app, dns):
    gen_id = submit(
        dev_app.test_client(), make_user(dev_app, "ssrf"), "https://hooks.example.com/x"
    )
    dns["hooks.example.com"] = ["169.254.169.254"]  # DNS changed since the submit
    d, s = finished(dev_app, gen_id), dev_app.extensions["bff"]
    assert attempt(s.db, s.settings, d.id, 1) is None
    [d] = deliveries(dev_app, gen_id)
    assert d.status == REFUSED and "link-local" in d.last_error


def test_completion_and_its_webhook_commit_together(client, user, app):
    gen_id = submit(client, user, "https://hooks.example.com/x")
    with app.app_context():
        run_all(app, gen_id)
    [d] = deliveries(app, gen_id)
    payload = json.loads(d.payload)
    # The message written in the completing transaction shows the finished job.
    assert d.event_type == "generation.completed" and payload["status"] == "completed"
    assert len(payload["assets"]) == 1 and payload["completedAt"]


def test_a_job_canceled_mid_stage_gets_one_webhook(client, user, app, monkeypatch):
    from app.pipeline import runner

    gen_id = submit(client, user, "https://hooks.example.com/x")
    original = runner.STAGE_FUNCS["enhance"]

    def cancel_while_working(ctx):
        assert (
            client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers).status_code == 200
        )
        return original(ctx)

    monkeypatch.setitem(runner.STAGE_FUNCS, "enhance", cancel_while_working)
    with app.app_context():
        run_all(app, gen_id)
    [d] = deliveries(app, gen_id)
    assert d.event_type == "generation.canceled"


def test_a_newer_message_supersedes_one_still_being_retried(dev_app, monkeypatch):
    """The job failed, its receiver was down, the job was retried and
    completed: the old ``failed`` is never sent after the ``completed``."""
    from app.pipeline import runner
    from app.pipeline.context import StageFailed
    from app.webhooks import delivery

    client, user = dev_app.test_client(), make_user(dev_app, "retrier")
    receiver = Receiver([500])  # down once, then up
    s = dev_app.extensions["bff"]
    try:
        gen_id = submit(client, user, receiver.url)
        with monkeypatch.context() as m:
            m.setitem(
                runner.STAGE_FUNCS,
                "store",
                lambda ctx: (_ for _ in ()).throw(StageFailed("storage")),
            )
            failed = finished(dev_app, gen_id)
        assert failed.event_type == "generation.failed"
        assert attempt(s.db, s.settings, failed.id, 1)[0] == 2  # 500: to be retried
        assert client.post(f"/api/generate/{gen_id}/retry", headers=user.headers).status_code == 202
        with dev_app.app_context():
            run_all(dev_app, gen_id, ["store"])
        by_event = {d.event_type: d for d in deliveries(dev_app, gen_id)}
        assert by_event["generation.failed"].status == "superseded"
        assert attempt(s.db, s.settings, failed.id, 2) is None  # never sent again
        assert attempt(s.db, s.settings, by_event["generation.completed"].id, 1) is None
        sent = [json.loads(body)["status"] for _, body in receiver.received]
        assert sent == ["failed", "completed"]
        # One in flight as it was superseded is not scheduled again either.
        delivery._record(s.db, failed.id, "pending", 500, "HTTP 500", delivery.utcnow())
        assert {d.event_type: d.status for d in deliveries(dev_app, gen_id)} == {
            "generation.failed": "superseded",
            "generation.completed": "delivered",
        }
    finally:
        receiver.close()


@pytest.mark.parametrize(
    ("env", "allowed"),
    [
        ({}, True),  # make dev: the embedded default on a laptop
        ({"BFF_PUBLIC_URL": "http://127.0.0.1:3001"}, True),
        ({"BFF_PUBLIC_URL": "https://bff.example.com"}, False),  # served to others
        ({"BFF_PUBLIC_URL": "https://bff.example.com", "BFF_ALLOW_HTTP_WEBHOOKS": "1"}, True),
    ],
)
def test_loopback_webhooks_are_for_a_server_nobody_else_uses(tmp_path, env, allowed):
    """The embedded default takes loopback webhooks (a receiver on the same
    laptop); an embedded server published under a public URL does not,
    unless its operator opts in: any key holder would make it POST to this
    machine's own ports."""
    settings = Settings.from_env({"BFF_VAR_DIR": str(tmp_path), **env})
    assert settings.embedded_broker
    problem = guard.submit_url_problem("http://127.0.0.1:5555/api/workers", settings)
    assert (problem is None) is allowed, problem
