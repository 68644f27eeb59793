"""Live status: stage transitions and final states are announced here (Redis
pub/sub ``bff:events:<generation id>``, best effort), and the Server-Sent
Events stream is built here.

The database is the truth and Redis only a wake-up call: on each wake-up (a
message, or a poll tick) the stream re-reads the stage rows and emits every
transition it has not sent. A transition's id comes from the row,
``<position>.<attempt>.<rank>`` (rank 1 = started, 2 = finished, skipped,
failed or rescheduled), so a client reconnecting with ``Last-Event-ID`` gets
exactly the transitions it missed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from datetime import datetime
from typing import Any, NamedTuple

from app.domain.choices import late_refine_open
from app.platform.config import Settings
from app.platform.db import Database
from app.platform.redis import client
from app.platform.storage import public_base

log = logging.getLogger(__name__)

DONE_ID = "done"
# Set when the server begins to stop: open streams end (the client resumes
# on another process with Last-Event-ID) instead of holding the stop for its
# whole graceful timeout, and then being cut.
STOPPING = threading.Event()
WAKE_SLICE = 1.0  # seconds: how soon a waiting stream sees STOPPING


def end_streams_on(signum: int = signal.SIGTERM) -> None:
    """Set STOPPING on ``signum``, then run the handler that was there (the
    server's own, e.g. gunicorn's graceful stop). Call in the serving process."""
    before = signal.getsignal(signum)

    def stopping(sig: int, frame: Any) -> None:
        STOPPING.set()
        if callable(before):
            before(sig, frame)
        elif before == signal.SIG_DFL:  # it ended the process: it still does
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)

    signal.signal(signum, stopping)


def channel(generation_id: str) -> str:
    return f"bff:events:{generation_id}"


def publish(settings: Settings, generation_id: str, event: str, data: dict[str, Any]) -> None:
    if not settings.redis_url:
        return
    try:
        client(settings.redis_url).publish(
            channel(generation_id), json.dumps({"event": event, "data": data})
        )
    except Exception as exc:  # live status is best effort; Postgres stays the truth
        log.debug("event publish failed: %s", type(exc).__name__)


def stage_changed(
    settings: Settings, generation_id: str, stage: str, status: str, duration_ms: int | None
) -> None:
    data = {"stage": stage, "status": status, "durationMs": duration_ms}
    publish(settings, generation_id, "stage", data)


def generation_final(
    settings: Settings,
    generation_id: str,
    status: str,
    delivery_id: str | None = None,
    record_webhook: bool = True,
    batch_id: str | None = None,
) -> None:
    """Called once a generation reaches completed, failed or canceled: wakes the
    streams, sends the webhook and finishes its batch (``batch_id``, the
    generation's) if it was the last. ``delivery_id``: the delivery recorded
    in the transition's own transaction (``webhooks.record_final``); without
    one and with ``record_webhook``, it is recorded now in a transaction of
    its own."""
    publish(settings, generation_id, "done", {"id": generation_id, "status": status})
    from flask import current_app, has_app_context

    if not has_app_context():  # plain unit use of the runner: no services to queue with
        return
    from app.webhooks import queue_final, send

    services = current_app.extensions["bff"]
    try:
        if delivery_id:
            send(services.db, services.celery, delivery_id, 1)
        elif record_webhook:
            queue_final(services, generation_id)
    except Exception:  # never fail the stage that finished the job; the sweep retries
        log.exception("could not queue the webhook for %s", generation_id)
    if batch_id is None:
        return
    from app.domain.batch_flows import finish

    try:
        finish(services, batch_id)  # the last of a batch finishes the batch
    except Exception:  # as above: the batch sweep finishes it
        log.exception("could not check the batch of %s", generation_id)


# ------------------------------------------------------------------ the stream

Key = tuple[int, int, int]


class StageEvent(NamedTuple):
    key: Key
    data: dict[str, Any]


def parse_event_id(raw: str | None) -> Key | None:
    """The last transition a client saw (``position.run.rank``; an id of the
    older ``position.attempt.rank`` form sorts before every run, so nothing
    is skipped); None (start over) for anything else."""
    if raw == DONE_ID:
        return (10**6, 0, 0)
    try:
        pos, attempt, rank = (int(x) for x in (raw or "").split("."))
    except ValueError:
        return None
    return (pos, attempt, rank)


def _run(st: dict[str, Any]) -> int:
    """Which run of a stage a transition belongs to: when it started, in ms.
    (Not its attempt count: a user's retry and a new refine start that again,
    and ids that repeat would make a resumed stream skip the new run.)"""
    started = st.get("startedAt")
    return round(datetime.fromisoformat(started).timestamp() * 1000) if started else st["attempts"]


def _stage_event(pos: int, st: dict[str, Any], rank: int, status: str) -> StageEvent:
    return StageEvent(
        (pos, _run(st), rank),
        {
            "stage": st["name"],
            "status": status,
            "durationMs": st["durationMs"] if rank == 2 else None,
            "attempt": st["attempts"],
        },
    )


def stage_events(stages: list[dict[str, Any]]) -> list[StageEvent]:
    """Every transition a snapshot of the stage rows implies, oldest first.
    ``stages`` are the generation JSON's stage objects (in position order)."""
    out: list[StageEvent] = []
    for pos, st in enumerate(stages):
        status, attempt, error = st["status"], st["attempts"], st.get("error")
        if attempt > 0 and (status != "pending" or error):
            out.append(_stage_event(pos, st, 1, "running"))
        if status in ("completed", "skipped", "failed"):
            out.append(_stage_event(pos, st, 2, status))
        elif status == "pending" and attempt > 0 and error:
            # This attempt failed transiently; another one is scheduled.
            out.append(_stage_event(pos, st, 2, "pending"))
    return out


def sse(event: str, data: Any, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class _Waker:
    """Blocks until the next pub/sub message for one generation, or a timeout."""

    def __init__(self, settings: Settings, generation_id: str) -> None:
        self.pubsub = None
        if settings.redis_url:
            try:
                self.pubsub = client(settings.redis_url).pubsub(ignore_subscribe_messages=True)
                self.pubsub.subscribe(channel(generation_id))
            except Exception as exc:  # Redis down: fall back to polling the database
                log.info("SSE without pub/sub (%s): polling", type(exc).__name__)
                self.close()

    def wait(self, timeout: float) -> None:
        """Until a message, ``timeout`` or STOPPING, whichever comes first."""
        if self.pubsub is None:
            STOPPING.wait(timeout)
            return
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0 and not STOPPING.is_set():
                if self.pubsub.get_message(timeout=min(left, WAKE_SLICE)) is not None:
                    while self.pubsub.get_message(timeout=0) is not None:
                        pass  # one reload covers a burst of messages
                    return
        except Exception:
            self.close()

    def close(self) -> None:
        if self.pubsub is not None:
            with suppress(Exception):
                self.pubsub.close()
        self.pubsub = None


def _snapshot(db: Database, user_id: int, generation_id: str, base: str) -> dict[str, Any] | None:
    from app.api.responses import generation_json
    from app.domain import generations as svc

    with db.session() as session:
        gen = svc.get_owned(session, user_id, generation_id)
        return None if gen is None else generation_json(gen, base)


def stream(
    db: Database,
    settings: Settings,
    user_id: int,
    generation_id: str,
    last_event_id: str | None = None,
) -> Iterator[str]:
    """The SSE body: missed transitions first, then live ones, then ``done``."""
    from app.domain.states import FINAL

    waker = _Waker(settings, generation_id)  # subscribe before the first read: no gap
    # With pub/sub the poll is only a safety net; without it, it is the feed.
    poll = settings.sse_poll if waker.pubsub is None else max(settings.sse_poll, 5.0)
    sent = parse_event_id(last_event_id) or (-1, 0, 0)
    base = public_base(settings)  # the body runs after the request's app context is gone
    try:
        yield "retry: 2000\n\n"
        last_write = time.monotonic()
        while True:
            gen = _snapshot(db, user_id, generation_id, base)
            if gen is None:  # deleted meanwhile
                yield sse("gone", {"id": generation_id})
                return
            for ev in stage_events(gen["stages"]):
                if ev.key > sent:
                    yield sse("stage", ev.data, ".".join(map(str, ev.key)))
                    sent, last_write = ev.key, time.monotonic()
            if gen["status"] in FINAL and not late_refine_open(gen):
                yield sse("done", gen, DONE_ID)
                return
            until_beat = settings.sse_heartbeat - (time.monotonic() - last_write)
            if until_beat <= 0:
                yield ": keepalive\n\n"
                last_write, until_beat = time.monotonic(), settings.sse_heartbeat
            waker.wait(min(poll, until_beat))
            if STOPPING.is_set():  # the server stops: the client resumes elsewhere
                return
    finally:
        waker.close()
