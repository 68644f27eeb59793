"""What every request meets before its route: our limits on the URL and the
headers (414 and 431 in the JSON error envelope) and ``OPTIONS``. gunicorn's
own limits sit above these and answer in HTML (docs/operations.md, "Request
limits")."""

from __future__ import annotations

from flask import Flask, Response, current_app, request

from app.api.errors import ApiError

MAX_URL_BYTES = 4096  # path and query string, as sent
MAX_HEADER_FIELDS = 64
MAX_HEADER_BYTES = 16 * 1024  # all fields, names and values
# Where WSGI puts the request's header fields ("HTTP_X_Y" for "X-Y").
_HEADER_KEYS = ("HTTP_", "CONTENT_TYPE", "CONTENT_LENGTH")


def register(app: Flask) -> None:
    app.before_request(_check_limits)
    app.before_request(_options)


def _check_limits() -> None:
    target = request.environ.get("RAW_URI") or request.full_path
    if len(target) > MAX_URL_BYTES:
        raise ApiError(
            414, "uri_too_long", f"the URL is {len(target)} bytes; at most {MAX_URL_BYTES} are read"
        )
    # The WSGI environ's header keys as they are: ``request.headers`` would
    # build a title-cased copy of each (every request pays for this check).
    fields = [
        len(k) - 5 * k.startswith("HTTP_") + len(v) + 4  # "name: value\r\n"
        for k, v in request.environ.items()
        if k.startswith(_HEADER_KEYS)
    ]
    size = sum(fields)
    if len(fields) > MAX_HEADER_FIELDS or size > MAX_HEADER_BYTES:
        raise ApiError(
            431,
            "headers_too_large",
            f"the request has {len(fields)} header fields, {size} bytes; at most "
            f"{MAX_HEADER_FIELDS} fields and {MAX_HEADER_BYTES} bytes are read",
        )


def _options() -> Response | None:
    """``204`` and ``Allow``: the methods of the route the path names (not of
    a dynamic route it also matches: from-prompt is no generation id)."""
    rule = request.url_rule
    if request.method != "OPTIONS" or rule is None:
        return None  # an unknown path's OPTIONS is the usual JSON 404
    same_path = (r for r in current_app.url_map.iter_rules() if r.rule == rule.rule)
    methods = {m for r in same_path for m in r.methods}
    resp = current_app.response_class(status=204)
    del resp.headers["Content-Type"]  # no body, so no media type (not text/html)
    resp.headers["Allow"] = ", ".join(sorted(methods))
    return resp
