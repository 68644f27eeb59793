"""A batch written as text: the rules ``bff batch`` reads a ``.txt`` or
``.csv`` file by and the page's Batch box is read by (``matrix.promptsText``),
in one place so that the same text makes the same paid generations wherever
it is sent.

- UTF-8; a byte-order mark at the start (Notepad, Excel's "CSV UTF-8") is no text;
- lines end in LF, CRLF or CR; white space at either end of a line (of a
  CSV cell) is not part of its prompt;
- a blank line, and a line whose first character that is not white space is
  ``#`` (a note to yourself: ``# autumn drop``), is no request;
- CSV is read as the csv module reads it, and notes are decided on its cells
  (a note holding a comma is saved quoted: ``"# SS27: linen, wool",``): a
  blank row, a row above the header whose first cell starts with ``#``, and
  below it a row whose one non-empty cell starts with ``#`` are no request;
  a row whose prompt starts with ``#`` but that sets another cell
  (``#1 bestseller tee,portrait``) is refused, as is a header naming one
  column twice (``prompt,Prompt``); a first line ``sep=,`` (Excel's) is no
  row, one naming another separator is refused;
- the same request twice (prompts compared without case and extra spaces) is
  refused, naming both lines: it would pay twice for what was typed once.
  More images of one prompt: ``count`` (1 to 4; the page's *Images*);
- in a plain list of prompts, a first line whose first word is ``prompt``
  or ``Prompts`` (a header row) and a line holding a tab (cells pasted from a
  sheet) are refused.

Functions raise ``BatchTextError`` (a ValueError) saying the line."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

BOM = "\ufeff"
COMMENT = "#"


class BatchTextError(ValueError):
    """The text is not a batch as written; the message names the line."""


def decode(data: bytes) -> str:
    """``data`` as text, without a byte-order mark; not UTF-8: BatchTextError."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:  # Excel's plain "CSV" is Windows-1252, not UTF-8
        raise BatchTextError(
            "is not UTF-8 text: save it as UTF-8 (in Excel, 'CSV UTF-8')"
        ) from None


def is_note(line: str) -> bool:
    """A blank line, or a comment: no request."""
    stripped = line.strip()
    return not stripped or stripped.startswith(COMMENT)


# Only these end a line: str.splitlines() also splits at U+2028, VT, FF and NEL,
# which a prompt pasted from a word processor may hold (one prompt, not two).
NEWLINE = re.compile(r"\r\n|\r|\n")
# A header row's first word; "Prompted by the 70s" and "promptly cut" are prompts.
HEADER = re.compile(r"prompts?\b", re.IGNORECASE)


def _split(text: str) -> list[str]:
    text = text.removeprefix(BOM)
    return NEWLINE.split(text.removesuffix("\n").removesuffix("\r")) if text else []


def lines(text: str) -> list[tuple[int, str]]:
    """The lines that may hold requests, each with its line number in the
    text, trailing white space (and a CR) removed."""
    return [(n, line.rstrip()) for n, line in enumerate(_split(text), 1) if not is_note(line)]


CSV_ERRORS = {  # the csv module's words, in the file's
    "unexpected end of data": 'opens a quoted cell that is never closed: end it with "',
    "',' expected after '\"'": "has text after a quoted cell's closing \": quote the whole"
    ' cell, and write a " inside it as ""',
}


def _csv_lines(text: str) -> Iterator[str]:
    """The text's lines for the csv module, white space at their ends no text
    (so ``"linen shirt"  `` is one quoted cell, not text after its quote)."""
    return (f"{line.rstrip()}\n" for line in _split(text))


def csv_rows(text: str) -> Iterator[tuple[int, list[str]]]:
    """The rows of CSV ``text`` that are not blank, each with the number of
    the line it starts on (a quoted cell may hold line ends). Read strictly:
    a quote left open is refused, not read as a cell that swallows the rest."""
    reader = csv.reader(_csv_lines(text), strict=True)
    first = 1
    try:
        for cells in reader:
            if any(cell.strip() for cell in cells):
                yield first, cells
            first = reader.line_num + 1
    except csv.Error as exc:
        why = CSV_ERRORS.get(str(exc), f"is not CSV as read: {exc}")
        raise BatchTextError(f"line {first} {why}") from None


# Excel's own first line naming the separator ("sep=;"), which it writes no cell of.
EXCEL_SEP = re.compile(r"sep=(.?)", re.IGNORECASE)


def csv_header(rows: Iterator[tuple[int, list[str]]]) -> tuple[int, list[str]] | None:
    """The header row, taken from ``rows`` (which go on with the rows below
    it): the first whose first cell does not start with ``#``. Above it
    nothing is sent, so a note there (``# SS27, linen``) is one whatever it
    holds, but a first cell ``#`` alone beside a named column is a header's
    (``#,prompt``: a sheet numbering its rows), its column refused by name;
    a first line ``sep=,`` is Excel's hint, no row, and one naming another
    separator is refused: each row would be read as one cell."""
    for n, cells in rows:
        if n == 1 and (sep := EXCEL_SEP.fullmatch(",".join(cells).strip())):
            if sep[1] == ",":
                continue
            raise BatchTextError(
                f"line 1 ({sep[0]!r}) says its cells are separated by"
                f" {repr(sep[1]) if sep[1] else 'tabs'}, not commas: save the sheet as CSV"
                " with commas (Excel uses the list separator of the computer's region settings)"
            )
        numbered = cells[0].strip() == COMMENT and any(cell.strip() for cell in cells[1:])
        if numbered or not cells[0].strip().startswith(COMMENT):
            return n, cells
    return None


def refuse_same_column(line: int, named: list[str], columns: list[str]) -> None:
    """``named``: the header's names as written, ``columns`` what each names
    (``Prompt`` names ``prompt``); a column named twice is refused, naming
    both: each row would keep one of its two cells and drop the other."""
    seen: dict[str, str] = {}
    for name, column in zip(named, columns, strict=True):
        if not name:
            continue  # a column without a name (a sheet's trailing commas): its cells are refused
        if column in seen:
            raise BatchTextError(
                f"line {line} names the column {column} twice ({seen[column]} and {name}):"
                " each row would keep only one of the two cells; keep one column"
            )
        seen[column] = name


def is_note_row(line: int, cells: list[str], named: list[str], prompt: int | None) -> bool:
    """Whether a CSV row below the header (``named``; ``prompt``: its prompt
    column's index) is a note: its one non-empty cell starts with ``#``. A
    row whose prompt starts with ``#`` and that sets another cell is refused:
    a note with a comma left unquoted, or a prompt that would be dropped."""
    filled = [i for i, cell in enumerate(cells) if cell.strip()]
    if len(filled) == 1 and cells[filled[0]].strip().startswith(COMMENT):
        return True
    if prompt is None or prompt >= len(cells) or not cells[prompt].strip().startswith(COMMENT):
        return False
    sets = [named[i] if i < len(named) and named[i] else f"cell {i + 1}" for i in filled]
    sets.remove(named[prompt])
    raise BatchTextError(
        f"line {line}: starts with '#' (a note) but sets {', '.join(sets)};"
        " quote a note that holds commas, or remove the '#' to send it as a prompt"
    )


def _same(prompt: Any) -> Any:
    return " ".join(prompt.split()).casefold() if isinstance(prompt, str) else prompt


def request_key(request: Any) -> str:
    """What makes two requests the same: their fields, the prompt's case
    and spacing aside."""
    if isinstance(request, dict) and "prompt" in request:
        request = request | {"prompt": _same(request["prompt"])}
    return json.dumps(_same(request), sort_keys=True, default=str)


def refuse_repeats(keyed: Iterable[tuple[str, str]]) -> None:
    """``keyed``: (where, key) of each request in order; the first request
    that repeats an earlier one is refused, naming both places."""
    seen: dict[str, str] = {}
    for where, key in keyed:
        if key in seen:
            raise BatchTextError(
                f"{where} repeats {seen[key]}: each line is a paid generation, so a"
                " request is sent once; for more images of one prompt, ask for more"
                " (count, 1 to 4: Images on the web page)"
            )
        seen[key] = where


def prompts(text: str) -> list[tuple[int, str]]:
    """A plain list of prompts, one a line: each with its line number. A
    first line whose first word is ``prompt``/``Prompts`` is a header row,
    and a tab between words the border of cells pasted from a spreadsheet:
    neither is a prompt."""
    kept = [(n, line.strip()) for n, line in lines(text)]
    if kept and HEADER.match(kept[0][1]):
        raise BatchTextError(
            f"line {kept[0][0]} looks like a header row ({kept[0][1]!r}), not a prompt;"
            " list only prompts, one a line (or save it as CSV with a 'prompt' column)"
        )
    for n, prompt in kept:
        if "\t" in prompt:
            raise BatchTextError(
                f"line {n} holds a tab, as cells pasted from a spreadsheet do"
                f" ({prompt!r}); list only prompts, one a line, or save the sheet as"
                " CSV with a 'prompt' column and a column for each setting"
            )
    refuse_repeats((f"line {n}", request_key({"prompt": p})) for n, p in kept)
    return kept
