"""``bff batch FILE`` names the place in FILE: a quote left open, a JSON
Lines line that is not JSON, a column the API does not know (all before
anything is sent), and the request the API refused, by its line (and CSV
column) beside the API's ``items.N.field``. The API is the real one, over
the Flask test client."""

from __future__ import annotations

import re
from typing import Any

import click
import pytest
from click.testing import CliRunner

from app.cli import batches
from app.cli.batch_files import read_batch, read_matrix
from app.cli.batches import batch_cli, read_items


class _Answer:
    """The test client's answer as the CLI reads a ``requests`` one."""

    def __init__(self, resp) -> None:
        self.status_code, self._body = resp.status_code, resp.get_json()

    def json(self) -> Any:
        return self._body


@pytest.fixture
def sent(monkeypatch, client, user) -> list[Any]:
    """The bodies ``bff batch`` sent, each to the app's real /api/batches."""
    bodies: list[Any] = []

    def api(method: str, path: str, extra_headers=None, **kwargs):
        bodies.append(kwargs.get("json"))
        headers = {**user.headers, **(extra_headers or {})}
        return _Answer(client.open(path, method=method, json=kwargs.get("json"), headers=headers))

    monkeypatch.setattr(batches, "_api", api)
    return bodies


def run_batch(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    result = CliRunner().invoke(batch_cli, [str(path)])
    return result.output


# ------------------------------------------------ refused before sending


@pytest.mark.parametrize(
    "text,says",
    [
        (
            'prompt,size\n"unterminated,portrait\n',
            "line 2 opens a quoted cell that is never closed",
        ),
        ('prompt,size\nlinen shirt,square\n\n"a"b,portrait\n', "line 4 has text after a quoted"),
        ('\nprompt,"size\nlinen shirt,square\n', "line 2 opens a quoted cell that is never"),
    ],
)
def test_a_quote_left_open_is_refused_naming_its_line(tmp_path, text, says):
    path = tmp_path / "looks.csv"
    path.write_text(text)
    with pytest.raises(click.ClickException, match=says) as exc:
        read_items(path)
    assert "\n" not in exc.value.message  # one sentence


def test_quotes_in_a_plain_list_of_prompts_are_text(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text('"Bold" linen dress\na 12" hem skirt\n')
    assert read_items(path) == [{"prompt": '"Bold" linen dress'}, {"prompt": 'a 12" hem skirt'}]


def test_a_json_lines_error_names_the_files_line(tmp_path):
    path = tmp_path / "looks.jsonl"
    path.write_text('{"prompt": "a red coat"}\n\n{bad\n')
    with pytest.raises(click.ClickException) as exc:
        read_items(path)
    assert "line 3 is not JSON" in exc.value.message and "line 1" not in exc.value.message


@pytest.mark.parametrize(
    "header,says",
    [
        ("prompt,sise", "column sise is not a column the API knows (did you mean size?)"),
        ("prompt,colour", "column colour is not a column the API knows;"),
    ],
)
def test_an_unknown_column_is_named_before_anything_is_sent(tmp_path, sent, header, says):
    output = run_batch(tmp_path, "looks.csv", f"{header}\nlinen shirt,square\n")
    assert f"line 1, {says}" in output and "the columns are " in output, output
    assert sent == []


@pytest.mark.parametrize(
    "text,says",
    [
        # A prompt starting with "#" that sets a size: before, dropped as a note.
        (
            "prompt,size\n#1 bestseller tee,portrait\n",
            "line 2: starts with '#' (a note) but sets size;",
        ),
        (  # a row commented out, as Excel saves it
            "\ufeff# SS27\r\nPrompt,Size,Count\r\nlinen shirt,,\r\n# wool coat,square,2\r\n",
            "line 4: starts with '#' (a note) but sets Size, Count;",
        ),
        # a note's comma left unquoted: a cell past the header's
        (
            "prompt\nlinen shirt\n# SS27: linen, wool\n",
            "line 3: starts with '#' (a note) but sets cell 2;",
        ),
        (  # the line a row starts on, after a quoted cell of three lines
            'prompt,size\n"linen shirt\n\nsoft collar",square\n# wool coat,portrait\n',
            "line 5: starts with '#' (a note) but sets size;",
        ),
    ],
)
def test_a_note_that_sets_a_cell_is_refused_not_dropped(tmp_path, sent, text, says):
    output = run_batch(tmp_path, "looks.csv", text)
    assert says in output and "quote a note that holds commas, or remove the '#'" in output, output
    assert "\n" not in output.strip() and sent == []


def test_a_matrix_note_that_sets_a_cell_is_refused(tmp_path):
    path = tmp_path / "axes.csv"
    path.write_text("prompts,colorways\nblazer,\n# trench,navy\n")
    with pytest.raises(click.ClickException, match="line 3: starts with '#' .* sets colorways;"):
        read_matrix(path)


@pytest.mark.parametrize(
    "name,text,says",
    [
        (
            "looks.csv",
            "prompt,Prompt\nlinen shirt,wool coat\n",
            "column prompt twice (prompt and Prompt)",
        ),
        (
            "looks.txt",
            "\n# SS27\nprompt,size,SIZE\nlinen shirt,,square\n",
            "line 3 names the column size twice (size and SIZE)",
        ),
        (
            "axes.csv",
            "prompts,Prompt\nblazer,trench\n",
            "column prompts twice (prompts and Prompt)",
        ),
    ],
)
def test_a_column_named_twice_is_refused_naming_both(tmp_path, name, text, says):
    """Before, ``Prompt``'s cells took the place of ``prompt``'s, unsaid."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(click.ClickException, match=re.escape(says)):
        (read_matrix if name.startswith("axes") else read_items)(path)


def test_each_request_knows_its_line_and_columns(tmp_path):
    path = tmp_path / "looks.csv"
    path.write_text('\nprompt, provider ,count\nlinen shirt,local,2\n\n"wool, navy",,\n')
    _, sources = read_batch(path)
    assert [s.line for s in sources] == [3, 5]
    assert sources[0].where("settings.provider") == "line 3, column provider"
    assert sources[1].where("") == "line 5"


# ------------------------------------------------ the API's refusal, placed in the file


@pytest.mark.parametrize(
    "name,text,says",
    [
        (
            "looks.csv",
            "prompt,provider\nlinen shirt,local\n\nwool coat,midjourney\n",
            "line 4, column provider (items.1.settings.provider): Input should be",
        ),
        (
            "looks.csv",
            "prompt,size\nlinen shirt,huge\n",
            "line 2, column size (items.0.settings.size): Input should be",
        ),
        (  # the column as the file spells it
            "looks.csv",
            "Prompt,Size\nlinen shirt,huge\n",
            "line 2, column Size (items.0.settings.size): Input should be",
        ),
        (
            "looks.csv",
            "prompt,provider\nlinen shirt,openai-dalle3\n",
            "line 2, column provider (items.0.settings.provider): OPENAI_API_KEY",
        ),
        (
            "looks.jsonl",
            '{"prompt": "a red coat"}\n\n{"prompt": "a blue coat", "colour": "x"}\n',
            "line 3 (items.1.colour): unknown field",
        ),
        (
            "prompts.txt",
            "linen shirt\n\n\n" + "x" * 5001 + "\n",
            "line 4 (items.1.prompt): String should have at most 5000",
        ),
    ],
)
def test_a_refused_request_is_named_by_its_place_in_the_file(tmp_path, sent, name, text, says):
    output = run_batch(tmp_path, name, text)
    assert len(sent) == 1 and "422" in output, output
    assert says in output, output


def test_a_refusal_about_the_whole_batch_is_as_the_api_said(tmp_path, sent):
    path = tmp_path / "matrix.json"
    path.write_text('{"prompts": ["blazer"], "sizes": ["huge"]}')
    result = CliRunner().invoke(batch_cli, [str(path), "--matrix"])
    assert "matrix.sizes.0:" in result.output and "line" not in result.output, result.output


# ------------------------------------------------ a persona by its name


@pytest.fixture
def riviera(monkeypatch, client, user, sent) -> str:
    """A persona named "Riviera summer"; ``bff`` reads /api/personas from the app too."""
    from app.cli import http

    def api(method: str, path: str, extra_headers=None, **kwargs):
        return _Answer(client.open(path, method=method, headers=user.headers))

    monkeypatch.setattr(http, "_api", api)
    body = {"name": "Riviera summer", "keywords": ["linen"]}
    return client.post("/api/personas", json=body, headers=user.headers).get_json()["id"]


@pytest.mark.parametrize(
    "name,text,matrix",
    [
        ("looks.csv", "prompt,personaId\nlinen shirt, riviera SUMMER\n", False),
        ("axes.csv", "prompts,personas\nlinen shirt,Riviera summer\n", True),
    ],
)
def test_a_persona_is_named_in_the_file_by_its_name(tmp_path, sent, riviera, name, text, matrix):
    """Before, only its id (which the page does not show) was taken: a name
    was refused as "unknown persona"."""
    path = tmp_path / name
    path.write_text(text)
    result = CliRunner().invoke(batch_cli, [str(path), *(["--matrix"] if matrix else [])])
    assert result.exit_code == 0, result.output
    body = sent[-1]
    assert (body["matrix"]["personas"] if matrix else [body["items"][0]["personaId"]]) == [riviera]


def test_a_name_no_persona_has_is_refused_by_its_line(tmp_path, sent, riviera):
    output = run_batch(tmp_path, "looks.csv", "prompt,personaId\nlinen shirt,Evening gala\n")
    assert "line 2, column personaId (items.0.personaId): unknown persona" in output, output


def test_the_estimate_is_shown_to_the_tenth_of_a_cent_as_the_page_shows_it(tmp_path, monkeypatch):
    """Before, a nano-banana image's $0.039 read "at most $0.04" (the page: $0.039)."""

    class Accepted:
        status_code = 202

        def json(self) -> dict:
            return {"id": "bat_1", "total": 1, "estimatedCost": 0.039}

    monkeypatch.setattr(batches, "_api", lambda *a, **k: Accepted())
    output = run_batch(tmp_path, "looks.txt", "linen shirt\n")
    assert "submitted bat_1: 1 generation, at most $0.039" in output, output


@pytest.mark.parametrize(
    "text,says",
    [  # before: "none is 'prompt' (it reads prompt;size)", the separator unsaid
        (
            "\ufeffprompt;size\r\nlinen shirt;square\r\n",
            "line 1 separates its cells with semicolons",
        ),
        ("Prompt\tSize\nlinen shirt\tsquare\n", "line 1 separates its cells with tabs"),
        # Excel's hint naming the separator; before: "it reads sep=;"
        ("sep=;\r\nprompt;size\r\nlinen shirt;square\r\n", "line 1 ('sep=;') says its cells"),
    ],
)
@pytest.mark.parametrize("matrix", [False, True])
def test_a_csv_separated_by_semicolons_is_refused_saying_so(tmp_path, text, says, matrix):
    """European Excel saves "CSV" with semicolons; before, a matrix of such a
    file was {'prompt;sizes': [...]}, sent to be refused for a name never typed."""
    path = tmp_path / "looks.csv"
    path.write_text(text)
    with pytest.raises(click.ClickException, match=re.escape(says)) as exc:
        (read_matrix if matrix else read_items)(path)
    assert "save the sheet as CSV with commas" in exc.value.message


def test_excels_sep_line_naming_commas_is_no_row(tmp_path):
    path = tmp_path / "looks.csv"
    path.write_text("sep=,\r\nprompt,size\r\nlinen shirt,square\r\n")
    assert read_items(path) == [{"prompt": "linen shirt", "settings": {"size": "square"}}]
    path.write_text("sep=,\r\nprompts,sizes\r\nlinen shirt,square\r\n")
    assert read_matrix(path) == {"prompts": ["linen shirt"], "sizes": ["square"]}


def test_a_matrix_column_that_is_no_axis_is_named_as_written(tmp_path):
    """Before, ``colours`` was sent as the axis ``colourss``, for the API to refuse."""
    path = tmp_path / "axes.csv"
    path.write_text("prompts,Colours\nblazer,navy\n")
    with pytest.raises(
        click.ClickException,
        match=r"line 1, column Colours is not a column the"
        r" API knows \(did you mean colorways\?\)",
    ):
        read_matrix(path)


def test_a_header_cell_of_two_lines_is_named_on_one(tmp_path):
    """Alt+Enter in Excel's header cell: before, the error was two lines."""
    path = tmp_path / "looks.csv"
    path.write_text('prompt,"Size\n(ratio)"\nlinen shirt,square\n')
    with pytest.raises(click.ClickException, match=r"line 1, column Size \(ratio\) is not") as exc:
        read_items(path)
    assert "\n" not in exc.value.message


@pytest.mark.parametrize("matrix", [False, True])
def test_a_column_named_hash_is_named_not_read_as_a_note(tmp_path, matrix):
    """A sheet numbering its rows (``#,prompt,size``): before, its header was
    a note and the first row the header ("none is 'prompt' (it reads 1, ...)";
    a matrix's "column 1 is not ...")."""
    path = tmp_path / "looks.csv"
    path.write_text(f"# SS27\n#,{'prompts' if matrix else 'prompt'},size\n1,linen shirt,square\n")
    with pytest.raises(click.ClickException, match="line 2, column # is not a column the API"):
        (read_matrix if matrix else read_items)(path)
