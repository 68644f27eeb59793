"""The SSRF guard: the host is resolved at delivery time and *every* address
checked; private, link-local, reserved, multicast and (outside development)
loopback targets are refused. The request is then sent to the checked address
itself (TLS still verifies the host name), so DNS cannot be re-pointed in between."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from app.platform.config import Settings

LOOPBACK_NAMES = ("localhost", "localhost.")


class Refused(Exception):
    """The target is not an address we are willing to call."""


def _is_loopback_host(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def submit_url_problem(url: str, settings: Settings) -> str | None:
    """Why ``url`` cannot be a webhookUrl, checked at submit (None if fine)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "not a valid URL"
    if not parts.hostname or parts.scheme not in ("https", "http"):
        return "must be an https:// URL"
    if parts.scheme == "http" and not (
        settings.webhooks_allow_loopback and _is_loopback_host(parts.hostname)
    ):
        return "must be https (plain http only to localhost in development)"
    return None


def _refusal(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, settings: Settings) -> str | None:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    if addr.is_loopback:
        return None if settings.webhooks_allow_loopback else "a loopback address"
    if addr.is_link_local:
        return "a link-local address"
    if addr.is_private:
        return "a private address"
    if addr.is_multicast or addr.is_reserved or addr.is_unspecified or not addr.is_global:
        return "not a public address"
    return None


def resolve_target(url: str, settings: Settings) -> str:
    """Resolve the host now and check every address; return the one to connect to."""
    problem = submit_url_problem(url, settings)
    if problem:
        raise Refused(problem)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Refused(f"cannot resolve {parts.hostname}: {exc.strerror}") from None
    addrs = sorted({info[4][0].split("%")[0] for info in infos})
    for raw in addrs:
        why = _refusal(ipaddress.ip_address(raw), settings)
        if why:
            raise Refused(f"{parts.hostname} resolves to {raw}, {why}")
    return addrs[0]


def post(url: str, ip: str, headers: dict[str, str], body: bytes, timeout: float = 10) -> int:
    """POST to the already-checked ``ip``; no redirects followed."""
    import urllib3

    parts = urlsplit(url)
    host = parts.hostname
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    kw: dict[str, Any] = {"server_hostname": host, "assert_hostname": host} if https else {}
    pool_cls = urllib3.HTTPSConnectionPool if https else urllib3.HTTPConnectionPool
    with pool_cls(ip, port, timeout=urllib3.Timeout(connect=5, read=timeout), **kw) as pool:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        resp = pool.urlopen(
            "POST",
            path,
            body=body,
            headers={**headers, "Host": parts.netloc.rsplit("@", 1)[-1]},
            redirect=False,
            retries=False,
        )
        return resp.status
