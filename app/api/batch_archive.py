"""GET /api/batches/<id>/archive: the batch's images and a ``manifest.csv``
as a ZIP streamed while it is written (``app.platform.zipstream``): one
image in memory at a time, never the archive."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator

from flask import Blueprint, current_app, g
from sqlalchemy import select

from app.api.auth import load_user
from app.api.common import services
from app.api.errors import not_found
from app.domain import batches
from app.domain.models import Generation, GenerationAsset
from app.domain.states import COMPLETED
from app.platform.storage import Storage
from app.platform.zipstream import Member, stream_zip
from app.providers.base import EXTENSIONS

log = logging.getLogger(__name__)
bp = Blueprint("batch_archive", __name__, url_prefix="/api/batches")
bp.before_request(load_user)

MANIFEST = (
    *("generation_id", "status", "prompt", "provider", "model", "cost", "file", "url", "note"),
    *("variant", "source_file"),  # last, so readers of the first nine columns read on
)
MISSING = "image missing from storage"


def _rows(batch_id: str) -> tuple[list[Generation], dict[str, list[GenerationAsset]]]:
    with services().db.read() as session:
        if batches.get_owned(session, g.user_id, batch_id) is None:
            raise not_found("batch")
        gens = list(
            session.scalars(
                select(Generation)
                .where(Generation.batch_id == batch_id)
                .order_by(Generation.created_at, Generation.id)
            )
        )
        assets: dict[str, list[GenerationAsset]] = {}
        for asset in session.scalars(
            select(GenerationAsset)
            .join(Generation, Generation.id == GenerationAsset.generation_id)
            .where(Generation.batch_id == batch_id, Generation.status == COMPLETED)
            .order_by(GenerationAsset.generation_id, GenerationAsset.position)
        ):
            assets.setdefault(asset.generation_id, []).append(asset)
    return gens, assets


def _cell(text: str) -> str:
    """A designer's text as a spreadsheet shows it, never runs it: a cell that
    starts like a formula (= + - @, a tab, a return) gets a leading quote."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _members(
    storage: Storage, gens: list[Generation], assets: dict[str, list[GenerationAsset]]
) -> Iterator[Member]:
    """Each final image, then the manifest: a row per image, and one (without
    a file) per generation that made none. An image whose object is gone is
    left out, its row saying so, and the rest of the archive still comes.
    URLs are the storage's now (its current public base), not ``cdn_url``."""
    out = io.StringIO()
    manifest = csv.writer(out)
    manifest.writerow(MANIFEST)
    for n, gen in enumerate(gens, 1):
        row = [gen.id, gen.status, _cell(gen.prompt or ""), gen.provider or "", gen.model or ""]
        row.append(f"{float(gen.cost):.4f}")
        names: dict[int, str] = {}  # asset id -> file: a variant's row names its source's
        for asset in assets.get(gen.id, []):
            name = f"{n:03d}-{gen.id}-{asset.position}.{EXTENSIONS.get(asset.content_type, 'bin')}"
            names[asset.id] = name
            kind = [asset.variant, names.get(asset.source_asset_id, "")]
            try:  # read on its turn, so an object deleted mid-stream is caught too
                held = [storage.get(asset.r2_key)]
            except KeyError:  # other storage errors still cut the archive short
                log.warning("archive: %s is missing from storage", asset.r2_key)
                manifest.writerow([*row, "", storage.url(asset.r2_key), MISSING, *kind])
                continue
            # pop: once stream_zip has written the bytes nothing here holds them
            yield Member(name, held.pop)
            manifest.writerow([*row, name, storage.url(asset.r2_key), "", *kind])
        if not assets.get(gen.id):
            manifest.writerow([*row, "", "", "", "", ""])
    yield Member("manifest.csv", lambda: out.getvalue().encode(), compress=True)


@bp.get("/<batch_id>/archive")
def archive(batch_id: str):
    gens, assets = _rows(batch_id)
    storage = services().storage  # the stream runs after the request's context is gone

    def body() -> Iterator[bytes]:
        try:
            yield from stream_zip(_members(storage, gens, assets))
        except Exception:  # headers are sent: all we can do is cut the archive short
            log.exception("archive of %s failed part way", batch_id)
            raise

    resp = current_app.response_class(body(), mimetype="application/zip")
    resp.headers["Content-Disposition"] = f'attachment; filename="{batch_id}.zip"'
    resp.cache_control.private, resp.cache_control.no_store = True, True
    return resp
