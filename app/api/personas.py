"""/api/personas: the caller's saved style profiles (owned like generations).
A create with an ``Idempotency-Key`` replays the first answer; the same key
with another body is 409, as is a create past ``MAX_PERSONAS``."""

from __future__ import annotations

from flask import Blueprint, Response, g
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api.auth import load_user
from app.api.common import idempotency_key, json_body, replay, request_hash, services
from app.api.errors import ApiError, not_found
from app.api.responses import PersonaOut, PersonaPage, respond
from app.api.schemas import PersonaIn, PersonaPatch, parse
from app.domain.models import Persona, new_id
from app.domain.quotas import lock_user

MAX_PERSONAS = 100  # an account's (each job reads them all; the list is one answer)
bp = Blueprint("personas", __name__, url_prefix="/api/personas")
bp.before_request(load_user)


def _columns(body: PersonaIn | PersonaPatch, **dump: bool) -> dict:
    """The body's fields as ``Persona`` columns."""
    return {"is_default" if f == "isDefault" else f: v for f, v in body.model_dump(**dump).items()}


def _owned(session, persona_id: str) -> Persona:
    p = session.scalar(
        select(Persona).where(Persona.id == persona_id, Persona.user_id == g.user_id)
    )
    if p is None:
        raise not_found("persona")
    return p


def _only_default(session, keep: str) -> None:
    session.execute(
        update(Persona)
        .where(Persona.user_id == g.user_id, Persona.id != keep)
        .values(is_default=False)
    )


@bp.get("")
def index():
    with services().db.session() as session:
        rows = session.scalars(
            select(Persona)
            .where(Persona.user_id == g.user_id)
            .order_by(Persona.created_at, Persona.id)
        )
        return respond(PersonaPage, {"items": rows})


def _created(p: Persona) -> Response:
    return respond(PersonaOut, p, 201, {"Location": f"/api/personas/{p.id}"})


@bp.post("")
def create():
    payload = json_body()
    body = parse(PersonaIn, payload)
    key = idempotency_key()
    req_hash = request_hash(payload) if key is not None else None
    db = services().db
    try:
        with db.session() as session:
            if (prior := replay(session, Persona, key, req_hash)) is not None:
                return _created(prior)  # as it is now (a PATCH since shows)
            # The account's persona writes one at a time: two creates at the
            # cap each counted 99; two new defaults each unset only the other's
            # older ones; two default PATCHes locked each other's rows.
            lock_user(session, g.user_id)
            _room_for_one(session)
            p = Persona(
                id=new_id("per"),
                user_id=g.user_id,
                idempotency_key=key,
                request_hash=req_hash,
                **_columns(body),
            )
            session.add(p)
            session.flush()
            if p.is_default:
                _only_default(session, p.id)
            return _created(p)
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key committed first.
        with db.session() as session:
            if (prior := replay(session, Persona, key, req_hash)) is not None:
                return _created(prior)
        raise


def _room_for_one(session: Session) -> None:
    """Every persona is read by each of the user's jobs and listed whole."""
    held = select(func.count()).where(Persona.user_id == g.user_id)
    if session.scalar(held) >= MAX_PERSONAS:
        why = f"you have {MAX_PERSONAS} personas, the most one account keeps: delete one first"
        raise ApiError(409, "conflict", why)


@bp.get("/<persona_id>")
def show(persona_id: str):
    with services().db.session() as session:
        return respond(PersonaOut, _owned(session, persona_id))


@bp.patch("/<persona_id>")
def patch(persona_id: str):
    body = parse(PersonaPatch, json_body())
    with services().db.session() as session:
        lock_user(session, g.user_id)
        p = _owned(session, persona_id)
        for col, value in _columns(body, exclude_unset=True).items():
            setattr(p, col, value)
        if p.is_default:
            _only_default(session, p.id)
        session.flush()
        return respond(PersonaOut, p)


@bp.delete("/<persona_id>")
def delete(persona_id: str):
    with services().db.session() as session:
        lock_user(session, g.user_id)  # not under a PATCH in flight (it would 500)
        session.delete(_owned(session, persona_id))
    return "", 204
