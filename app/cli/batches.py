"""``bff batch FILE [--matrix] [--wait]`` and ``bff batch download ID DIR``,
over the HTTP API as any client would (``BFF_API_URL``, ``BFF_API_KEY``).

FILE is CSV (a header row; ``prompt`` and any of ``negativePrompt``,
``personaId``, ``webhookUrl`` and the settings' names as columns), JSON
Lines (one request object a line, as from-prompt or a JSON from-image takes)
or plain text (one prompt a line, commas and all: a file not named ``.csv``
that is not JSON and whose first line is not a header row).
With ``--matrix``: a JSON object (the API's ``matrix``), or CSV whose columns
are the axes (``prompts``, ``providers``, ``personas``, ``sizes``,
``colorways``), their values down each column."""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import click
import requests

from app.api.batch_schemas import BatchMatrix
from app.api.schemas import GenerationSettings
from app.cli.client import _api, _error, _json

SETTINGS = set(GenerationSettings.model_fields) - {"aspectRatio"}
INTEGERS = {"count", "upscale"}  # a CSV cell is text; the API wants these as numbers
BOOLEANS = {"removeBackground"}
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")
AXES = [name for name in BatchMatrix.model_fields if name not in ("negativePrompt", "settings")]
FINAL = ("completed", "failed", "canceled")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:  # Excel's plain "CSV" is Windows-1252, not UTF-8
        raise click.ClickException(
            f"{path} is not UTF-8 text: save it as UTF-8 (in Excel, 'CSV UTF-8')"
        ) from None


def _is_json(path: Path, text: str) -> bool:
    if path.suffix.lower() in (".json", ".jsonl", ".ndjson"):
        return True
    if path.suffix.lower() == ".csv" or not text.lstrip().startswith(("{", "[")):
        return False
    try:  # "[SS27] linen shirt" is a prompt, not JSON
        json.loads(text.lstrip().split("\n", 1)[0])
    except json.JSONDecodeError:
        return False
    return True


def _setting(name: str, value: str) -> Any:
    """A setting's cell as the API's type, or ValueError saying what it is not."""
    if name in INTEGERS:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a whole number") from None
    if name in BOOLEANS:
        if value.casefold() in TRUE + FALSE:
            return value.casefold() in TRUE
        raise ValueError(f"{value!r} is not true or false (nor yes/no, 1/0)")
    return value


def _csv_item(row: dict[str | None, Any], line: int) -> dict[str, Any]:
    if any((v or "").strip() for v in row.get(None) or []):  # more cells than columns
        raise ValueError(f"line {line} has more cells than the header: quote a prompt with commas")
    item: dict[str, Any] = {}
    for name, value in row.items():
        if name is None or value is None or not value.strip():
            continue  # an empty cell: the API's default
        name, value = name.strip(), value.strip()
        if name in SETTINGS:
            try:
                item.setdefault("settings", {})[name] = _setting(name, value)
            except ValueError as exc:
                raise ValueError(f"line {line}, column {name}: {exc}") from None
        else:
            item[name] = value
    return item


def read_items(path: Path) -> list[dict[str, Any]]:
    text = _read_text(path)
    if _is_json(path, text):
        if text.lstrip().startswith("["):  # one JSON array of request objects
            try:
                return list(json.loads(text))
            except json.JSONDecodeError as exc:
                raise click.ClickException(f"{path}: not a JSON array: {exc}") from None
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        try:
            return [json.loads(line) for _, line in lines]
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{path}: not JSON Lines: {exc}") from None
    # Blank lines are left out; the file's line numbers are kept for errors.
    kept = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    lines = [line for _, line in kept]
    if not lines:
        raise click.ClickException(f"{path}: there are no prompts in it")
    reader = csv.DictReader(lines)
    columns = [(name or "").strip() for name in reader.fieldnames or []]
    if "prompt" not in columns:
        if path.suffix.lower() == ".csv":
            raise click.ClickException(
                f"{path}: the first row names the columns, and none is 'prompt' (it reads"
                f" {', '.join(columns)}); add a header row such as 'prompt,size', or give"
                " a .txt file with one prompt a line"
            )
        if lines[0].strip().casefold().startswith("prompt") or "\t" in lines[0]:
            raise click.ClickException(
                f"{path}: its first line looks like a header row ({lines[0].strip()!r}), not"
                " a prompt; save it as CSV (commas, a 'prompt' column), or list only prompts,"
                " one a line"
            )
        return [{"prompt": line.strip()} for line in lines]
    items = []
    for row in reader:
        try:  # line_num counts the lines read so far: the row's last one
            item = _csv_item(row, kept[reader.line_num - 1][0])
        except ValueError as exc:  # a count that is not a number, a cell too many
            raise click.ClickException(f"{path}: {exc}") from None
        if item:
            items.append(item)
    return items


def read_matrix(path: Path) -> dict[str, Any]:
    text = _read_text(path)
    if _is_json(path, text):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{path}: not a JSON object: {exc}") from None
    matrix: dict[str, list[str]] = {}
    for row in csv.DictReader(text.splitlines()):
        for name, value in row.items():
            axis = (name or "").strip()
            axis = axis if axis in AXES else f"{axis}s"  # "prompt" is "prompts"
            if value and value.strip():
                matrix.setdefault(axis, []).append(value.strip())
    return matrix


class BatchGroup(click.Group):
    """``bff batch FILE`` submits (``submit`` is implied); ``bff batch download``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["submit", *args]
        return super().parse_args(ctx, args)


@click.group("batch", cls=BatchGroup)
def batch_cli() -> None:
    """Batches: 'bff batch FILE [--matrix] [--wait]' submits FILE (CSV, JSON
    Lines, or a plain list of prompts, one a line); 'bff batch download ID
    DIR' fetches a batch's images."""


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
    body: dict[str, Any] = (
        {"matrix": read_matrix(file)} if is_matrix else {"items": read_items(file)}
    )
    if webhook:
        body["webhookUrl"] = webhook
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    resp = _api("POST", "/api/batches", extra_headers=headers, json=body)
    if resp.status_code != 202:
        raise _error(resp)
    accepted = resp.json()
    click.echo(
        f"submitted {accepted['id']}: {accepted['total']} generations, "
        f"at most ${accepted['estimatedCost']:.2f}"
    )
    if wait:
        _follow(accepted["id"], accepted["total"], timeout)


def _follow(batch_id: str, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with click.progressbar(length=total, label=batch_id, show_pos=True) as bar:
        done = 0
        while True:
            shown = _json("GET", f"/api/batches/{batch_id}")
            finished = sum(shown["counts"][s] for s in FINAL)
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
        f"{counts['canceled']} canceled; cost ${shown['cost']:.2f}"
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
        folder.mkdir(parents=True, exist_ok=True)
        try:  # whatever happens, no .part file is left behind
            _save(resp, part)
            with zipfile.ZipFile(part) as archive:
                archive.extractall(folder)  # member names are ours; extractall keeps them inside
                names = archive.namelist()
                missing = _missing(archive)
        except zipfile.BadZipFile:
            raise click.ClickException("the archive arrived incomplete; try again") from None
        finally:
            part.unlink(missing_ok=True)
    click.echo(f"{len(names) - 1} images and manifest.csv in {folder}")
    if missing:
        note = "manifest.csv's note column says which"
        click.echo(f"not found in storage, so not here: {missing} image(s); {note}", err=True)


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
