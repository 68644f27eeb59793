"""GET /api/generate/<id>/events: the generation's progress as Server-Sent Events.

Each open stream holds one gunicorn thread (gthread workers) for its whole
life, so a process admits at most ``BFF_SSE_MAX_STREAMS`` at once and answers
``503`` + ``Retry-After`` beyond that: streams can never take every thread
and starve ordinary requests; clients fall back to polling the generation.
One user holds at most a third of them (``429`` beyond), so one client's
streams cannot take every slot from everyone else.
"""

from __future__ import annotations

import threading
from collections import Counter

from flask import Blueprint, Response, current_app, g, request
from flask.blueprints import BlueprintSetupState

from app.api.auth import load_user
from app.api.common import services
from app.api.errors import ApiError, not_found, service_unavailable
from app.domain import generations as svc
from app.platform import events

bp = Blueprint("events", __name__, url_prefix="/api/generate")
bp.before_request(load_user)


class Slots:
    """The process's stream slots, and how many each user holds."""

    def __init__(self, limit: int) -> None:
        self.free, self.share = limit, max(1, limit // 3)
        self.held: Counter[int] = Counter()
        self.lock = threading.Lock()

    def take(self, user_id: int) -> None:
        with self.lock:
            if self.held[user_id] >= self.share:
                why = f"you have {self.share} live streams open on this server: close one, or poll"
                raise ApiError(429, "rate_limited", why, headers={"Retry-After": "5"})
            if self.free <= 0:
                why = "too many live streams on this server; poll GET /api/generate/<id> instead"
                raise service_unavailable(why)
            self.free -= 1
            self.held[user_id] += 1

    def give_back(self, user_id: int) -> None:
        with self.lock:
            self.free += 1
            self.held[user_id] -= 1
            if not self.held[user_id]:
                del self.held[user_id]


@bp.record_once
def _make_slots(state: BlueprintSetupState) -> None:
    limit = state.app.extensions["bff"].settings.sse_max_streams
    state.app.extensions["bff_sse_slots"] = Slots(limit)


@bp.get("/<generation_id>/events")
def generation_events(generation_id: str) -> Response:
    s = services()
    with s.db.session() as session:
        if svc.get_owned(session, g.user_id, generation_id) is None:
            raise not_found()
    slots, user_id = current_app.extensions["bff_sse_slots"], g.user_id
    slots.take(user_id)
    try:
        last_id = request.headers.get("Last-Event-ID")
        body = events.stream(s.db, s.settings, user_id, generation_id, last_id)
        resp = Response(body, mimetype="text/event-stream")
    except BaseException:
        slots.give_back(user_id)
        raise
    # The WSGI server calls close() when the stream ends or the client goes away.
    resp.call_on_close(lambda: slots.give_back(user_id))
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"  # proxies (nginx) must not buffer the stream
    return resp
