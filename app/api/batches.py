"""/api/batches: submit a batch (``items`` or a ``matrix``), read, list,
cancel, delete. A batch's generations are ordinary generations carrying its
id; they are written in one transaction with the batch, after the whole
batch passed the rate limit (each generation counts) and the daily cap (its
whole estimated cost), then sent as one canvas ``group`` of their chains, in
the background (``app.platform.queue``). The archive: ``batch_archive``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from itertools import product
from typing import Any

from flask import Blueprint, Response, g, request
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from app.api.auth import load_user
from app.api.batch_responses import BatchAcceptedOut, BatchOut, BatchPage, batch_path
from app.api.batch_schemas import BatchMatrix, BatchSubmit, parse_or_hint
from app.api.common import (
    delete_with_objects,
    idempotency_key,
    int_arg,
    json_body,
    replay,
    request_hash,
    services,
)
from app.api.errors import ApiError, invalid, not_found, validation_details
from app.api.generations import Stopped, announce_stopped, fence_late_refine, stop
from app.api.responses import respond
from app.api.schemas import PromptSubmit, SpecSubmit, parse
from app.api.submit import check_persona, check_request
from app.domain import batches, tombstones
from app.domain import generations as svc
from app.domain.models import Batch, Generation, new_id, utcnow
from app.domain.quotas import check_submission
from app.pipeline import stages_for, stops
from app.pipeline.endings import cancel_late_refine
from app.pipeline.route import estimate
from app.platform.queue import dispatch_group
from app.platform.storage import generation_prefix
from app.webhooks import forget, url_checker

log = logging.getLogger(__name__)
bp = Blueprint("batches", __name__, url_prefix="/api/batches")
bp.before_request(load_user)

Item = PromptSubmit | SpecSubmit


def _load(session: Session, batch_id: str, lock: bool = False) -> Batch:
    batch = batches.get_owned(session, g.user_id, batch_id, lock=lock)
    if batch is None:
        raise not_found("batch")
    return batch


def _accepted(batch: Batch) -> Response:
    data = {"id": batch.id, "total": batch.total, "estimated_cost": batch.estimated_cost}
    return respond(BatchAcceptedOut, data, 202, {"Location": batch_path(batch.id)})


def expand(matrix: BatchMatrix) -> list[Item]:
    """Every combination, prompts outermost, each validated as from-prompt would."""
    base = matrix.settings.model_dump()
    axes = [
        matrix.prompts,
        matrix.providers or [None],
        matrix.personas or [None],
        matrix.sizes or [None],
        matrix.colorways or [None],
    ]
    items: list[Item] = []
    for prompt, provider, persona, size, colorway in product(*axes):
        settings = base | {k: v for k, v in (("provider", provider), ("size", size)) if v}
        body = {
            "prompt": f"{prompt}, in a {colorway} colorway" if colorway else prompt,
            "negativePrompt": matrix.negativePrompt,
            "personaId": persona,
            "settings": settings,
        }
        try:
            items.append(parse(PromptSubmit, body))
        except ValidationError as exc:
            raise ApiError(
                422,
                "validation_error",
                f"combination {len(items)} of the matrix is not a valid request",
                [{**d, "field": f"matrix.{d['field']}"} for d in validation_details(exc)],
            ) from None
    return items


def _check_items(items: list[Item], field: str, url_problem: Callable[[str], str | None]) -> None:
    """Each item as a single submit checks it (no database), the field named;
    ``url_problem`` resolves each webhookUrl once, however many items share it."""
    for i, item in enumerate(items):
        try:
            check_request(item, item.settings.model_dump(), url_problem)
        except ApiError as exc:
            if isinstance(exc.details, list):
                exc.details = [{**d, "field": f"{field}.{i}.{d['field']}"} for d in exc.details]
            exc.message = f"{field}[{i}]: {exc.message}"
            raise


def _check_size(n: int) -> None:
    limit, window = services().settings.submit_rate_limit
    if 0 < limit < n:  # never accepted, however long the client waits
        raise invalid(
            "items",
            f"a batch of {n} is more than the submit rate limit ({limit} per {window:g} s) allows",
            f"at most {limit} generations",
        )


def _write(
    session: Session, body: BatchSubmit, items: list[Item], cost: float, **cols: Any
) -> tuple[Batch, list[str]]:
    """The batch and its generations, in the caller's transaction."""
    s, now = services(), utcnow()
    batch = batches.create(
        session,
        user_id=g.user_id,
        total=len(items),
        estimated_cost=cost,
        webhook_url=body.webhookUrl,
        created_at=now,
        **cols,
    )
    ids = []
    for item in items:
        spec = item.vltSpec.model_dump(mode="json") if isinstance(item, SpecSubmit) else None
        gen = svc.create(
            session,
            generation_id=new_id("gen"),
            batch_id=batch.id,
            user_id=g.user_id,
            mode="image" if spec else "prompt",
            settings=item.settings.model_dump(),
            prompt=item.prompt,
            negative_prompt=item.negativePrompt,
            persona_id=item.personaId,
            vlt_spec=spec,
            webhook_url=item.webhookUrl,
            dispatched_at=now,
            deadline_at=now + timedelta(seconds=s.settings.generation_timeout),
        )
        ids.append(gen.id)
    return batch, ids


@bp.post("")
def submit():
    s = services()
    payload = json_body()
    body = parse_or_hint(BatchSubmit, payload)
    key = idempotency_key()
    req_hash = request_hash(payload) if key is not None else None
    items = body.items if body.items is not None else expand(body.matrix)
    _check_size(len(items))
    url_problem = url_checker(s.settings)  # each URL once, all within a budget
    _check_items(items, "items" if body.items is not None else "matrix", url_problem)
    if body.webhookUrl is not None and (why := url_problem(body.webhookUrl)):
        raise invalid("webhookUrl", f"webhookUrl {why}", why)
    cost = round(sum(estimate(i.settings.model_dump(), s.settings)[0] for i in items), 4)
    cols = {"id": new_id("bat"), "idempotency_key": key, "request_hash": req_hash}
    try:
        with s.db.session() as session:
            if (prior := replay(session, Batch, key, req_hash)) is not None:
                return _accepted(prior)
            check_submission(session, s.settings, g.user_id, cost, count=len(items))
            for persona_id, field in _personas(body, items).items():
                check_persona(session, persona_id, field)
            batch, ids = _write(session, body, items, cost, **cols)
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key committed first.
        with s.db.session() as session:
            if (prior := replay(session, Batch, key, req_hash)) is not None:
                return _accepted(prior)
        raise
    # An item whose settings ask for refine has it in its chain (at batch priority too).
    stages = {gid: stages_for(i.settings.model_dump()) for gid, i in zip(ids, items, strict=True)}
    if not dispatch_group(s.celery, ids, stages):
        _leave_to_dispatcher(ids)
    return _accepted(batch)


def _personas(body: BatchSubmit, items: list[Item]) -> dict[str, str]:
    """Each persona the batch names, with where it first names it."""
    if body.matrix is not None:
        named = enumerate(body.matrix.personas or [])
        return {p: f"matrix.personas.{j}" for j, p in reversed(list(named)) if p}
    named = enumerate(items)
    return {i.personaId: f"items.{n}.personaId" for n, i in reversed(list(named)) if i.personaId}


def _leave_to_dispatcher(ids: list[str]) -> None:
    """The broker failed (part way, perhaps): the dispatcher sends them all."""
    try:
        with services().db.session() as session:
            svc.clear_dispatched(session, *ids)
    except SQLAlchemyError as exc:  # still found by the stall rule
        log.warning("could not mark a batch undispatched: %s", type(exc).__name__)


@bp.get("")
def index():
    limit = int_arg("limit", 20, 1, 100)
    with services().db.read() as session:
        try:
            items, cursor = batches.list_page(session, g.user_id, limit, request.args.get("cursor"))
        except ValueError:
            raise ApiError(400, "bad_request", "cursor is not valid") from None
        return respond(BatchPage, {"items": items, "next_cursor": cursor})


@bp.get("/<batch_id>")
def show(batch_id: str):
    with services().db.read() as session:
        return respond(BatchOut, batches.view(session, _load(session, batch_id)))


def _stop_all(session: Session, batch: Batch) -> list[Stopped]:
    """Cancel the batch's unfinished generations in one transaction (the
    caller's, holding the batch's lock): once it commits, no stage of any of
    them starts."""
    stopped = [stop(session, gen) for gen in batches.lock_unfinished(session, batch.id)]
    if stopped and batch.canceled_at is None:  # (every member already final: not canceled)
        batch.canceled_at = utcnow()
    return stopped


@bp.post("/<batch_id>/cancel")
def cancel(batch_id: str):
    """Its unfinished generations, and its completed members' refines asked
    for afterwards, as a generation's cancel stops them."""
    s = services()

    def stop_batch(session: Session) -> tuple[list[Stopped], list[int | None], list]:
        batch, after = _load(session, batch_id, lock=True), []
        stopped = _stop_all(session, batch) if batch.finished_at is None else []
        refining = batches.lock_refining(session, batch.id)  # (locked after, as delete does)
        # Every member final, though perhaps not yet marked so: nothing to cancel.
        if not stopped and not refining:
            status = batches.view(session, batch).status
            raise ApiError(409, "conflict", f"batch is already {status}")
        refines = [cancel_late_refine(session, s.settings, gen, after) for gen in refining]
        return stopped, refines, after

    # Run again if PostgreSQL breaks a deadlock with a worker by aborting it.
    stopped, refines, after = s.db.transaction(stop_batch)
    announce_stopped(stopped)  # tasks revoked, predictions canceled, webhooks sent
    for announce in after:  # the refines' stage events and webhooks
        announce()
    for stop_id in refines:
        stops.send(s.db, s.celery, stop_id)
    with services().db.read() as session:
        return respond(BatchOut, batches.view(session, _load(session, batch_id)))


@bp.delete("/<batch_id>")
def delete(batch_id: str):
    s = services()

    def stop_batch(session: Session) -> tuple[list[Stopped], list[int | None], list]:
        batch = _load(session, batch_id, lock=True)
        stopped = _stop_all(session, batch) if batch.finished_at is None else []
        refines = [  # a completed member's refine asked for afterwards runs on
            fence_late_refine(session, gen, "its batch was deleted")
            for gen in batches.lock_refining(session, batch.id)
        ]
        return stopped, refines, batches.member_ids(session, batch.id)

    stopped, refines, members = s.db.transaction(stop_batch)
    prefixes = [generation_prefix(uid, gid) for gid, uid in members]
    announce_stopped(stopped)
    for stop_id in refines:
        stops.send(s.db, s.celery, stop_id)

    def delete_rows(session: Session) -> None:  # its generations go with it (the FK cascades)
        batch = _load(session, batch_id, lock=True)
        tombstones.record_deleted(session, s.settings, Generation.batch_id == batch.id)
        forget(session, [gid for gid, _ in members], batch.id)  # copies of what goes
        session.delete(batch)

    delete_with_objects(s.storage, prefixes, lambda: s.db.transaction(delete_rows), batch_id)
    return "", 204
