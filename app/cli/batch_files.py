"""What ``bff batch FILE`` reads, and where each request came from in it.

FILE is CSV (a header row; ``prompt`` and any of ``negativePrompt``,
``personaId``, ``webhookUrl`` and the settings' names as columns), JSON
Lines (one request object a line, as from-prompt or a JSON from-image takes)
or plain text (one prompt a line, commas and all: a file not named ``.csv``
that is not JSON and whose first line is not a header row).
With ``--matrix``: a JSON object (the API's ``matrix``), or CSV whose columns
are the axes (``prompts``, ``providers``, ``personas``, ``sizes``,
``colorways``), their values down each column.

Lines are read by ``app.domain.batch_text``'s rules, as the page's Batch box
is: a byte-order mark, CRLF and white space around a prompt are no text, a
blank line or one starting with ``#`` no request (in CSV: a row whose one
non-empty cell does), and a request twice is refused. Mistakes the file
itself shows (a quote never closed, cells separated by ``;``, a column
the API (or a matrix) does not know or named twice, a count that is no
number, a note that sets a size, a request repeated) are refused before
anything is sent, naming the line (and column); ``Source`` names them for
the API's refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import click

from app.cli import batch_csv
from app.cli.batch_csv import Batch, Source
from app.domain import batch_text
from app.domain.batch_text import BatchTextError


def _read_text(path: Path) -> str:
    try:
        return batch_text.decode(path.read_bytes())
    except BatchTextError as exc:
        raise click.ClickException(f"{path} {exc}") from None


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


def _request(item: Any) -> Any:
    """A JSON item: a request object as it is, a prompt alone as its request."""
    return {"prompt": item} if isinstance(item, str) else item


def _json_lines(path: Path, text: str) -> Batch:
    items, sources = [], []
    for n, line in batch_text.lines(text):
        try:
            items.append(_request(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise click.ClickException(
                f"{path}: line {n} is not JSON: {exc.msg} (column {exc.colno})"
            ) from None
        sources.append(Source(n))
    return items, sources


def read_batch(path: Path) -> Batch:
    """The requests in ``path``, and where each is in it (None: not known)."""
    items, sources = _read_batch(path)
    if not items:  # a header row alone, an empty JSON array: the server's words are pydantic's
        raise click.ClickException(f"{path}: there are no requests in it, only a header or []")
    places = [s.where("") if s else f"request {i}" for i, s in enumerate(sources, 1)]
    try:  # a line pasted twice would be paid twice
        batch_text.refuse_repeats(zip(places, map(batch_text.request_key, items), strict=True))
    except BatchTextError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    return items, sources


def _read_batch(path: Path) -> Batch:
    text = _read_text(path)
    if _is_json(path, text):
        if not text.lstrip().startswith("["):
            return _json_lines(path, text)
        try:  # one JSON array of request objects
            items = [_request(item) for item in json.loads(text)]
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{path}: not a JSON array: {exc}") from None
        return items, [None] * len(items)
    kept = batch_text.lines(text)
    if not kept:
        raise click.ClickException(f"{path}: there are no prompts in it")
    columns = next(csv.reader([kept[0][1]]))
    if path.suffix.lower() == ".csv" or "prompt" in map(batch_csv.column, columns):
        try:  # a quote left open, a count that is no number, a note that sets a size, …
            return batch_csv.requests(text)
        except ValueError as exc:
            raise click.ClickException(f"{path}: {exc}") from None
    try:
        kept = batch_text.prompts(text)
    except BatchTextError as exc:  # a header row, a prompt twice
        raise click.ClickException(f"{path}: {exc}") from None
    return [{"prompt": line} for _, line in kept], [Source(n) for n, _ in kept]


def read_items(path: Path) -> list[dict[str, Any]]:
    return read_batch(path)[0]


def read_matrix(path: Path) -> dict[str, Any]:
    text = _read_text(path)
    if _is_json(path, text):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{path}: not a JSON object: {exc}") from None
    try:
        return batch_csv.matrix(text)
    except ValueError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
