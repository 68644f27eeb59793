"""Image URLs are made when they are read, from the asset's key and the
storage's public base of the moment, never from ``generation_assets.cdn_url``
(written when the image was stored): after a move (``PORT=3917 make dev``, a
new ``BFF_PUBLIC_URL`` or ``R2_CDN_URL``) every answer shows the new base.
Each test stores with one app, then reads with another built on the same
database and media folder with a different base."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest
from flask import has_app_context
from sqlalchemy import event, select

from app import create_app
from app.domain.models import Generation, GenerationAsset
from app.platform.config import Settings
from app.platform.storage import StorageError, make_storage
from app.webhooks import WebhookDelivery, record_final
from tests.conftest import make_user
from tests.support.buckets import s3_client
from tests.support.pipeline import run_all, services, submit_prompt
from tests.test_events import read_stream

OLD = "http://testserver"  # app_config's BFF_PUBLIC_URL
NEW = "http://127.0.0.1:3917"  # what PORT=3917 makes of it when BFF_PUBLIC_URL is unset


def stored_assets(app, gen_id: str) -> list[GenerationAsset]:
    with services(app).db.session() as session:
        query = select(GenerationAsset).where(GenerationAsset.generation_id == gen_id)
        return list(session.scalars(query.order_by(GenerationAsset.position)))


@pytest.fixture
def gen_id(app, client, user) -> str:
    """A completed generation of two images, stored while the API was on OLD."""
    gen_id = submit_prompt(client, user.headers, count=2)
    run_all(app, gen_id)
    assert all(a.cdn_url.startswith(f"{OLD}/cdn/users/") for a in stored_assets(app, gen_id))
    return gen_id


@pytest.fixture
def moved(app_config):
    """The same database and media folder, the API restarted on another port."""
    return create_app({**app_config, "BFF_PUBLIC_URL": "", "PORT": "3917"})


def expected(app, gen_id: str, base: str) -> list[str]:
    return [f"{base}/{a.r2_key}" for a in stored_assets(app, gen_id)]


def test_the_generation_shows_the_current_base(app, moved, user, gen_id):
    client = moved.test_client()
    urls = expected(moved, gen_id, f"{NEW}/cdn")
    shown = client.get(f"/api/generate/{gen_id}", headers=user.headers).get_json()
    assert [a["url"] for a in shown["assets"]] == urls
    [listed] = client.get("/api/generate", headers=user.headers).get_json()["items"]
    assert [a["url"] for a in listed["assets"]] == urls
    # The link works on the moved server; the stored column keeps what was written.
    assert client.get(urls[0].removeprefix(NEW)).status_code == 200
    assert all(a.cdn_url.startswith(f"{OLD}/cdn/") for a in stored_assets(moved, gen_id))


def test_a_copy_cached_before_the_move_is_not_revalidated(app, client, moved, user, gen_id):
    """A poller's cached body names the old base: its ETag must not match now."""
    tag = client.get(f"/api/generate/{gen_id}", headers=user.headers).headers["ETag"]
    again = moved.test_client().get(
        f"/api/generate/{gen_id}", headers={**user.headers, "If-None-Match": tag}
    )
    assert again.status_code == 200 and again.headers["ETag"] != tag


def test_reading_a_generation_fetches_no_asset_row_again(app, client, user, gen_id):
    path, statements = f"/api/generate/{gen_id}", []
    client.get(path, headers=user.headers)  # the API key is cached from now on
    listen = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(services(app).db.engine, "before_cursor_execute", listen)
    try:
        assert client.get(path, headers=user.headers).status_code == 200
    finally:
        event.remove(services(app).db.engine, "before_cursor_execute", listen)
    assert len(statements) == 1, statements


def test_the_event_stream_shows_the_current_base(moved, user, gen_id):
    done = read_stream(moved.test_client(), user, gen_id)[-1]
    assert done["event"] == "done"
    assert [a["url"] for a in done["data"]["assets"]] == expected(moved, gen_id, f"{NEW}/cdn")


def test_the_webhook_payload_shows_the_current_base(moved, gen_id):
    with moved.app_context(), services(moved).db.session() as session:
        gen = session.get(Generation, gen_id)
        gen.webhook_url = "https://hooks.example.com/bff"
        delivery_id = record_final(session, gen, services(moved).settings)
        payload = json.loads(session.get(WebhookDelivery, delivery_id).payload)
    assert [a["url"] for a in payload["assets"]] == expected(moved, gen_id, f"{NEW}/cdn")


def test_the_runner_records_a_webhook_with_no_app_around_it(app, client, user):
    """The stages need no Flask app: a webhook's URLs come from the settings."""
    gen_id = submit_prompt(client, user.headers)
    with services(app).db.session() as session:
        session.get(Generation, gen_id).webhook_url = "https://hooks.example.com/bff"
    assert not has_app_context()  # as a worker runs it
    run_all(app, gen_id)
    with services(app).db.session() as session:
        query = select(WebhookDelivery).where(WebhookDelivery.generation_id == gen_id)
        payload = json.loads(session.scalars(query).one().payload)
    assert payload["status"] == "completed"
    assert [a["url"] for a in payload["assets"]] == expected(app, gen_id, f"{OLD}/cdn")


def test_most_hearted_shows_the_current_base(client, moved, user, gen_id):
    resp = client.post(
        f"/api/generate/{gen_id}/feedback", json={"feedbackType": "heart"}, headers=user.headers
    )
    assert resp.status_code == 201, resp.get_json()
    stats = moved.test_client().get("/api/stats", headers=user.headers).get_json()
    assert [h["url"] for h in stats["mostHearted"]] == expected(moved, gen_id, f"{NEW}/cdn")[:1]


def archive_urls(app, user, batch_id: str) -> list[str]:
    resp = app.test_client().get(f"/api/batches/{batch_id}/archive", headers=user.headers)
    assert resp.status_code == 200
    manifest = zipfile.ZipFile(io.BytesIO(resp.get_data())).read("manifest.csv").decode()
    return [row["url"] for row in csv.DictReader(io.StringIO(manifest))]


def run_batch(app, user, n: int = 2) -> tuple[str, list[str]]:
    """A batch of ``n`` single-image generations, submitted and run on ``app``."""
    client = app.test_client()
    items = [{"prompt": f"linen shirt no. {i}"} for i in range(n)]
    resp = client.post("/api/batches", json={"items": items}, headers=user.headers)
    assert resp.status_code == 202, resp.get_json()
    batch_id = resp.get_json()["id"]
    page = client.get(f"/api/generate?batchId={batch_id}", headers=user.headers).get_json()
    gen_ids = sorted((g["createdAt"], g["id"]) for g in page["items"])
    for _, gen_id in gen_ids:
        run_all(app, gen_id)
    return batch_id, [gen_id for _, gen_id in gen_ids]


def test_the_archive_manifest_shows_the_current_base(app, moved, user):
    batch_id, gen_ids = run_batch(app, user)
    assert archive_urls(app, user, batch_id) == [
        u for g in gen_ids for u in expected(app, g, OLD + "/cdn")
    ]
    new = [u for g in gen_ids for u in expected(moved, g, f"{NEW}/cdn")]
    assert archive_urls(moved, user, batch_id) == new


# ------------------------------------------------------------------ the bucket


@pytest.fixture
def r2_config(app_config, s3_server) -> dict[str, str]:
    bucket = "asset-urls"
    s3_client(s3_server).create_bucket(Bucket=bucket)
    return {
        **app_config,
        "STORAGE_BACKEND": "s3",
        "R2_ENDPOINT_URL": s3_server,
        "R2_ACCESS_KEY_ID": "test",
        "R2_SECRET_ACCESS_KEY": "test",
        "R2_BUCKET_NAME": bucket,
        "R2_REGION": "us-east-1",
        "R2_CDN_URL": "https://old-cdn.example.com/",
    }


def test_a_bucket_that_does_not_exist_is_said_not_taken_for_a_missing_key(r2_config):
    """A 404 for the bucket is the operator's setting, not a missing image:
    a stage retries it (StorageError) and its message names the variable."""
    storage = make_storage(Settings.from_env(r2_config))
    with pytest.raises(KeyError):  # the bucket exists: this is a missing key
        storage.get("users/1/nothing.png")
    wrong = make_storage(Settings.from_env({**r2_config, "R2_BUCKET_NAME": "no-such-bucket"}))
    calls = (lambda: wrong.get("a.png"), lambda: wrong.put("a.png", b"x", "image/png"), wrong.check)
    for call in calls:  # (check: /health's, a HEAD, whose 404 names nothing)
        with pytest.raises(StorageError, match="'no-such-bucket' does not exist.*R2_BUCKET_NAME"):
            call()


def test_bucket_urls_follow_r2_cdn_url(r2_config):
    before = create_app(r2_config)
    user = make_user(before, "bucket-user")
    batch_id, [gen_id] = run_batch(before, user, 1)
    [asset] = stored_assets(before, gen_id)
    assert asset.cdn_url == f"https://old-cdn.example.com/{asset.r2_key}"

    after = create_app({**r2_config, "R2_CDN_URL": "https://images.example.com"})
    url = f"https://images.example.com/{asset.r2_key}"
    shown = after.test_client().get(f"/api/generate/{gen_id}", headers=user.headers).get_json()
    assert [a["url"] for a in shown["assets"]] == [url]
    assert archive_urls(after, user, batch_id) == [url]
