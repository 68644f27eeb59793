"""Batches on the real system: the Procfile's web, worker and generator
processes on PostgreSQL + Redis + S3 (moto), Replicate's SDK against the
fake server. A 20-item batch completes and its archive unzips to the right
files; a cancel mid-batch leaves no running work and no later paid call; an
over-cap batch is refused before anything is enqueued; and a single job sent
behind another user's 100-item batch finishes about as fast as alone."""

from __future__ import annotations

import csv
import io
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
import requests
from sqlalchemy import func, select

from app import create_app
from app.domain.models import Generation, User
from tests.conftest import User as ApiUser
from tests.conftest import make_user
from tests.fakes.replicate import FakeReplicate
from tests.integration.helpers import submit, wait_final
from tests.support import procs as P
from tests.support.services import free_port, own_redis_db

pytestmark = pytest.mark.services
IMAGEN = {"provider": "google-imagen"}  # paid: $0.06 an image
LOCAL = {"provider": "local"}


@dataclass
class BatchStack:
    base_url: str
    procs: dict[str, P.Process]
    app: object
    replicate: FakeReplicate

    def user(self, name: str) -> ApiUser:
        return make_user(self.app, name)

    def post(self, user: ApiUser, path: str, **kwargs) -> requests.Response:
        return requests.post(self.base_url + path, headers=user.headers, timeout=30, **kwargs)

    def get(self, user: ApiUser, path: str, **kwargs) -> requests.Response:
        return requests.get(self.base_url + path, headers=user.headers, timeout=30, **kwargs)

    def submit(self, user: ApiUser, body: dict) -> dict:
        resp = self.post(user, "/api/batches", json=body)
        assert resp.status_code == 202, resp.text
        return resp.json()

    def batch(self, user: ApiUser, batch_id: str) -> dict:
        resp = self.get(user, f"/api/batches/{batch_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def members(self, user: ApiUser, batch_id: str) -> list[dict]:
        gens, cursor = [], None
        while True:  # paged, as a client reads them
            params = {"batchId": batch_id, "limit": 10, **({"cursor": cursor} if cursor else {})}
            page = self.get(user, "/api/generate", params=params).json()
            gens += page["items"]
            if not (cursor := page["nextCursor"]):
                return gens

    def wait_batch(self, user: ApiUser, batch_id: str, timeout: float) -> dict:
        """The batch once finished (its status, read from its members, turns a
        moment before finishedAt is written)."""
        deadline = time.monotonic() + timeout
        while (shown := self.batch(user, batch_id))["finishedAt"] is None:
            assert time.monotonic() < deadline, shown
            time.sleep(0.5)
        return shown

    def busy_tasks(self, gen_ids: set[str]) -> list[dict]:
        """The stage tasks of these generations the workers are running now."""
        active = self.app.extensions["bff"].celery.control.inspect(timeout=2).active() or {}
        return [t for tasks in active.values() for t in tasks if set(t["args"]) & gen_ids]


@pytest.fixture(scope="module")
def bstack(service_env, tmp_path_factory) -> Iterator[BatchStack]:
    # Our own Redis db: fairness is measured on an idle broker.
    with own_redis_db() as redis_url, FakeReplicate(token="r8_batches") as replicate:
        env = {
            **service_env,
            "REDIS_URL": redis_url,
            "REPLICATE_API_TOKEN": replicate.token,
            "REPLICATE_BASE_URL": replicate.url,
            "BFF_PROVIDER_POLL_SECONDS": "0.3",
            "BFF_SUBMIT_RATE_LIMIT": "0",
            **P.procfile_env(free_port()),
            "BFF_VAR_DIR": str(tmp_path_factory.mktemp("bvar")),
        }
        with P.running(env, tmp_path_factory.mktemp("blogs")) as (base, procs):
            yield BatchStack(base, procs, create_app(dict(env)), replicate)


def test_a_20_item_batch_completes_and_its_archive_unzips_to_its_files(bstack, tmp_path):
    user = bstack.user("batch-20")
    matrix = {
        "prompts": [f"linen shirt {i}" for i in range(5)],
        "colorways": ["navy", "rust", "sage", "ivory"],
        "settings": {"provider": "local"},
    }
    accepted = bstack.submit(user, {"matrix": matrix})
    assert accepted["total"] == 20
    shown = bstack.wait_batch(user, accepted["id"], timeout=240)
    assert shown["status"] == "completed" and shown["counts"]["completed"] == 20, shown
    assert shown["finishedAt"] is not None
    gens = bstack.members(user, accepted["id"])
    assert len(gens) == 20 and all(g["status"] == "completed" and g["assets"] for g in gens)

    resp = bstack.get(user, f"/api/batches/{accepted['id']}/archive", stream=True)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/zip"
    assert "Content-Length" not in resp.headers  # streamed as it is written
    path = tmp_path / "batch.zip"
    with open(path, "wb") as out:
        for chunk in resp.iter_content(64 * 1024):
            out.write(chunk)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        archive.extractall(tmp_path / "out")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "manifest.csv").read_text())))
    assert {r["generation_id"] for r in rows} == {g["id"] for g in gens} and len(rows) == 20
    by_url = {a["url"]: a for g in gens for a in g["assets"]}
    for row in rows:
        asset = by_url[row["url"]]
        data = (tmp_path / "out" / row["file"]).read_bytes()
        assert len(data) == asset["fileSize"] and data[:4] == b"\x89PNG"
        assert row["provider"] == "local" and row["prompt"].startswith("linen shirt")
    sample = rows[0]
    cdn = requests.get(sample["url"], timeout=10).content
    assert cdn == (tmp_path / "out" / sample["file"]).read_bytes()


def test_cancel_mid_batch_leaves_no_running_work_and_no_later_paid_call(bstack):
    fake = bstack.replicate
    fake.reset()
    fake.latency, fake.starting_s = 20.0, 0.05
    user = bstack.user("batch-cancel")
    items = [
        {"prompt": f"wool coat {i}", "settings": {"provider": "google-imagen"}} for i in range(6)
    ]
    batch_id = bstack.submit(user, {"items": items})["id"]
    P.wait_for(lambda: fake.creates >= 2, 30, "two predictions to be paid for")
    resp = bstack.post(user, f"/api/batches/{batch_id}/cancel")
    assert resp.status_code == 200, resp.text
    shown = resp.json()
    assert shown["status"] == "canceled" and shown["counts"]["canceled"] == 6, shown
    # Every prediction paid for is canceled at Replicate: by the cancel, or (one
    # created as the cancel landed, its id not saved yet) by its stage at once.
    statuses = lambda: {fake.status(p)[0] for p in fake.predictions.values()}  # noqa: E731
    P.wait_for(lambda: statuses() == {"canceled"}, 10, f"every prediction canceled: {statuses()}")
    gen_ids = {g["id"] for g in bstack.members(user, batch_id)}
    P.wait_for(lambda: not bstack.busy_tasks(gen_ids), 15, "the batch's tasks to stop")
    paid = fake.creates
    time.sleep(3)  # long enough for any queued or waiting stage to run (and stop)
    assert fake.creates == paid, "a prediction was created after the cancel"
    assert paid <= 6 and statuses() == {"canceled"}
    assert not bstack.busy_tasks(gen_ids)
    gens = bstack.members(user, batch_id)
    assert {g["status"] for g in gens} == {"canceled"} and not any(g["assets"] for g in gens)
    assert bstack.batch(user, batch_id)["finishedAt"] is not None


def test_an_over_cap_batch_is_refused_before_anything_is_enqueued(bstack):
    user = bstack.user("batch-cap")
    with bstack.app.extensions["bff"].db.session() as session:
        session.get(User, user.id).daily_spend_cap = Decimal("0.10")
    creates = bstack.replicate.creates
    items = [
        {"prompt": f"silk scarf {i}", "settings": {"provider": "google-imagen"}} for i in range(3)
    ]
    resp = bstack.post(user, "/api/batches", json={"items": items})
    assert resp.status_code == 403, resp.text
    error = resp.json()["error"]
    assert error["code"] == "budget_exceeded" and error["details"]["estimate"] == 0.18
    with bstack.app.extensions["bff"].db.session() as session:
        mine = select(func.count()).where(Generation.user_id == user.id)
        assert session.scalar(mine) == 0
    time.sleep(1)
    assert bstack.replicate.creates == creates
    assert bstack.get(user, "/api/batches").json()["items"] == []


def test_a_single_job_behind_a_100_item_batch_finishes_about_as_fast_as_alone(bstack):
    designer, other = bstack.user("fair-batch"), bstack.user("fair-single")
    started = time.monotonic()
    single = submit(bstack.base_url, other.headers, "red scarf", settings=LOCAL)
    wait_final(bstack.base_url, other.headers, single)
    alone = time.monotonic() - started

    items = [{"prompt": f"denim jacket {i}", "settings": LOCAL} for i in range(100)]
    batch_id = bstack.submit(designer, {"items": items})["id"]
    P.wait_for(
        lambda: bstack.batch(designer, batch_id)["counts"]["pending"] < 100,
        30,
        "the batch to start",
    )
    started = time.monotonic()
    single = submit(bstack.base_url, other.headers, "blue scarf", settings=LOCAL)
    gen = wait_final(bstack.base_url, other.headers, single, 120)
    behind = time.monotonic() - started
    done = bstack.batch(designer, batch_id)["counts"]["completed"]
    bstack.post(designer, f"/api/batches/{batch_id}/cancel")  # free the workers for what follows
    assert gen["status"] == "completed"
    # Its stages were taken before the batch's: it did not wait for the batch.
    # (With the batch at the single jobs' priorities it waited for all 100:
    # 15 s against 0.4 s alone; with them, 1.3 s.)
    assert done < 50, f"the batch finished {done} of 100 before the single job"
    assert behind < max(4 * alone, alone + 5), f"alone {alone:.1f}s, behind a batch {behind:.1f}s"
