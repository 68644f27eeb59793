"""``bff batch FILE [--matrix] [--wait]`` and ``bff batch download ID DIR``,
over the HTTP API as any client would (``BFF_API_URL``, ``BFF_API_KEY``).
What FILE may hold: ``batch_files``. A refusal that names a request's field
(``items.3.settings.provider``) also says where it is in FILE."""

from __future__ import annotations

import csv
import io
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import click
import requests

from app.cli.batch_csv import Source
from app.cli.batch_files import read_batch, read_items, read_matrix
from app.cli.http import FINAL, _api, _error, _json, body_of, persona_ids

__all__ = ["batch_cli", "read_items", "read_matrix"]
ITEM_FIELD = re.compile(r"items\.(\d+)(?:\.(.+))?")


def _place(field: str, sources: list[Source | None]) -> str | None:
    """An item's ``field`` (``items.3.settings.provider``) as a place in the file,
    if known: a refusal then reads ``line 5, column provider (items.3.…): …``."""
    m = ITEM_FIELD.fullmatch(field)
    source = sources[int(m[1])] if m and int(m[1]) < len(sources) else None
    return source.where(m[2] or "") if m and source else None


class BatchGroup(click.Group):
    """``bff batch FILE`` submits (``submit`` is implied); ``bff batch download``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["submit", *args]
        return super().parse_args(ctx, args)


@click.group("batch", cls=BatchGroup)
def batch_cli() -> None:
    """Batches: 'bff batch FILE [--matrix] [--wait]' submits FILE (CSV, JSON
    Lines, or a plain list of prompts, one a line: blank lines and lines
    starting with # are notes, a request twice is refused); 'bff batch
    download ID DIR' fetches a batch's images."""


@batch_cli.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--matrix", "is_matrix", is_flag=True, help="FILE is a matrix, not a request a line")
@click.option("--webhook", help="POST the batch's completion here")
@click.option("--idempotency-key", help="a retry with the same key returns the first batch")
@click.option("--wait", is_flag=True, help="show the batch's progress until it is done")
@click.option("--timeout", default=3600.0, show_default=True, help="seconds to wait")
def submit(
    file: Path,
    is_matrix: bool,
    webhook: str | None,
    idempotency_key: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Submit the batch in FILE (bff batch FILE)."""
    sources: list[Source | None] = []
    if is_matrix:
        body: dict[str, Any] = {"matrix": read_matrix(file)}
    else:
        items, sources = read_batch(file)
        body = {"items": items}
    _personas_by_id(body)
    if webhook:
        body["webhookUrl"] = webhook
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    resp = _api("POST", "/api/batches", extra_headers=headers, json=body)
    if resp.status_code != 202:
        raise _error(resp, lambda field: _place(field, sources))
    accepted = body_of(resp)
    total = accepted["total"]
    click.echo(
        f"submitted {accepted['id']}: {total} generation{'s' * (total != 1)}, "
        f"at most ${accepted['estimatedCost']:.3f}"
    )
    if not wait:
        return
    try:
        _follow(accepted["id"], accepted["total"], timeout)
    except KeyboardInterrupt:  # only the waiting stops, as for bff generate --wait
        batch = accepted["id"]
        click.echo(f"stopped waiting; {batch} goes on: bff batch download {batch} DIR", err=True)
        raise click.exceptions.Exit(130) from None


def _personas_by_id(body: dict[str, Any]) -> None:
    """A persona named in FILE by its name (the page shows no ids) is sent as its id."""
    matrix, items = body.get("matrix") or {}, body.get("items") or []
    named = [i for i in items if isinstance(i, dict) and isinstance(i.get("personaId"), str)]
    axis = matrix.get("personas") if isinstance(matrix.get("personas"), list) else []
    given = [i["personaId"] for i in named] + [v for v in axis if isinstance(v, str)]
    if not (ids := persona_ids(given)):
        return
    for item in named:
        item["personaId"] = ids.get(item["personaId"], item["personaId"])
    if axis:
        matrix["personas"] = [ids.get(v, v) if isinstance(v, str) else v for v in axis]


def _follow(batch_id: str, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with click.progressbar(length=total, label=batch_id, show_pos=True) as bar:
        done = 0
        while True:
            shown = _json("GET", f"/api/batches/{batch_id}")
            finished = sum(shown["counts"].get(s, 0) for s in (*FINAL, "deleted"))
            bar.update(finished - done)
            done = finished
            if shown["status"] not in ("pending", "processing"):
                break
            if time.monotonic() > deadline:
                raise click.ClickException(f"still {shown['status']} after {timeout:.0f}s")
            time.sleep(1)
    counts = shown["counts"]
    click.echo(
        f"{shown['status']}: {counts['completed']} completed, {counts['failed']} failed, "
        f"{counts['canceled']} canceled"
        + (f", {counts['deleted']} deleted" if counts.get("deleted") else "")
        + f"; cost ${shown['cost']:.3f}"
    )
    if shown["status"] != "completed" or counts["failed"] or counts["canceled"]:
        raise click.ClickException(f"batch {batch_id} did not complete every generation")


@batch_cli.command("download")
@click.argument("batch_id")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
def download(batch_id: str, folder: Path) -> None:
    """The batch's images and manifest.csv into FOLDER."""
    part = folder / f".{batch_id}.zip.part"
    with _api("GET", f"/api/batches/{batch_id}/archive", stream=True) as resp:
        if resp.status_code != 200:
            raise _error(resp)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # under a file, say, or where this account may not write
            raise click.ClickException(f"cannot make {folder}: {exc.strerror}") from None
        try:  # whatever happens, no .part file is left behind
            _save(resp, part)
            with zipfile.ZipFile(part) as archive:
                _check_members(archive, part.stat().st_size)
                archive.extractall(folder)
                names = archive.namelist()
                missing = _missing(archive)
        except zipfile.BadZipFile:
            raise click.ClickException("the archive arrived incomplete; try again") from None
        except OSError as exc:  # a folder this account may not write in, a full disk
            raise click.ClickException(f"cannot write to {folder}: {exc.strerror}") from None
        finally:
            part.unlink(missing_ok=True)
    click.echo(f"{len(names) - 1} images and manifest.csv in {folder}")
    if missing:
        note = "manifest.csv's note column says which"
        click.echo(f"not found in storage, so not here: {missing} image(s); {note}", err=True)


# What the archive route writes: NNN-<generation id>-<n>.<ext>, then the manifest.
MEMBER = re.compile(r"\d{3,}-gen_[0-9a-z]+-\d+\.(png|jpg|webp|bin)|manifest\.csv")


def _check_members(archive: zipfile.ZipFile, size: int) -> None:
    """Extract only what the server writes (no other names, none over files
    already there by another name), and no more than it sent: the images are
    stored uncompressed, so a member far bigger than its bytes is a bomb."""
    infos = archive.infolist()
    if any(not MEMBER.fullmatch(i.filename) for i in infos):
        raise click.ClickException("the archive holds files a batch archive does not; not opened")
    if sum(i.file_size for i in infos) > 2 * size + 2**20:
        raise click.ClickException("the archive unpacks to far more than it holds; not opened")


def _save(resp: requests.Response, part: Path) -> None:
    """The response's body into ``part`` as it arrives: never all in memory."""
    received = 0
    with open(part, "wb") as out:
        try:
            for chunk in resp.iter_content(64 * 1024):
                out.write(chunk)
                received += len(chunk)
        except requests.RequestException:  # the server cut the stream short
            raise click.ClickException(
                f"the archive arrived incomplete: the connection broke after {received} bytes;"
                " try again"
            ) from None


def _missing(archive: zipfile.ZipFile) -> int:
    """How many images the server could not find (rows with a note)."""
    if "manifest.csv" not in archive.namelist():
        return 0
    with archive.open("manifest.csv") as raw:
        rows = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))
        return sum(1 for row in rows if row.get("note"))
