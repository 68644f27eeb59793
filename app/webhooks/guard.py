"""The SSRF guard: which webhook URLs we call. The same rules at submit (a bad
URL is a 422 there) and before every delivery (DNS can change in between):
https, and a host that resolves to public addresses only: not private,
loopback (except in development), link-local, reserved, multicast or
unspecified. Plain http is for loopback in development only. The request then
goes to the checked address itself (TLS still verifies the host name), so DNS
cannot be re-pointed between the check and the call."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import suppress
from functools import cache
from typing import Any
from urllib.parse import SplitResult, urlsplit

from app.platform.config import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
CONNECT_TIMEOUT = 5.0  # seconds for one address to take the connection
# Seconds for all the addresses' connects: a name may resolve to dozens of
# addresses that drop our packets, each costing CONNECT_TIMEOUT in turn.
CONNECT_BUDGET = 10.0
# The system resolver's own limit (resolv.conf's timeout x attempts x servers)
# is tens of seconds: a host whose name servers never answer would hold an
# API request's thread that long. Past this, the host "did not resolve in time".
RESOLVE_TIMEOUT = 3.0
# A lookup past its deadline keeps its thread until the resolver gives up:
# at most this many per process may be left so, the next refused at once
# (lookups that answer in time are not counted: 32 threads may resolve at once).
RESOLVE_MAX_PENDING = 8
HTTP_ONLY_LOOPBACK = "must be https (plain http only to loopback in development)"


class Refused(Exception):
    """The target is not an address we are willing to call. ``detail``: the
    whole reason, for our own records (the message may leave things out)."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail or message


class Unresolved(Refused):
    """The host name does not resolve now: refused at submit, but at delivery
    time a resolver's hiccup is an outage like any other, retried."""


class ResolverBusy(Unresolved):
    """No lookup may start now (too many still wait on dead name servers, or
    no thread to spare): no fault of the URL's, so a submit is a 503 to try again (another key's
    hung names must not make a good URL a 422); a delivery retries it."""


class _Overdue:
    """The lookups given up on (past RESOLVE_TIMEOUT) whose threads still
    wait on the resolver."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0


_overdue = _Overdue()


def _ip(raw: str) -> Address:
    addr = ipaddress.ip_address(raw)
    if isinstance(addr, ipaddress.IPv6Address):
        # ::ffff:10.0.0.1 is 10.0.0.1; so is 6to4's 2002:a00:1:: where a relay routes it.
        return addr.ipv4_mapped or addr.sixtofour or addr
    return addr


def address_problem(raw: str, settings: Settings) -> str | None:
    """Why we will not call the address ``raw`` (None: we will)."""
    addr = _ip(raw)
    if addr.is_loopback:
        return None if settings.webhooks_allow_loopback else "a loopback address"
    if addr.is_link_local:
        return "a link-local address"
    if addr.is_private:
        return "a private address"
    site_local = getattr(addr, "is_site_local", False)  # fec0::/10: deprecated, still private
    if addr.is_multicast or addr.is_reserved or addr.is_unspecified or site_local:
        return "not a public address"
    return None if addr.is_global else "not a public address"


def _split(url: str, settings: Settings) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise Refused("not a valid URL") from None
    if not parts.hostname or parts.scheme not in ("https", "http"):
        raise Refused("must be an https:// URL")
    if parts.scheme == "http" and not settings.webhooks_allow_loopback:
        raise Refused(HTTP_ONLY_LOOPBACK)
    return parts


def _getaddrinfo(host: str, port: int) -> list[tuple[Any, ...]]:
    """``socket.getaddrinfo`` with a deadline: it has none of its own, so it
    runs on a thread of its own and we stop waiting after RESOLVE_TIMEOUT."""
    overdue = _overdue
    with overdue.lock:
        if overdue.count >= RESOLVE_MAX_PENDING:
            raise ResolverBusy(f"cannot resolve {host} now (too many lookups still waiting)")
    answer: Future[list[tuple[Any, ...]]] = Future()
    state = {"done": False, "overdue": False}  # under overdue.lock

    def lookup() -> None:
        try:
            answer.set_result(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            answer.set_exception(exc)
        finally:
            with overdue.lock:
                state["done"] = True
                if state["overdue"]:
                    overdue.count -= 1

    try:  # A daemon: a lookup still waiting on a dead name server holds up no exit.
        threading.Thread(target=lookup, name="webhook-resolve", daemon=True).start()
    except RuntimeError:  # "can't start new thread"
        raise ResolverBusy(f"cannot resolve {host} now (no thread to spare)") from None
    try:
        return answer.result(timeout=RESOLVE_TIMEOUT)
    except TimeoutError:
        with overdue.lock:
            if not state["done"]:  # (else it answered just now: nothing left waiting)
                state["overdue"] = True
                overdue.count += 1
        raise Unresolved(
            f"cannot resolve {host} in time (no answer within {RESOLVE_TIMEOUT:g} s)"
        ) from None


def _resolve(parts: SplitResult) -> list[str]:
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = _getaddrinfo(parts.hostname, port)
    except socket.gaierror as exc:
        raise Unresolved(f"cannot resolve {parts.hostname}: {exc.strerror}") from None
    except UnicodeError:  # IDNA refuses the name (an empty or over-long label)
        raise Refused(f"{parts.hostname} is not a valid host name") from None
    # A scope id (fe80::1%eth0) is no part of the address checked.
    return sorted({info[4][0].split("%")[0] for info in infos})


def resolve_target(url: str, settings: Settings) -> list[str]:
    """Resolve the host now and check every address; return them, IPv4 first
    (a host without IPv6, as containers often are, cannot reach the others).
    Raises Refused."""
    parts = _split(url, settings)
    addrs = _resolve(parts)
    for raw in addrs:
        if why := address_problem(raw, settings):
            if raw == parts.hostname:  # an address given: say what is wrong with it
                raise Refused(f"{raw} is {why}")
            # A name: its addresses stay ours, or any API key could map our
            # network's names (postgres, redis, ...) through the answer.
            raise Refused(
                f"{parts.hostname} resolves to an address that is not public",
                f"{parts.hostname} resolves to {raw}, {why}",
            )
    if parts.scheme == "http" and not all(_ip(raw).is_loopback for raw in addrs):
        raise Refused(HTTP_ONLY_LOOPBACK)
    return sorted(addrs, key=lambda raw: (_ip(raw).version, raw))


def submit_url_problem(url: str, settings: Settings) -> str | None:
    """Why ``url`` cannot be a webhookUrl (None if fine): the delivery's own check,
    made at submit so a URL it would refuse is never accepted. Raises
    ResolverBusy when no lookup may start now."""
    try:
        resolve_target(url, settings)
    except ResolverBusy:
        raise  # not the URL's fault: the API's 503
    except Refused as exc:
        return str(exc)
    return None


# Seconds one request's webhookUrl checks may take in all: each look-up may
# take up to RESOLVE_TIMEOUT, and a batch's 100 items may name 100 hosts.
LOOKUP_BUDGET = 10.0
_clock = time.monotonic


def url_checker(settings: Settings) -> Callable[[str], str | None]:
    """``submit_url_problem`` for one request's URLs: each checked once, all
    within ``LOOKUP_BUDGET`` (hosts whose name servers answer just inside
    the timeout held a batch's thread for minutes). Past it, a URL is
    refused as one that does not resolve in time is."""
    ends = _clock() + LOOKUP_BUDGET

    @cache
    def problem(url: str) -> str | None:
        if _clock() > ends:
            return (
                f"cannot be checked in time (the request's look-ups took over {LOOKUP_BUDGET:g} s)"
            )
        return submit_url_problem(url, settings)

    return problem


def post(
    url: str, ips: list[str], headers: dict[str, str], body: bytes, timeout: float = 10
) -> int:
    """POST to the already-checked addresses, each in turn until one takes the
    connection (all of them within CONNECT_BUDGET); no redirects followed.
    The receiver has ``timeout`` seconds in all to send its status line and
    headers (a per-read timeout alone lets a byte every few seconds hold the
    worker's thread for ever); its body is never read (only the status
    counts, and it may be huge)."""
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.exceptions import ConnectTimeoutError

    parts = urlsplit(url)
    host, https = parts.hostname, parts.scheme == "https"
    kw: dict[str, Any] = {"server_hostname": host, "assert_hostname": host} if https else {}
    port = parts.port or (443 if https else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {**headers, "Host": parts.netloc.rsplit("@", 1)[-1]}
    budget_ends = time.monotonic() + CONNECT_BUDGET
    for i, ip in enumerate(ips):
        left = budget_ends - time.monotonic()
        if left <= 0:
            raise ConnectTimeoutError(f"no address took the connection in {CONNECT_BUDGET:g} s")
        connect = min(CONNECT_TIMEOUT, left)
        conn = (HTTPSConnection if https else HTTPConnection)(ip, port, timeout=connect, **kw)
        try:  # (CPython gives the TLS handshake, all of it, the connect's timeout)
            conn.connect()
        except ConnectTimeoutError:  # refused or timed out: the next one
            conn.close()
            if i == len(ips) - 1:
                raise
            continue
        deadline = threading.Timer(timeout, _hang_up, (conn,))
        deadline.start()
        try:
            conn.timeout = timeout  # (urllib3 sets each read's from it: not the connect's)
            conn.request("POST", path, body=body, headers=headers, preload_content=False)
            return conn.getresponse().status
        finally:
            deadline.cancel()
            conn.close()
    raise ValueError("no address to call")


def _hang_up(conn: Any) -> None:
    """Past the deadline: end the call from the timer's thread (a shutdown
    wakes the blocked read; a close alone may not)."""
    with suppress(OSError, AttributeError):
        conn.sock.shutdown(socket.SHUT_RDWR)
