"""A webhook host's name that does not resolve in time: the system resolver
has no deadline of its own (tens of seconds when the name servers never
answer), so the guard gives up after RESOLVE_TIMEOUT. At submit that is the
webhookUrl's 422, at delivery an outage retried; lookups still waiting on a
dead name server are bounded (past the bound a submit is a 503: no fault of
its URL). Resolution is faked in-process: a hung name
server is a lookup that blocks until the test ends."""

from __future__ import annotations

import socket
import threading
import time
import types
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from app import create_app
from app.webhooks import attempt, guard
from tests.conftest import make_user
from tests.test_webhooks import DEV, Receiver, deliveries, finished, submit

HUNG = "hung.example.com"
# Without the deadline, how long the fake resolver hangs before giving up
# (a test of the old code fails after this long instead of hanging).
RESOLVER_GIVES_UP = 5.0


class Resolver:
    """Names from ``names`` resolve at once; a name in ``hung`` blocks until
    ``release`` (or RESOLVER_GIVES_UP), then fails as a dead server's does."""

    def __init__(self) -> None:
        self.names = {"hooks.example.com": ["93.184.215.14"], "receiver.test": ["127.0.0.1"]}
        self.hung: set[str] = set()
        self.released = threading.Event()
        self.waiting = 0  # lookups blocked right now
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.real = socket.getaddrinfo

    def getaddrinfo(self, host, port, *args, **kw):
        if host in self.hung:
            with self.changed:
                self.waiting += 1
                self.changed.notify_all()
            try:
                self.released.wait(RESOLVER_GIVES_UP)
            finally:
                with self.changed:
                    self.waiting -= 1
                    self.changed.notify_all()
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        kw["flags"] = socket.AI_NUMERICHOST
        addrs = self.names.get(host, [host])
        return [info for raw in addrs for info in self.real(raw, port, *args, **kw)]

    def have_waiting(self, n: int) -> bool:
        """Whether ``n`` lookups are (soon) blocked: a lookup's thread may not
        have run yet when its caller gave up on it (2 busy cores, xdist)."""
        with self.changed:
            return self.changed.wait_for(lambda: self.waiting == n, timeout=RESOLVER_GIVES_UP)


@pytest.fixture
def resolver(monkeypatch) -> Iterator[Resolver]:
    fake = Resolver()
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    monkeypatch.setattr(guard, "RESOLVE_TIMEOUT", 0.05, raising=False)
    monkeypatch.setattr(guard, "RESOLVE_MAX_PENDING", 2)
    monkeypatch.setattr(guard, "_overdue", guard._Overdue())  # noqa: SLF001 - the test's own
    fake.hung.add(HUNG)
    yield fake
    fake.released.set()  # the lookups left behind end now


def overdue_become(n: int) -> bool:
    """Whether the guard's count of lookups left waiting is ``n`` (their
    threads end a moment after the resolver gives up)."""
    deadline = time.monotonic() + RESOLVER_GIVES_UP
    while guard._overdue.count != n:  # noqa: SLF001 - the fixture's own
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def submit_hung(client, user) -> dict:
    resp = client.post(
        "/api/generate/from-prompt",
        headers=user.headers,
        json={"prompt": "coat", "webhookUrl": f"https://{HUNG}/hook"},
    )
    assert resp.status_code == 422, resp.json
    [detail] = resp.json["error"]["details"]
    assert detail["field"] == "webhookUrl"
    return detail


def test_a_host_that_does_not_resolve_in_time_is_a_422_at_submit(client, user, resolver):
    detail = submit_hung(client, user)
    assert f"cannot resolve {HUNG} in time" in detail["message"], detail
    # Answered while the lookup still waits on the name server.
    assert resolver.have_waiting(1)


def busy(resp) -> None:
    """Refused for want of a lookup, not for its URL: a 503 to try again."""
    assert resp.status_code == 503, resp.json
    assert resp.json["error"]["code"] == "service_unavailable"
    assert "too many lookups still waiting" in resp.json["error"]["message"]
    assert resp.headers["Retry-After"]


def test_lookups_left_waiting_are_bounded_then_refused_at_once(client, user, resolver):
    for _ in range(2):  # each leaves its lookup waiting
        assert "in time" in submit_hung(client, user)["message"]
    assert resolver.have_waiting(2)
    hung = {"prompt": "coat", "webhookUrl": f"https://{HUNG}/hook"}
    busy(client.post("/api/generate/from-prompt", headers=user.headers, json=hung))
    assert resolver.waiting == 2  # no third thread is started
    # Another key's good URL is no 422 for the hung names of the first's.
    hooks = {"prompt": "coat", "webhookUrl": "https://hooks.example.com/hook"}
    busy(client.post("/api/generate/from-prompt", headers=user.headers, json=hooks))
    busy(client.post("/api/batches", headers=user.headers, json={"items": [hooks]}))
    resolver.released.set()  # the resolver gives up: the slots come back
    assert overdue_become(0)
    ok = client.post("/api/generate/from-prompt", headers=user.headers, json=hooks)
    assert ok.status_code == 202, ok.json


def test_a_resolver_timeout_at_delivery_is_an_outage_retried(app_config, resolver):
    app = create_app({**app_config, **DEV})
    receiver = Receiver([200])
    try:
        url = f"http://receiver.test:{receiver.server.server_port}/hook"
        gen_id = submit(app.test_client(), make_user(app, "slowdns"), url)
        d, s = finished(app, gen_id), app.extensions["bff"]
        resolver.hung.add("receiver.test")  # its name servers stop answering
        nxt = attempt(s.db, s.settings, d.id, 1)
        [d] = deliveries(app, gen_id)
        assert nxt is not None and nxt[0] == 2, (d.status, d.last_error)
        assert d.status == "pending" and "cannot resolve receiver.test in time" in d.last_error
        assert resolver.have_waiting(1) and not receiver.received
    finally:
        receiver.close()


def test_a_lookup_whose_thread_cannot_start_gives_its_slot_back(resolver, monkeypatch):
    """A process out of threads ("can't start new thread"): the lookup is
    refused as the resolver's outage, and its slot is not lost for good
    (RESOLVE_MAX_PENDING such moments refused every webhookUrl after)."""

    class NoThread(threading.Thread):
        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    parts = urlsplit("https://hooks.example.com/hook")
    monkeypatch.setattr(guard, "threading", types.SimpleNamespace(Thread=NoThread))
    for _ in range(3):  # more than the fixture's 2 slots
        with pytest.raises(guard.ResolverBusy, match="no thread to spare"):
            guard._resolve(parts)  # noqa: SLF001
    monkeypatch.setattr(guard, "threading", threading)
    assert guard._resolve(parts) == ["93.184.215.14"]  # noqa: SLF001


def test_lookups_answered_in_time_are_not_bounded(resolver, monkeypatch):
    """The bound is on lookups left waiting past their deadline: more at once
    that answer in time (gunicorn's and the generator's 32 threads each) all
    resolve. Each here answers once all three are under way."""
    monkeypatch.setattr(guard, "RESOLVE_TIMEOUT", 5.0)
    together, answer = threading.Barrier(3, timeout=3), resolver.getaddrinfo

    def lookup(*args, **kw):
        together.wait()
        return answer(*args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    results: list = []

    def resolve() -> None:
        try:
            results.append(guard._resolve(urlsplit("https://hooks.example.com/hook")))  # noqa: SLF001
        except Exception as exc:  # noqa: BLE001 - shown by the assert
            results.append(exc)

    callers = [threading.Thread(target=resolve) for _ in range(3)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(10)
    assert results == [["93.184.215.14"]] * 3
    assert overdue_become(0)
