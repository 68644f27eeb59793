"""Running a generation's stages in-process (no Celery) for unit and API tests."""

from __future__ import annotations

import io
import time
from decimal import Decimal
from typing import Any

from PIL import Image

from app.api.responses import generation_json
from app.domain import generations as svc
from app.domain.models import Generation, User
from app.pipeline import ALL_STAGES, STAGES, maintenance
from app.pipeline.runner import Outcome, run_stage


def services(app):
    return app.extensions["bff"]


def stage(app, gen_id: str, name: str) -> Outcome:
    s = services(app)
    return run_stage(s.db, s.settings, s.storage, gen_id, name, task_id=f"t-{name}")


def new_generation(app, user, **changes: Any) -> str:
    """A prompt generation as a submit writes it (nothing dispatched), then ``changes``."""
    with services(app).db.session() as session:
        gen = svc.create(session, user_id=user.id, mode="prompt", settings={}, prompt="linen")
        for k, v in changes.items():
            setattr(gen, k, v)
        return gen.id


def redispatch(app) -> int:
    """One tick of the maintenance beat's stall dispatcher."""
    s = services(app)
    return maintenance.redispatch_stalled(s.db, s.celery, s.settings)


def claimed(app, gen_id: str, attempts: int, task_id: str, name: str = "analyze") -> None:
    """Stage ``name`` as a worker left it: claimed (running) by ``task_id``."""
    with services(app).db.session() as session:
        gen = session.get(Generation, gen_id)
        gen.stages = gen.stages or svc.new_stages()  # as the first claim writes them
        st = gen.stage(name)
        st.status, st.attempts, st.task_id = "running", attempts, task_id
        gen.status = "processing"


def run_all(app, gen_id: str, stages=STAGES, pause: float = 0.0) -> list[Outcome]:
    """Run stages in order as the chain would, stopping where the chain stops."""
    outcomes = []
    for name in stages:
        out = stage(app, gen_id, name)
        outcomes.append(out)
        time.sleep(pause)
        if not out.proceed or out.retry_in is not None:
            break
    return outcomes


def run_through(app, gen_id: str, stages=ALL_STAGES, task: str = "t") -> None:
    """The chain, with its waits taken in-process (a short pause each)."""
    s = services(app)
    for name in stages:
        while True:
            out = run_stage(s.db, s.settings, s.storage, gen_id, name, task_id=f"{task}-{name}")
            if out.retry_in is None:
                break
            time.sleep(min(out.retry_in, 0.05))
        if not out.proceed:
            return


def load(app, gen_id: str) -> dict[str, Any]:
    """The generation as the API shows it."""
    with services(app).db.session() as session:
        gen = session.get(Generation, gen_id)
        return generation_json(gen, services(app).storage.public_base) if gen else None


def stages_by_name(gen: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in gen["stages"]}


def submit_prompt(
    client, headers: dict[str, str], prompt: str = "emerald silk slip dress", **settings: Any
) -> str:
    body: dict[str, Any] = {"prompt": prompt}
    if settings:
        body["settings"] = settings
    resp = client.post("/api/generate/from-prompt", json=body, headers=headers)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def png_bytes(size: tuple[int, int] = (64, 80), color: str = "crimson", fmt: str = "PNG") -> bytes:
    """A garment-ish test photo: a coloured block on a white backdrop."""
    img = Image.new("RGB", size, "white")
    w, h = size
    img.paste(Image.new("RGB", (w // 2, h * 3 // 4), color), (w // 4, h // 8))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def submit_image(
    client,
    headers: dict[str, str],
    data: bytes | None = None,
    filename: str = "dress.png",
    **fields: Any,
):
    form = {"image": (io.BytesIO(data if data is not None else png_bytes()), filename), **fields}
    return client.post(
        "/api/generate/from-image", data=form, headers=headers, content_type="multipart/form-data"
    )


def set_cap(app, user, usd: str) -> None:
    """The user's daily spend cap, as ``bff users cap`` sets it."""
    with services(app).db.session() as session:
        session.get(User, user.id).daily_spend_cap = Decimal(usd)


def paying(app, fake, gen_id: str, latency: float = 30.0) -> None:
    """Run the job until its generate stage is parked on its paid prediction
    (which runs ``latency`` seconds on the fake Replicate)."""
    run_through(app, gen_id, ALL_STAGES[:5])
    fake.latency = latency
    out = stage(app, gen_id, "generate")
    assert out.retry_in is not None, load(app, gen_id)["error"]
