"""The API over HTTP, as any client calls it (``BFF_API_URL``,
``BFF_API_KEY``): one request, its JSON, its error as the API said it; shared
by the ``bff`` client commands."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable

import click
import requests

from app.platform.derived import hide_passwords

FINAL = ("completed", "failed", "canceled")


def _api(
    method: str, path: str, extra_headers: dict[str, str] | None = None, **kwargs
) -> requests.Response:
    base = os.environ.get("BFF_API_URL", "http://127.0.0.1:3001").rstrip("/")
    shown = hide_passwords(base)  # a proxy's user:password in the URL stays out of errors
    key = os.environ.get("BFF_API_KEY", "").strip()  # a pasted key keeps its newline
    if not key:
        raise click.ClickException("set BFF_API_KEY (from 'bff users create NAME')")
    headers = {"Authorization": f"Bearer {key}", **(extra_headers or {})}
    if "json" in kwargs:
        try:
            kwargs["data"] = json_bytes(kwargs.pop("json"))
        except ValueError as exc:  # NaN, say, from a batch file
            raise click.ClickException(f"the request cannot be sent as JSON: {exc}") from None
        headers["Content-Type"] = "application/json"
    try:
        resp = requests.request(method, base + path, timeout=30, headers=headers, **kwargs)
    except requests.ConnectionError:
        msg = f"cannot reach the API at {shown}: is it running ('make dev')? BFF_API_URL says where"
        raise click.ClickException(msg) from None
    except requests.Timeout:
        raise click.ClickException(f"the API at {shown} did not answer within 30 s") from None
    except requests.exceptions.InvalidHeader:  # the key, not the URL: only it goes in a header
        msg = "BFF_API_KEY cannot be sent: it holds a line break; copy the key again"
        raise click.ClickException(msg) from None
    except requests.RequestException as exc:  # BFF_API_URL without http://, say
        msg = (
            f"BFF_API_URL={shown} cannot be used ({type(exc).__name__}): e.g. http://127.0.0.1:3001"
        )
        raise click.ClickException(msg) from None
    if resp.status_code == 404 and base.endswith("/api"):  # the commands add /api/... themselves
        msg = f"BFF_API_URL={shown} ends in /api: give the server's address, e.g. {shown[:-4]}"
        raise click.ClickException(msg)
    return resp


def json_bytes(body: object) -> bytes:
    """``body`` as UTF-8 JSON, not with requests' ``\\u`` escapes: escaped, a
    full batch of CJK prompts is twice its size, over the API's 4 MB limit.
    (A string no UTF-8 can hold, say an argument's undecodable byte, goes
    escaped, for the API to say what is wrong with it.)"""
    try:
        return json.dumps(body, ensure_ascii=False, allow_nan=False).encode()
    except UnicodeEncodeError:
        return json.dumps(body, allow_nan=False).encode()


def _json(method: str, path: str, ok: int = 200, **kwargs) -> dict:
    """The API's JSON answer, or its error as a ClickException."""
    resp = _api(method, path, **kwargs)
    if resp.status_code != ok:
        raise _error(resp)
    return body_of(resp)


def body_of(resp: requests.Response) -> dict:
    """A successful answer's JSON: anything else (a web page another server
    on that port sends for every path) means BFF_API_URL names another server."""
    try:
        return resp.json()
    except ValueError:
        url = hide_passwords(resp.url)
        msg = f"{url} answered without JSON: is BFF_API_URL this API's address?"
        raise click.ClickException(msg) from None


def persona_ids(given: Iterable[str]) -> dict[str, str]:
    """Each of ``given`` that names one of the caller's personas by its name
    (what the page shows; any case) -> that persona's id. Ids (``per_…``) and
    names no persona has are left out: the API says what is wrong with them."""
    names = {v for v in given if not v.startswith("per_")}
    if not names:
        return {}
    ids: dict[str, str] = {}
    for persona in _json("GET", "/api/personas")["items"]:
        ids.setdefault(persona["name"].strip().casefold(), persona["id"])
    return {v: ids[v.strip().casefold()] for v in names if v.strip().casefold() in ids}


def _error(
    resp: requests.Response, place: Callable[[str], str | None] | None = None
) -> click.ClickException:
    """The API's error as it said it: code, message and each field's problem
    (a field also named by ``place(field)``, when it knows one: a batch file's
    line and column)."""
    try:
        err = resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        return click.ClickException(f"HTTP {resp.status_code}")
    lines = [f"{resp.status_code} {err['code']}: {err['message']}"]
    for d in err.get("details") or []:
        if isinstance(d, dict) and "field" in d:
            where = place(str(d["field"])) if place else None
            name = f"{where} ({d['field']})" if where else d["field"]
            lines.append(f"  {name}: {d.get('message', '')}")
    return click.ClickException("\n".join(lines))
