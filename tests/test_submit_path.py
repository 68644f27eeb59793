"""The submit path's database use.

SQLite (``make dev``): one pooled connection, one transaction; the seven
stage rows by one executemany. PostgreSQL: ONE statement in autocommit (no
BEGIN/COMMIT round trips) that runs the checks the database answers (daily
spend cap, submission rate, persona, Idempotency-Key) and inserts the
generation and its stage rows; when it inserts nothing the ordinary path
answers why. Both write ``dispatched_at`` with the row and clear it when the
broker refused the chain (the maintenance dispatcher then sends it)."""

from __future__ import annotations

import select as io_select
import time
import uuid
from decimal import Decimal

import psycopg
import pytest
from sqlalchemy import event, select, text

from app import create_app, submit_batch
from app import generations as svc
from app.api import submit as submit_api
from app.models import Generation, GenerationStage, Persona, User
from app.submissions import SUBMIT_SQL
from tests.conftest import make_user
from tests.support.pipeline import services, submit_prompt

_COLUMNS = [c.name for c in Generation.__table__.columns]


@pytest.fixture(scope="module")
def pg_env(service_env, tmp_path_factory) -> dict[str, str]:
    return {
        **service_env,
        "CELERY_BROKER_URL": "memory://",  # nothing here is consumed
        "STORAGE_BACKEND": "local",
        "BFF_MEDIA_ROOT": str(tmp_path_factory.mktemp("media")),
        "BFF_SUBMIT_RATE_LIMIT": "0",
    }


@pytest.fixture
def pg_app(pg_env):
    app = create_app(pg_env)
    yield app
    app.extensions["bff"].db.engine.dispose()


def _pg_user(app):
    return make_user(app, f"submitter-{uuid.uuid4().hex[:8]}")  # the database is shared


def _post(client, user, body, **headers):
    return client.post("/api/generate/from-prompt", json=body, headers={**user.headers, **headers})


def _record(engine) -> tuple[list[str], list[int]]:
    statements: list[str] = []
    commits: list[int] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    event.listen(engine, "commit", lambda *a: commits.append(1))
    return statements, commits


def _one_statement(app, send):
    """``send()``'s response, asserting it took the one-statement path."""
    statements, _ = _record(services(app).db.engine)
    resp = send()
    assert resp.status_code == 202, resp.get_json()
    submit = [s for s in statements if "api_keys" not in s]  # not authentication
    assert [s in SUBMIT_SQL.values() for s in submit] == [True], statements
    return resp


def _row(app, gen_id: str) -> dict:
    with services(app).db.session() as session:
        gen = session.get(Generation, gen_id)
        return {c: getattr(gen, c) for c in _COLUMNS} | {
            "stages": [(s.name, s.position, s.status, s.attempts) for s in gen.stages]
        }


def test_a_submit_checks_out_one_connection(app, client, user):
    submit_prompt(client, user.headers)  # the key is now verified (auth cache)
    checkouts: list[object] = []
    event.listen(services(app).db.engine, "checkout", lambda *a: checkouts.append(a))
    gen_id = submit_prompt(client, user.headers)
    assert len(checkouts) == 1
    with services(app).db.session() as session:
        gen = session.get(Generation, gen_id)
        assert gen.status == "pending" and gen.dispatched_at is not None
        # One row per job: the first stage's claim writes the stage rows.
        assert (
            session.scalars(
                select(GenerationStage.id).where(GenerationStage.generation_id == gen_id)
            ).all()
            == []
        )


def test_postgres_submit_is_one_statement_without_begin_or_commit(pg_app):
    client, user = pg_app.test_client(), _pg_user(pg_app)
    submit_prompt(client, user.headers)  # the key is now verified (auth cache)
    statements, commits = _record(services(pg_app).db.engine)
    gen_id = submit_prompt(client, user.headers, "ivory linen shirt", provider="local", count=2)
    assert statements == [SUBMIT_SQL[False]]
    # autocommit: the statement is its own (durable) transaction, one commit
    assert len(commits) == 1
    row = _row(pg_app, gen_id)
    assert row["status"] == "pending" and row["user_id"] == user.id
    assert row["dispatched_at"] == row["created_at"] == row["updated_at"]
    assert row["settings"]["count"] == 2 and row["settings"]["provider"] == "local"
    assert row["stages"] == []  # written by the first stage's claim


def test_postgres_one_statement_writes_what_the_orm_writes(pg_app):
    """Same request through the one-statement insert and the ORM ``create``:
    the same row but for id and times (guards the hand-written column list)."""
    client, user = pg_app.test_client(), _pg_user(pg_app)
    spec = {"records": [{"garmentType": "dress", "colors": {"primary": "black"}}]}
    body = {
        "vltSpec": spec,
        "prompt": "black dress",
        "negativePrompt": "blurry",
        "webhookUrl": None,
        "settings": {"provider": "local", "size": "portrait"},
    }
    resp = client.post(
        "/api/generate/from-image",
        json=body,
        headers={**user.headers, "Idempotency-Key": "orm-compare"},
    )
    assert resp.status_code == 202, resp.get_json()
    fast = _row(pg_app, resp.get_json()["id"])
    with services(pg_app).db.session() as session:
        gen = svc.create(
            session,
            user_id=user.id,
            mode="image",
            settings=fast["settings"],
            prompt="black dress",
            negative_prompt="blurry",
            vlt_spec=fast["pipeline_data"]["input"]["vltSpec"],
            idempotency_key="orm-compare-2",
            request_hash=fast["request_hash"],
            dispatched_at=fast["dispatched_at"],
        )
        orm_id = gen.id
    orm = _row(pg_app, orm_id)
    skip = {"id", "idempotency_key", "created_at", "updated_at"}
    assert {k: v for k, v in fast.items() if k not in skip} == {
        k: v for k, v in orm.items() if k not in skip
    }
    assert fast["cost"] == Decimal("0") and fast["pipeline_data"]["input"]["vltSpec"]


def test_postgres_daily_cap_is_checked_in_the_statement(pg_app):
    client, user = pg_app.test_client(), _pg_user(pg_app)
    with services(pg_app).db.session() as session:
        session.get(User, user.id).daily_spend_cap = Decimal("0.10")
    first = _post(client, user, {"prompt": "red wool coat"})
    assert first.status_code == 202
    with services(pg_app).db.session() as session:
        session.get(Generation, first.get_json()["id"]).cost = Decimal("0.10")
    resp = _post(client, user, {"prompt": "red wool coat"})
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "budget_exceeded"
    with services(pg_app).db.session() as session:
        session.get(User, user.id).daily_spend_cap = Decimal("0.20")
    _one_statement(pg_app, lambda: _post(client, user, {"prompt": "red wool coat"}))


def test_postgres_rate_limit_is_checked_in_the_statement(pg_env):
    app = create_app({**pg_env, "BFF_SUBMIT_RATE_LIMIT": "2/60"})
    try:
        client, user = app.test_client(), _pg_user(app)
        _post(client, user, {"prompt": "coat"})
        _one_statement(app, lambda: _post(client, user, {"prompt": "coat"}))
        resp = _post(client, user, {"prompt": "coat"})
        assert resp.status_code == 429 and 1 <= int(resp.headers["Retry-After"]) <= 60
        # A replay is not a new submission.
        other = _pg_user(app)
        first = _post(client, other, {"prompt": "coat"}, **{"Idempotency-Key": "k"})
        for _ in range(3):
            again = _post(client, other, {"prompt": "coat"}, **{"Idempotency-Key": "k"})
            assert again.status_code == 202 and again.get_json()["id"] == first.get_json()["id"]
    finally:
        app.extensions["bff"].db.engine.dispose()


def test_postgres_persona_is_checked_in_the_statement(pg_app):
    client, user, other = pg_app.test_client(), _pg_user(pg_app), _pg_user(pg_app)
    persona_id = f"per_{uuid.uuid4().hex[:12]}"
    with services(pg_app).db.session() as session:
        session.add(
            Persona(id=persona_id, user_id=user.id, name="mine", description="", keywords=[],
                    palette=[], is_default=False)
        )  # fmt: skip
    resp = _one_statement(
        pg_app, lambda: _post(client, user, {"prompt": "coat", "personaId": persona_id})
    )
    assert _row(pg_app, resp.get_json()["id"])["persona_id"] == persona_id
    resp = _post(client, other, {"prompt": "coat", "personaId": persona_id})
    assert resp.status_code == 422
    assert resp.get_json()["error"]["details"][0]["field"] == "personaId"


def test_postgres_idempotency_replays_and_conflicts(pg_app):
    client, user = pg_app.test_client(), _pg_user(pg_app)
    key = {"Idempotency-Key": "order-1"}
    first = _one_statement(pg_app, lambda: _post(client, user, {"prompt": "linen trousers"}, **key))
    again = _post(client, user, {"prompt": "linen trousers"}, **key)
    assert first.status_code == again.status_code == 202
    assert again.get_json()["id"] == first.get_json()["id"]
    resp = _post(client, user, {"prompt": "wool trousers"}, **key)
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "idempotency_conflict"
    with services(pg_app).db.session() as session:
        n = session.execute(
            text("SELECT count(*) FROM generations WHERE user_id = :u"), {"u": user.id}
        ).scalar()
    assert n == 1


def test_postgres_errors_keep_their_order(pg_app):
    """A request failing a check without the database and one in it gets the
    answer the ordinary order gives (the spend cap before the provider)."""
    client, user = pg_app.test_client(), _pg_user(pg_app)
    with services(pg_app).db.session() as session:
        session.get(User, user.id).daily_spend_cap = Decimal("0")
    resp = _post(client, user, {"prompt": "coat", "settings": {"provider": "google-imagen"}})
    assert resp.status_code == 403, resp.get_json()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_refused_send_leaves_the_generation_to_the_dispatcher(backend, request, monkeypatch):
    app = request.getfixturevalue("app" if backend == "sqlite" else "pg_app")
    client = app.test_client()
    user = make_user(app, "alice") if backend == "sqlite" else _pg_user(app)
    monkeypatch.setattr(submit_api, "dispatch", lambda *a, **k: False)  # the broker is down
    monkeypatch.setattr(submit_batch, "dispatch_many", lambda _app, ids: list(ids))
    gen_id = submit_prompt(client, user.headers)
    row = _row(app, gen_id)
    assert row["status"] == "pending" and row["dispatched_at"] is None


def test_postgres_submit_runs_on_its_own_connection_checked_without_a_round_trip(pg_env):
    """The submit statement runs on a connection of the process's own
    (``db.OwnStatement``): no pool checkout, no ping; one the server ended
    (restart, ``pg_terminate_backend``) is found by its socket and replaced
    before the next submit, which still takes the one-statement path."""
    app = create_app(pg_env)
    db = services(app).db
    try:
        client, user = app.test_client(), _pg_user(app)
        submit_prompt(client, user.headers)  # the key is now verified (auth cache)
        (own,) = db._own.values()
        first = own._conn
        checkouts: list[object] = []
        event.listen(db.engine, "checkout", lambda *a: checkouts.append(a))
        statements, _ = _record(db.engine)
        submit_prompt(client, user.headers)
        assert own._conn is first and statements == [SUBMIT_SQL[False]] and checkouts == []
        with psycopg.connect(db.engine.url.render_as_string(False).replace("+psycopg", "")) as c:
            c.execute("SELECT pg_terminate_backend(%s)", (first.info.backend_pid,))
        deadline = time.monotonic() + 5
        while not io_select.select([first.pgconn.socket], [], [], 0.05)[0]:  # its goodbye
            assert time.monotonic() < deadline
        submit_prompt(client, user.headers)
        assert own._conn is not first and own._conn is not None
        assert statements == [SUBMIT_SQL[False]] * 2 and checkouts == []
    finally:
        db.engine.dispose()
    assert own._conn is None  # closed with the engine


def test_a_connection_the_server_closed_is_replaced_not_used(pg_env):
    from app.db import Database

    db = Database(pg_env["DATABASE_URL"])
    try:
        own = db.own_statement("bff_probe_pid", "SELECT pg_backend_pid()", {})
        (pid,) = own.first_column({})  # its connection is now open
        url = pg_env["DATABASE_URL"].replace("+psycopg", "")
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (int(pid),))
        time.sleep(0.2)  # the server's goodbye and FIN arrive
        assert own.first_column({}) != [pid]  # on a new connection
    finally:
        db.engine.dispose()


def test_one_statement_errors_come_out_as_sqlalchemy_errors(pg_env):
    from sqlalchemy.exc import DataError, OperationalError

    from app.db import Database, unavailable
    from tests.support.services import free_port

    db = Database(pg_env["DATABASE_URL"])
    try:
        own = db.own_statement("bff_test_div", "SELECT 10 / %(x)s::int", {"x": "int8"})
        assert own.first_column({"x": 2}) == ["5"]
        conn = own._conn
        with pytest.raises(DataError, match="division by zero"):  # the client's kind
            own.first_column({"x": 0})
        assert own.first_column({"x": 5}) == ["2"] and own._conn is conn  # the connection is fine
        with pytest.raises(ValueError, match="not declared"):
            db.own_statement("bff_test_undeclared", "SELECT %(x)s, %(y)s", {"x": "int8"})
    finally:
        db.engine.dispose()
    down = Database(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    with pytest.raises(OperationalError) as err:
        down.own_statement("bff_probe", "SELECT 1", {}).first_column({})
    assert unavailable(err.value)  # a 503 with Retry-After for the client
