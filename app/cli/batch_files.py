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
blank line or one starting with ``#`` no request, and a request twice is
refused. Mistakes the file itself shows (a quote never closed, a column the
API does not know, a count that is no number, a request repeated) are
refused before anything is sent, naming the line (and column); ``Source``
names them for the API's refusals."""

from __future__ import annotations

import csv
import difflib
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import click

from app.domain import batch_text
from app.domain.batch_text import BatchTextError


@cache
def _fields() -> tuple[frozenset[str], frozenset[str], tuple[str, ...]]:
    """The API's names: the settings a column may set, every column, and a
    matrix's axes; from its request models, loaded when a file needs them."""
    from app.api.batch_schemas import AXES
    from app.api.schemas import GenerationSettings, PromptSubmit

    settings = frozenset(GenerationSettings.model_fields) - {"aspectRatio"}
    columns = (frozenset(PromptSubmit.model_fields) - {"settings", "userId"}) | settings
    return settings, columns, AXES


INTEGERS = {"count", "upscale"}  # a CSV cell is text; the API wants these as numbers
BOOLEANS = {"removeBackground"}
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")
CSV_ERRORS = {  # the csv module's words, in the file's
    "unexpected end of data": 'opens a quoted cell that is never closed: end it with "',
    "',' expected after '\"'": "has text after a quoted cell's closing \": quote the whole"
    ' cell, and write a " inside it as ""',
}


@dataclass(frozen=True)
class Source:
    """Where a request is in the file: its line, and (CSV) each field's column."""

    line: int
    columns: dict[str, str] = field(default_factory=dict)  # "settings.size" -> "size"

    def where(self, path: str) -> str:
        """``path`` (a field inside the request, "" for all of it) in the file's words."""
        column = self.columns.get(path)
        return f"line {self.line}, column {column}" if column else f"line {self.line}"


Batch = tuple[list[dict[str, Any]], list[Source | None]]


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
        if not name:
            raise ValueError(f"line {line} has a cell in a column without a name")
        if name in _fields()[0]:
            try:
                item.setdefault("settings", {})[name] = _setting(name, value)
            except ValueError as exc:
                raise ValueError(f"line {line}, column {name}: {exc}") from None
        else:
            item[name] = value
    return item


def _column(name: str, known: frozenset[str] | tuple[str, ...] | None = None) -> str:
    """A header's name as the API spells it: ``Prompt`` and ``Size`` (as Excel
    users write them) are ``prompt`` and ``size``; no two fields differ by case
    alone. A name it knows in no case is returned as it is."""
    name = name.strip()
    return next((c for c in known or _fields()[1] if c.casefold() == name.casefold()), name)


def _check_columns(columns: list[str], line: int) -> None:
    """Every named column is a field the API takes: ``colour`` is refused
    here, not sent along to be refused as an unknown field of every request."""
    known = _fields()[1]
    for name in columns:
        if name and name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ValueError(
                f"line {line}, column {name} is not a column the API knows{hint};"
                f" the columns are {', '.join(sorted(known))}"
            )


def _csv_rows(lines: list[tuple[int, str]]) -> Batch:
    """The rows of a CSV with a ``prompt`` column: ``lines`` are the file's
    non-blank lines with their numbers. Quotes are read strictly, so a quote
    left open is refused, not read as a prompt that swallows the rest."""
    reader = csv.DictReader([f"{line}\n" for _, line in lines], strict=True)
    items: list[dict[str, Any]] = []
    sources: list[Source | None] = []
    first = lines[0][0]
    try:
        named = [(name or "").strip() for name in reader.fieldnames or []]
        columns = [_column(name) for name in named]
        _check_columns(columns, first)
        reader.fieldnames = columns  # each row's cells under the API's names
        settings, pairs = _fields()[0], zip(columns, named, strict=True)
        where = {f"settings.{c}" if c in settings else c: n for c, n in pairs if c}
        while reader.line_num < len(lines):
            first = lines[reader.line_num][0]  # the row's first line
            row = next(reader, None)
            if row is not None and (item := _csv_item(row, first)):
                items.append(item)
                sources.append(Source(first, where))
    except csv.Error as exc:
        why = CSV_ERRORS.get(str(exc), f"is not CSV as read: {exc}")
        raise ValueError(f"line {first} {why}") from None
    return items, sources


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
    # Blank lines and notes are left out; the file's line numbers are kept for errors.
    kept = batch_text.lines(text, quoted=True)
    if not kept:
        raise click.ClickException(f"{path}: there are no prompts in it")
    header = kept[0][1]
    columns = [name.strip() for name in next(csv.reader([header]))]
    if "prompt" in map(_column, columns):
        try:
            return _csv_rows(kept)
        except ValueError as exc:  # a quote left open, a count that is no number, …
            raise click.ClickException(f"{path}: {exc}") from None
    if path.suffix.lower() == ".csv":
        raise click.ClickException(
            f"{path}: the first row names the columns, and none is 'prompt' (it reads"
            f" {', '.join(columns)}); add a header row such as 'prompt,size', or give"
            " a .txt file with one prompt a line"
        )
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
    matrix: dict[str, list[str]] = {}
    axes = _fields()[2]
    for row in csv.DictReader([f"{line}\n" for _, line in batch_text.lines(text, quoted=True)]):
        for name, value in row.items():
            axis = _column(name or "", axes)
            if axis not in axes:  # "prompt" is "prompts", "Colorway" "colorways"
                axis = _column(f"{axis}s", axes)
            if value and value.strip():
                matrix.setdefault(axis, []).append(value.strip())
    return matrix
