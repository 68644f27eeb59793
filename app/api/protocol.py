"""What every request meets before its route: our limits on the URL and the
headers (414 and 431 in the JSON error envelope) and ``OPTIONS``. gunicorn's
own limits sit above these and answer in HTML (docs/operations.md, "Request
limits")."""

from __future__ import annotations

import re
from functools import lru_cache

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.routing import BaseConverter, Map

from app.api.errors import ApiError

MAX_URL_BYTES = 4096  # path and query string, as sent
MAX_HEADER_FIELDS = 64
MAX_HEADER_BYTES = 16 * 1024  # all fields, names and values
# WSGI's two unprefixed header fields (the rest are "HTTP_X_Y" for "X-Y").
_CONTENT = ("CONTENT_TYPE", "CONTENT_LENGTH")


class IdConverter(BaseConverter):
    """A URL's ids (``<generation_id>``, ...): no control character names
    anything, and a NUL would reach PostgreSQL, which refuses it (a 400
    saying a value "cannot be stored", where SQLite answered 404)."""

    regex = r"[^/\x00-\x1f\x7f]+"


def names_an_id(value: str) -> bool:
    """Whether ``value`` (an id a query string carries) could name anything,
    as a URL's id must (``IdConverter``)."""
    return re.fullmatch(IdConverter.regex, value) is not None


def register(app: Flask) -> None:
    """Before any route is added (the converter applies to those added after)."""
    app.url_map.converters["default"] = IdConverter
    app.before_request(_check_limits)
    app.before_request(_options)
    app.before_request(_static_path_methods)
    app.after_request(_security_headers)


# On every answer: no type sniffing (an upload served from /cdn/ is never
# taken for HTML), no framing (the page keeps the API key), no referrer
# carrying ids to other sites.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "Referrer-Policy": "same-origin",
}


def _security_headers(resp: Response) -> Response:
    resp.headers.update(SECURITY_HEADERS)
    if resp.status_code == 204:  # no body, so no media type (Flask's default is text/html)
        resp.headers.pop("Content-Type", None)
    return resp


def _check_limits() -> None:
    target = request.environ.get("RAW_URI") or request.full_path
    if len(target) > MAX_URL_BYTES:
        raise ApiError(
            414, "uri_too_long", f"the URL is {len(target)} bytes; at most {MAX_URL_BYTES} are read"
        )
    fields = header_sizes(request.environ)
    size = sum(fields)
    if len(fields) > MAX_HEADER_FIELDS or size > MAX_HEADER_BYTES:
        raise ApiError(
            431,
            "headers_too_large",
            f"the request has {len(fields)} header fields, {size} bytes; at most "
            f"{MAX_HEADER_FIELDS} fields and {MAX_HEADER_BYTES} bytes are read",
        )


def header_sizes(environ: dict) -> list[int]:
    """Each header field's size as sent ("name: value\\r\\n"), the fields
    ``request.headers`` lists, read off the WSGI keys as they are: building
    that title-cased copy of every header is work each request would pay."""
    sizes = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            if key[5:] not in _CONTENT:  # Werkzeug lists the unprefixed ones instead
                sizes.append(len(key) - 5 + len(value) + 4)
        elif key in _CONTENT and value:
            sizes.append(len(key) + len(value) + 4)
    return sizes


def _options() -> Response | None:
    """``204`` and ``Allow``: the methods of the route the path names (not of
    a dynamic route it also matches: from-prompt is no generation id)."""
    rule = request.url_rule
    if request.method != "OPTIONS" or rule is None:
        return None  # an unknown path's OPTIONS is the usual JSON 404
    same_path = (r for r in current_app.url_map.iter_rules() if r.rule == rule.rule)
    methods = {m for r in same_path for m in r.methods}
    resp = current_app.response_class(status=204)
    resp.headers["Allow"] = ", ".join(sorted(methods))
    return resp


@lru_cache(maxsize=8)  # an app's map is complete before its first request
def _static_routes(url_map: Map) -> dict[str, frozenset[str]]:
    """Each path a route names without variables, and that route's methods."""
    routes: dict[str, frozenset[str]] = {}
    for rule in url_map.iter_rules():
        if not rule.arguments:
            routes[rule.rule] = routes.get(rule.rule, frozenset()) | (rule.methods or set())
    return routes


def _static_path_methods() -> None:
    """A path a route names as it is belongs to that route, whatever the
    method: ``GET /api/generate/from-prompt`` is a 405 (``Allow: OPTIONS,
    POST``), not a generation id that is not found (the route with the
    variable matches too, and Werkzeug tries it when the method does not fit)."""
    methods = _static_routes(current_app.url_map).get(request.path)
    if methods and request.method not in methods:
        raise MethodNotAllowed(valid_methods=sorted(methods))
