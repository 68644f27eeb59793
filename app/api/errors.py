"""Client-visible errors: every exception that reaches Flask becomes
``{"error": {code, message, details}}`` JSON with the right status, never HTML
or a stack trace."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, request
from pydantic import ValidationError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from app.api.responses import ErrorOut, respond
from app.platform.db import unavailable as db_unavailable
from app.webhooks.guard import ResolverBusy

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    431: "headers_too_large",
    503: "service_unavailable",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details, headers or {}


def not_found(what: str = "generation") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def invalid(field: str, message: str, problem: str, code: str = "validation_error") -> ApiError:
    """A 422 about one field: ``message`` for people, ``problem`` beside the field."""
    return ApiError(422, code, message, [{"field": field, "message": problem}])


def service_unavailable(message: str) -> ApiError:
    """A 503 for something the request needs that is down: try again shortly."""
    return ApiError(503, "service_unavailable", message, headers={"Retry-After": "5"})


def megabytes(n: int) -> str:
    return f"{n / 2**20:.4g} MB" if n >= 2**20 else f"{n / 2**10:.4g} KB"


FORM_ROOM = 256 * 1024  # an upload's multipart envelope and other fields, beside the image


def upload_limit(max_upload_bytes: int) -> int:
    """The most an image upload's form may be (``submit.from_image``)."""
    return max_upload_bytes + FORM_ROOM


def _too_large() -> str:
    """A 413's message: the limit, when the body is over it (else a form
    part passed Werkzeug's own limits on fields, and there is no one number)."""
    limit, sent = request.max_content_length, request.content_length
    if not limit or (sent is not None and sent <= limit):
        return "request body too large"
    image = current_app.extensions["bff"].settings.max_upload_bytes
    if limit != upload_limit(image):
        return f"request body too large: the limit is {megabytes(limit)}"
    return (
        f"request body too large: the limit is {megabytes(limit)} "
        f"(an image of up to {megabytes(image)} and the form's other fields)"
    )


UNKNOWN = "unknown field: not one the API takes (check its spelling and case)"
# The problems a 422 lists: a body of many bad fields (a batch of 100 items,
# each with a few hundred unknown settings) would otherwise be answered with
# ten times its own size.
MAX_DETAILS = 50


def validation_message(exc: ValidationError) -> str:
    n = exc.error_count()
    if n <= MAX_DETAILS:
        return "request validation failed"
    return f"request validation failed: {n} problems, the first {MAX_DETAILS} listed"


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    """The first ``MAX_DETAILS`` problems, each with the field it is about."""
    return [
        {
            "field": ".".join(str(p) for p in err["loc"]) or "body",
            # Our validators' own sentences, without pydantic's "Value error, ".
            "message": UNKNOWN
            if err["type"] == "extra_forbidden"
            else err["msg"].removeprefix("Value error, "),
        }
        for err in exc.errors(include_url=False)[:MAX_DETAILS]
    ]


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return respond(ErrorOut, body, status, headers)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError):
        return error_response(
            422, "validation_error", validation_message(exc), validation_details(exc)
        )

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            message = _too_large()
        # MethodNotAllowed carries the methods itself (it has no response yet).
        headers = {k: v for k, v in exc.get_headers() if k == "Allow"} or None
        return error_response(
            status, _HTTP_CODES.get(status, "http_error"), message, headers=headers
        )

    @app.errorhandler(DataError)
    def _unstorable(exc: DataError):
        # A value the database refuses (PostgreSQL: a NUL in text) is the
        # client's, not an outage: without this it would answer 503.
        log.info("database refused a value: %s", exc.orig)
        return error_response(
            400, "bad_request", "the request contains a value that cannot be stored (e.g. NUL)"
        )

    @app.errorhandler(IntegrityError)
    def _conflict(exc: IntegrityError):
        # A uniqueness or reference race the endpoint did not resolve itself:
        # the request conflicts with the current state, the database is fine.
        log.info("integrity error: %s", exc.orig)
        return error_response(409, "conflict", "the request conflicts with existing data")

    @app.errorhandler(DBAPIError)
    def _database_error(exc: DBAPIError):
        # Only a database that went away (OperationalError, InterfaceError, a
        # cut connection) is a 503; a statement it refused is our bug: 500.
        if not db_unavailable(exc):
            log.error("database error: %s", exc.orig, exc_info=exc)
            return error_response(500, "internal_error", "an internal error occurred")
        log.warning("database unavailable: %s: %s", type(exc.orig).__name__, exc.orig)
        return _database_unavailable()

    app.register_error_handler(PoolTimeout, _pool_exhausted)
    app.register_error_handler(ResolverBusy, _resolver_busy)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "an internal error occurred")


def _pool_exhausted(exc: PoolTimeout) -> Response:
    # Every pooled connection stayed busy for POOL_TIMEOUT (a slow or
    # overloaded database): the client may try again, as for an outage.
    log.warning("no database connection free: %s", exc)
    return _database_unavailable()


def _resolver_busy(exc: ResolverBusy) -> Response:
    # A webhookUrl that could not be looked up for want of room (other
    # lookups hang on dead name servers): the URL may be fine, try again.
    log.warning("webhook URL not checked: %s", exc)
    return error_response(503, "service_unavailable", str(exc), headers={"Retry-After": "5"})


def _database_unavailable() -> Response:
    return error_response(
        503, "service_unavailable", "the database is unavailable", headers={"Retry-After": "5"}
    )
