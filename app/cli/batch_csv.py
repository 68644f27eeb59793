"""A batch as CSV: a header row naming the API's fields (or a matrix's
axes), rows of requests below it, read by ``app.domain.batch_text``'s rules
(notes, quotes, a column named twice); ``Source`` says where each request is.
``app.cli.batch_files`` decides which files are CSV."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from app.domain import batch_text


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
Header = tuple[int, list[str], list[str]]  # its line, its names as written, their columns
Name = tuple[Callable[[str], str], frozenset[str] | tuple[str, ...]]  # a name's column; the known


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


def _csv_item(row: list[tuple[str, str]], line: int) -> dict[str, Any]:
    """A row's request: ``row`` its cells under the API's names ("" for a
    column without a name, or a cell past the header's columns)."""
    item: dict[str, Any] = {}
    for name, value in row:
        if not value.strip():
            continue  # an empty cell: the API's default
        value = value.strip()
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


def _cells(cells: list[str], columns: list[str], line: int) -> list[tuple[str, str]]:
    """A row's cells, each under its column; more cells than columns is a
    prompt's commas left unquoted, refused."""
    if any(cell.strip() for cell in cells[len(columns) :]):
        raise ValueError(f"line {line} has more cells than the header: quote a prompt with commas")
    return list(zip(columns, cells, strict=False))


def column(name: str, known: frozenset[str] | tuple[str, ...] | None = None) -> str:
    """A header's name as the API spells it: ``Prompt`` and ``Size`` (as Excel
    users write them) are ``prompt`` and ``size``; no two fields differ by case
    alone. A name it knows in no case is returned as it is."""
    name = name.strip()
    return next((c for c in known or _fields()[1] if c.casefold() == name.casefold()), name)


def _check_columns(
    line: int, named: list[str], columns: list[str], known: frozenset[str] | tuple[str, ...]
) -> None:
    """Every named column is one ``known`` (the API's fields, a matrix's
    axes): ``colour`` is refused here, naming it as written, not sent along
    to be refused as an unknown field of every request (or as ``colours``)."""
    for name, column in zip(named, columns, strict=True):
        if name and column not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ValueError(
                f"line {line}, column {name} is not a column the API knows{hint};"
                f" the columns are {', '.join(sorted(known))}"
            )


SEPARATORS = ((";", "semicolons"), ("\t", "tabs"))


def _refuse_other_separator(line: int, named: list[str], name: Name) -> None:
    """A header read as one cell that splits at ``;`` (or a tab) into a name
    the file may have: Excel where a comma is the decimal mark saves its CSV
    with semicolons, and each row would be read as one cell."""
    filled = [cell for cell in named if cell]
    for sep, word in SEPARATORS:
        parts = filled[0].split(sep) if len(filled) == 1 else []
        if len(parts) > 1 and any(name[0](part) in name[1] for part in parts):
            raise ValueError(
                f"line {line} separates its cells with {word}, not commas ({filled[0]!r}):"
                " save the sheet as CSV with commas (Excel uses the list separator of"
                " the computer's region settings), or give the file as JSON"
            )


def _header(rows: Iterator[tuple[int, list[str]]], name: Name) -> Header:
    """The header row of ``rows``: its line, its names as written (a cell's
    line ends, Alt+Enter in Excel, as spaces: an error stays one line), and
    the column ``name`` says each names; a column named twice is refused."""
    header = batch_text.csv_header(rows)
    if header is None:
        raise ValueError("there is no header row in it, only notes and blank lines")
    _refuse_other_separator(header[0], [cell.strip() for cell in header[1]], name)
    line, named = header[0], [" ".join(cell.split()) for cell in header[1]]
    columns = [name[0](cell) for cell in named]
    batch_text.refuse_same_column(line, named, columns)
    return line, named, columns


def requests(text: str) -> Batch:
    """The requests of a CSV with a ``prompt`` column, each with its row's
    first line and its columns as the file names them."""
    rows = batch_text.csv_rows(text)
    line, named, columns = _header(rows, (column, _fields()[1]))
    if "prompt" not in columns:
        raise ValueError(
            f"the first row names the columns, and none is 'prompt' (it reads"
            f" {', '.join(named)}); add a header row such as 'prompt,size', or give"
            " a .txt file with one prompt a line"
        )
    _check_columns(line, named, columns, _fields()[1])
    settings, pairs = _fields()[0], zip(columns, named, strict=True)
    where = {f"settings.{c}" if c in settings else c: n for c, n in pairs if c}
    items: list[dict[str, Any]] = []
    sources: list[Source | None] = []
    for n, cells in rows:
        if not batch_text.is_note_row(n, cells, named, columns.index("prompt")):
            items.append(_csv_item(_cells(cells, columns, n), n))
            sources.append(Source(n, where))
    return items, sources


def _axis(name: str) -> str:
    """A header's name as the axis it names: "prompt" is "prompts", "Colorway" "colorways"."""
    axes = _fields()[2]
    axis = column(name, axes)
    return axis if axis in axes or not name else column(f"{axis}s", axes)


def matrix(text: str) -> dict[str, list[str]]:
    """A matrix from CSV: each column an axis, its values down the column."""
    rows = batch_text.csv_rows(text)
    line, named, columns = _header(rows, (_axis, _fields()[2]))
    _check_columns(line, named, columns, _fields()[2])
    prompt = columns.index("prompts") if "prompts" in columns else None
    axes: dict[str, list[str]] = {}
    for n, cells in rows:
        if batch_text.is_note_row(n, cells, named, prompt):
            continue
        for axis, value in _cells(cells, columns, n):
            if value.strip() and not axis:
                raise ValueError(f"line {n} has a cell in a column without a name")
            if value.strip():
                axes.setdefault(axis, []).append(value.strip())
    return axes
