"""/api/generate: read, list, cancel, retry, delete (submitting: ``submit``;
feedback: ``feedback``)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime

from flask import Blueprint, Response, current_app, g, request
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from app.api.auth import load_user
from app.api.common import (
    asked_before,
    delete_with_objects,
    int_arg,
    refuse_while_stopping,
    request_key,
    services,
)
from app.api.errors import ApiError, invalid, not_found
from app.api.protocol import names_an_id
from app.api.responses import (
    GenerationOut,
    GenerationPage,
    generation_path,
    respond,
)
from app.domain import batches, tombstones
from app.domain import generations as svc
from app.domain.feedback import feedback_state, state_of
from app.domain.models import Generation, GenerationFeedback, standing_feedback
from app.domain.quotas import count_rerun
from app.domain.states import (
    CANCEL_REQUEST,
    COMPLETED,
    FINAL,
    GENERATION_STATUSES,
    RETRY_REQUEST,
    IllegalTransition,
    refining,
)
from app.pipeline import stops
from app.pipeline.endings import cancel_late_refine
from app.platform import events
from app.platform.queue import dispatch
from app.platform.storage import current_public_base, generation_prefix
from app.webhooks import forget, record_final

bp = Blueprint("generations", __name__, url_prefix="/api/generate")
bp.before_request(load_user)


def load_owned(session, generation_id: str, lock: bool = False) -> Generation:
    """The caller's generation, or 404."""
    gen = svc.get_owned(session, g.user_id, generation_id, lock=lock)
    if gen is None:
        raise not_found()
    return gen


# Built once (its cache key too): what the ETag names, in one query: the
# column every other visible change renews, and the caller's standing feedback.
STAMP = (
    select(Generation.updated_at, GenerationFeedback.feedback_type, GenerationFeedback.rating)
    .outerjoin(GenerationFeedback, standing_feedback())
    .where(Generation.id == bindparam("id"), Generation.user_id == bindparam("user_id"))
    .order_by(GenerationFeedback.id)
)


def _etag(updated_at: datetime, fb: dict) -> str:
    """Every change a client can see but feedback renews the generation's
    ``updated_at`` (stages, assets, status); feedback must not, as that is
    also the running stage's lease. The two name the representation, with
    the image URLs' base (an operator may move the CDN)."""
    micros = round(updated_at.timestamp() * 1_000_000)
    base = zlib.crc32(current_public_base().encode())
    return f"{micros}.{fb['heart']:d}{fb['outlier']:d}{fb['rating'] or 0}.{base:x}"


def _revalidated(resp: Response) -> Response:
    """Revalidated each time (the 304 is cheap): feedback changes even a final one."""
    resp.cache_control.private, resp.cache_control.no_cache = True, True
    return resp


@bp.get("/<generation_id>")
def show(generation_id: str):
    with services().db.read() as session:
        if request.if_none_match:  # a poller's revalidation: answered from one query
            rows = session.execute(STAMP, {"id": generation_id, "user_id": g.user_id}).all()
            if not rows:
                raise not_found()
            tag = _etag(rows[0][0], state_of((kind, rating) for _, kind, rating in rows))
            if request.if_none_match.contains_weak(tag):
                resp = current_app.response_class(status=304)
                resp.set_etag(tag)
                return _revalidated(resp)  # (a 304 repeats the 200's caching headers)
        gen = load_owned(session, generation_id)
        resp = respond(GenerationOut, gen)
        resp.set_etag(_etag(gen.updated_at, feedback_state(gen)))
        working = gen.status not in FINAL or refining(gen)  # still changing
    _revalidated(resp)
    if working:
        resp.headers["Retry-After"] = "1"
    return resp


@bp.get("")
def index():
    limit = int_arg("limit", 20, 1, 100)
    status = request.args.get("status")
    if status is not None and status not in GENERATION_STATUSES:
        said = f"status must be one of {', '.join(GENERATION_STATUSES)}"
        raise invalid("status", said, "unknown status")
    batch_id = request.args.get("batchId")
    with services().db.session() as session:
        if batch_id is not None and (
            not names_an_id(batch_id) or batches.get_owned(session, g.user_id, batch_id) is None
        ):
            raise not_found("batch")
        try:
            rows, cursor = svc.list_page(
                session, g.user_id, limit, request.args.get("cursor"), status, batch_id
            )
        except ValueError:
            raise ApiError(400, "bad_request", "cursor is not valid") from None
        return respond(GenerationPage, {"items": rows, "next_cursor": cursor})


def _running_tasks(gen: Generation) -> list[str]:
    """Call inside the session: the stages may not be loaded yet."""
    return [st.task_id for st in gen.stages if st.status == "running" and st.task_id]


def _revoke_running(ids: list[str], stop_id: int | None) -> None:
    """After the commit, best effort: the running tasks revoked (the stage
    guard stops every later stage anyway) and the stop owed to the
    provider's paid work sent (``stops``: the beat sends it if this does not)."""
    stops.send(services().db, services().celery, stop_id)
    if ids:
        try:
            services().celery.control.revoke(ids)
        except Exception:  # broker down: the database status still stops the chain
            pass


@dataclass(frozen=True)
class Stopped:
    """A generation canceled in a transaction, and what to do once it commits."""

    gen: Generation
    running: list[str]
    delivery_id: str | None
    stop_id: int | None  # the stop its paid work is owed


def stop(session: Session, gen: Generation) -> Stopped:
    """Cancel ``gen`` (locked) in the caller's transaction, its webhook
    and its paid work's stop recorded with it. Raises IllegalTransition when
    it is final already."""
    svc.cancel(gen)
    running = _running_tasks(gen)
    delivery = record_final(session, gen, services().settings)
    return Stopped(gen, running, delivery, stops.owe(session, gen))


def fence_late_refine(session: Session, gen: Generation, why: str) -> int | None:
    """A completed generation about to be deleted: a refine asked for
    afterwards and still running is failed, its copies fenced off (or it
    would pay on), and its predictions owed a stop; that stop's id."""
    if not refining(gen):
        return None
    svc.end_late_refine(gen, why)
    return stops.owe(session, gen)


def announce_stopped(stopped: list[Stopped]) -> None:
    """After the commit: stop the running tasks and the provider's paid work,
    wake the streams, send the webhooks (and finish a batch)."""
    for st in stopped:
        _revoke_running(st.running, st.stop_id)
    for st in stopped:
        gen = st.gen
        events.generation_final(
            services().settings,
            gen.id,
            gen.status,
            st.delivery_id,
            record_webhook=False,
            batch_id=gen.batch_id,
        )


@bp.post("/<generation_id>/cancel")
def cancel(generation_id: str):
    """With an Idempotency-Key, a retry of the cancel answers it again. A
    completed generation's refine asked for afterwards is what it cancels."""
    s, key, stopped, refine_stop, after = services(), request_key({}), None, None, []
    with s.db.session() as session:
        gen = load_owned(session, generation_id, lock=True)
        if not asked_before(gen.pipeline_data, CANCEL_REQUEST, key):
            if gen.status == COMPLETED and refining(gen):
                refine_stop = cancel_late_refine(session, s.settings, gen, after)
            else:
                try:
                    stopped = stop(session, gen)  # commits with the cancel
                except IllegalTransition:
                    why = f"generation is already {gen.status}"
                    raise ApiError(409, "conflict", why) from None
            _keep(gen, CANCEL_REQUEST, key)
    if stopped is not None:
        announce_stopped([stopped])
    for announce in after:  # the refine's stage event and webhook
        announce()
    stops.send(s.db, s.celery, refine_stop)
    with services().db.session() as session:
        return respond(GenerationOut, load_owned(session, generation_id))


@bp.post("/<generation_id>/retry")
def retry(generation_id: str):
    """With an Idempotency-Key, a retry of this request answers it again and
    resumes nothing twice (the generation's latest retry's key is kept)."""
    s, key = services(), request_key({})

    def reset(session: Session) -> tuple[tuple[str, tuple[str, ...]] | None, str | None]:
        """(where to resume, or None for a replay; the batch)."""
        batch_id = batches.lock_batch_of(session, g.user_id, generation_id)
        gen = load_owned(session, generation_id, lock=True)
        if asked_before(gen.pipeline_data, RETRY_REQUEST, key):
            return None, batch_id
        refuse_while_stopping(session, gen.id, "retry")  # (a timeout's)
        try:
            first = svc.prepare_retry(gen, s.settings.generation_timeout)
        except IllegalTransition:
            why = f"only failed generations can be retried; this one is {gen.status}"
            raise ApiError(409, "conflict", why) from None
        count_rerun(session, s.settings, g.user_id)  # a run again: 429 over the rate
        _keep(gen, RETRY_REQUEST, key)
        if batch_id is not None:  # with the member, or its batch's cancel would miss it
            batches.reopen(session, batch_id)
        return (first, svc.stage_names(gen)), batch_id

    # Run again if PostgreSQL breaks a deadlock with a worker (the batch's
    # lock is taken first, as a batch's cancel takes it).
    resume, batch_id = s.db.transaction(reset)
    if resume is not None:
        _resume(generation_id, *resume, batch_id)
    with s.db.session() as session:
        where = {"Location": generation_path(generation_id)}
        return respond(GenerationOut, load_owned(session, generation_id), 202, where)


def _resume(generation_id: str, first: str, stages: tuple[str, ...], batch_id: str | None) -> None:
    """Send a retried generation (its batch reopened with it) from its first
    unfinished stage."""
    s = services()
    if dispatch(s.celery, generation_id, first, background=batch_id is not None, stages=stages):
        with s.db.session() as session:
            svc.touch_dispatched(session, generation_id)


def _keep(gen: Generation, slot: str, key: dict[str, str]) -> None:
    """The request's key (if any) with the generation, for its retries."""
    if key:
        gen.pipeline_data = {**(gen.pipeline_data or {}), slot: key}


@bp.delete("/<generation_id>")
def delete(generation_id: str):
    s = services()
    with s.db.session() as session:
        gen = load_owned(session, generation_id, lock=True)
        was_running = gen.status not in FINAL
        if was_running:
            svc.cancel(gen)
            stop_id = stops.owe(session, gen)  # made after the rows are gone: it carries all
        else:
            stop_id = fence_late_refine(session, gen, "its generation was deleted")
        running, prefix = _running_tasks(gen), generation_prefix(gen.user_id, gen.id)
    _revoke_running(running, stop_id)
    if was_running:
        events.generation_final(s.settings, generation_id, gen.status, batch_id=gen.batch_id)

    def delete_rows() -> None:
        with s.db.session() as session:
            gen = load_owned(session, generation_id, lock=True)
            tombstones.record_deleted(session, s.settings, Generation.id == gen.id)
            forget(session, [gen.id])  # the bodies its webhooks sent hold its prompt
            session.delete(gen)

    delete_with_objects(s.storage, [prefix], delete_rows, generation_id)
    return "", 204
