"""What ``bff batch FILE`` reads from each kind of file: CSV with a header
row, JSON Lines, and a plain list of prompts (the first thing a designer
writes); a CSV without a ``prompt`` column, a file not in UTF-8 and a bad
cell are refused in words. And ``bff batch download`` when the archive is
cut short."""

from __future__ import annotations

import errno
import io
import zipfile

import click
import pytest
import requests
from click.testing import CliRunner

from app.cli import batches
from app.cli.batches import batch_cli, read_items, read_matrix


@pytest.mark.parametrize(
    "name,text,items",
    [
        (
            "looks.csv",
            'prompt,size,count\nlinen shirt,16:9,2\n\n"wool coat, navy",,\n',
            [
                {"prompt": "linen shirt", "settings": {"size": "16:9", "count": 2}},
                {"prompt": "wool coat, navy"},
            ],
        ),
        (
            "looks.csv",  # refine columns, typed as the API types them
            "prompt,upscale,removeBackground\nlinen shirt,2,Yes\nwool coat,4,FALSE\n",
            [
                {"prompt": "linen shirt", "settings": {"upscale": 2, "removeBackground": True}},
                {"prompt": "wool coat", "settings": {"upscale": 4, "removeBackground": False}},
            ],
        ),
        (
            "prompts.txt",  # a plain list: one prompt a line, commas and all
            "linen shirt\n\nwool coat, in a navy colourway\n",
            [{"prompt": "linen shirt"}, {"prompt": "wool coat, in a navy colourway"}],
        ),
        ("prompts.txt", "[SS27] linen shirt\n", [{"prompt": "[SS27] linen shirt"}]),  # not JSON
        (
            "looks.jsonl",
            '{"prompt": "a red coat", "settings": {"provider": "local"}}\n\n',
            [{"prompt": "a red coat", "settings": {"provider": "local"}}],
        ),
        (
            "looks.json",
            '[\n  {"prompt": "a red coat"},\n  {"prompt": "a navy blazer"}\n]\n',
            [{"prompt": "a red coat"}, {"prompt": "a navy blazer"}],
        ),
        # A prompt alone is a request in JSON too (was refused as "not a valid dictionary").
        (
            "looks.json",
            '["a red coat", {"prompt": "a navy blazer", "settings": {"count": 2}}]',
            [{"prompt": "a red coat"}, {"prompt": "a navy blazer", "settings": {"count": 2}}],
        ),
        (
            "looks.jsonl",
            '"a red coat"\n{"prompt": "a navy blazer", "settings": {"count": 2}}\n',
            [{"prompt": "a red coat"}, {"prompt": "a navy blazer", "settings": {"count": 2}}],
        ),
    ],
    ids=["csv", "csv-refine", "txt", "txt-brackets", "jsonl", "json", "json-str", "jsonl-str"],
)
def test_each_kind_of_file_reads_as_the_requests_the_api_takes(tmp_path, name, text, items):
    path = tmp_path / name
    path.write_text(text)
    assert read_items(path) == items


# ------------------------------------------------ only the lines the designer meant


@pytest.mark.parametrize(
    "name,data,items",
    [
        (  # Notepad on Windows: a byte-order mark, CRLF; notes and spaces typed freely
            "prompts.txt",
            "\ufeff# autumn drop\r\nlinen shirt  \r\n\r\n   # not this one\r\n"
            "\twool coat, navy\t\r\n",
            [{"prompt": "linen shirt"}, {"prompt": "wool coat, navy"}],
        ),
        ("prompts.txt", "linen shirt #1 of 3\n", [{"prompt": "linen shirt #1 of 3"}]),
        (  # before, refused as "a header row" for its first six letters
            "prompts.txt",
            "Prompted by the 70s: flared denim\npromptly cut blazer\n",
            [{"prompt": "Prompted by the 70s: flared denim"}, {"prompt": "promptly cut blazer"}],
        ),
        (  # Excel's "CSV UTF-8": a byte-order mark, CRLF; a note above the header
            "looks.csv",
            "\ufeff# SS27 looks\r\nprompt,size\r\nlinen shirt,16:9\r\n# wool coat,\r\n",
            [{"prompt": "linen shirt", "settings": {"size": "16:9"}}],
        ),
        (  # a note row exported by a spreadsheet has its empty cells
            "looks.csv",
            "prompt,size\n# autumn drop,,\nlinen shirt,\n",
            [{"prompt": "linen shirt"}],
        ),
        (  # inside a quoted cell a line is the cell's, "#" and blank alike
            "looks.csv",
            'prompt,size\n"linen shirt\n\n# hand-rolled hem",square\n',
            [{"prompt": "linen shirt\n\n# hand-rolled hem", "settings": {"size": "square"}}],
        ),
        (  # Excel quotes a note typed with a comma: before, a paid prompt "# SS27: linen, wool"
            "looks.csv",
            '\ufeffprompt,size\r\n"# SS27: linen, wool",\r\nlinen shirt,square\r\n',
            [{"prompt": "linen shirt", "settings": {"size": "square"}}],
        ),
        (  # and above the header: before, read as the header ("none is 'prompt'")
            "looks.csv",
            '"# SS27: linen, wool",\n# SS27, hand-typed\nprompt,size\nlinen shirt,\n',
            [{"prompt": "linen shirt"}],
        ),
        (  # a note typed in another column: before, a request without a prompt
            "looks.csv",
            "prompt,size\nlinen shirt,\n,# check the sizes\n",
            [{"prompt": "linen shirt"}],
        ),
        (  # the same prompt in another size is another request
            "looks.csv",
            "prompt,size\nlinen shirt,square\nlinen shirt,portrait\n",
            [
                {"prompt": "linen shirt", "settings": {"size": "square"}},
                {"prompt": "linen shirt", "settings": {"size": "portrait"}},
            ],
        ),
        ("looks.jsonl", '# SS27\n{"prompt": "a red coat"}\r\n', [{"prompt": "a red coat"}]),
        (  # a quote in a note opens no quoted cell: before, the next note was a prompt
            "looks.csv",
            'prompt,size\n# 5" heels\nlinen shirt,square\n# autumn drop\ncoat,\n',
            [{"prompt": "linen shirt", "settings": {"size": "square"}}, {"prompt": "coat"}],
        ),
        (  # nor does one inside a cell (inches), as the csv module reads it
            "looks.csv",
            'prompt,size\nboots with 3" heel,square\n# autumn drop\ncoat,\n',
            [{"prompt": 'boots with 3" heel', "settings": {"size": "square"}}, {"prompt": "coat"}],
        ),
        (  # only LF, CRLF and CR end a line, not a pasted line separator or form feed
            "prompts.txt",
            "linen shirt\u2028soft collar\nwool coat\x0cnavy\r\n",
            [{"prompt": "linen shirt\u2028soft collar"}, {"prompt": "wool coat\x0cnavy"}],
        ),
        ("looks.jsonl", '{"prompt": "a red\u2028coat"}\n', [{"prompt": "a red\u2028coat"}]),
        (  # Excel users capitalise headers: before, "none is 'prompt' (it reads Prompt, ...)"
            "looks.csv",
            "\ufeffPrompt,Size,Count,RemoveBackground\r\nlinen shirt,portrait,2,yes\r\n",
            [
                {
                    "prompt": "linen shirt",
                    "settings": {"size": "portrait", "count": 2, "removeBackground": True},
                }
            ],
        ),
    ],
    ids=[
        "txt-notepad",
        "txt-hash-inside",
        "txt-prompted",
        "csv-excel",
        "csv-note-row",
        "csv-quoted",
        "csv-quoted-note",
        "csv-quoted-note-above-header",
        "csv-note-other-column",
        "csv-sizes",
        "jsonl-note",
        "csv-note-quote",
        "csv-inches",
        "txt-line-ends",
        "jsonl-line-separator",
        "csv-capitalised",
    ],
)
def test_only_the_lines_meant_as_requests_are_sent(tmp_path, name, data, items):
    """Before, ``# autumn drop`` was a prompt (a paid generation) in a .txt
    and a CSV, and in a .txt a note above the prompts was read as a CSV header."""
    path = tmp_path / name
    path.write_bytes(data.encode())
    assert read_items(path) == items


@pytest.mark.parametrize(
    "name,text,says",
    [
        ("prompts.txt", "linen shirt\n# x\nwool coat\nLinen  Shirt \n", "line 4 repeats line 1"),
        ("looks.csv", "prompt,size\nlinen shirt,square\n\nlinen shirt,square\n", "line 4 repeats"),
        ("looks.jsonl", '"a red coat"\n{"prompt": "a red coat"}\n', "line 2 repeats line 1"),
        ("looks.json", '["a red coat", "A red coat"]', "request 2 repeats request 1"),
    ],
)
def test_a_request_twice_is_refused_before_it_is_paid_twice(tmp_path, name, text, says):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(click.ClickException, match=says) as exc:
        read_items(path)
    assert "ask for more (count, 1 to 4: Images on the web page)" in exc.value.message


def test_the_help_says_what_a_line_of_the_file_is():
    result = CliRunner().invoke(batch_cli, ["--help"])
    assert "blank lines and lines starting with # are notes" in " ".join(result.output.split())


def test_a_matrix_csv_leaves_notes_out_too(tmp_path):
    """Before, Excel's quoted note (``"# linen, wool",``) was a prompt of the matrix."""
    path = tmp_path / "axes.csv"
    path.write_bytes(
        b'\xef\xbb\xbfPrompt,Colorways\r\n# SS27,\r\n"# linen, wool",\r\nblazer,navy\r\ntrench,\r\n'
    )
    assert read_matrix(path) == {"prompts": ["blazer", "trench"], "colorways": ["navy"]}


def test_a_csv_without_a_prompt_column_is_refused_saying_what_it_read(tmp_path):
    path = tmp_path / "looks.csv"
    path.write_text("linen shirt\nwool coat\n")
    with pytest.raises(click.ClickException) as exc:
        read_items(path)
    message = exc.value.message
    assert "none is 'prompt'" in message and "linen shirt" in message and ".txt" in message


@pytest.mark.parametrize(
    "name,text,says",
    [
        ("prompts.txt", "Prompt\tsize\nlinen shirt\t16:9\n", "looks like a header row"),
        ("prompts.txt", "prompts\nlinen shirt\n", "looks like a header row"),
        ("prompts.txt", "Prompts: SS27\nlinen shirt\n", "looks like a header row"),
        # Two cells pasted from a sheet: before, only a first line was refused for its tab.
        ("prompts.txt", "wool coat\nlinen shirt\t16:9\n", "line 2 holds a tab, as cells"),
        ("looks.csv", "prompt,size\nwool coat, navy,16:9\n", "quote a prompt with commas"),
        ("prompts.txt", "\n  \n", "no prompts"),
        ("looks.csv", "prompt,size\n", "no requests in it"),
        ("looks.json", "[]", "no requests in it"),
    ],
)
def test_what_would_send_the_wrong_prompts_is_refused_in_words(tmp_path, name, text, says):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(click.ClickException, match=says):
        read_items(path)


@pytest.mark.parametrize("read", [read_items, read_matrix])
def test_a_file_not_in_utf8_is_refused_in_words(tmp_path, read):
    path = tmp_path / "looks.csv"
    path.write_bytes("prompt\nrobe en soie \xe9cru\n".encode("latin-1"))  # Excel's "CSV"
    with pytest.raises(click.ClickException, match="is not UTF-8 text: save it as UTF-8"):
        read(path)


@pytest.mark.parametrize(
    "text,says",
    [
        ("prompt,removeBackground\n\nlinen shirt,1\nwool coat,maybe\n", "line 4, column remov"),
        ("prompt,upscale\nlinen shirt,2x\n", "line 2, column upscale: '2x' is not a whole"),
        ("prompt,count\nlinen shirt,two\n", "line 2, column count: 'two' is not a whole"),
    ],
)
def test_a_bad_cell_is_named_by_its_line_and_column(tmp_path, text, says):
    path = tmp_path / "looks.csv"
    path.write_text(text)
    with pytest.raises(click.ClickException, match=says):
        read_items(path)


class _Archive:
    """The archive response: ``body``'s bytes, then ``error`` if any."""

    status_code = 200

    def __init__(self, body: bytes, error: Exception | None = None) -> None:
        self.body, self.error = body, error

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def iter_content(self, size: int):
        yield self.body
        if self.error:
            raise self.error


def test_an_archive_cut_short_is_one_sentence_and_leaves_no_part_file(tmp_path, monkeypatch):
    broken = requests.exceptions.ChunkedEncodingError("Connection broken: InvalidChunkLength")
    monkeypatch.setattr(batches, "_api", lambda *a, **k: _Archive(b"PK\x03\x04" * 25, broken))
    folder = tmp_path / "ss27"
    result = CliRunner().invoke(batch_cli, ["download", "bat_1", str(folder)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "the archive arrived incomplete: the connection broke after 100 bytes; try again" in (
        result.output
    )
    assert list(folder.iterdir()) == []


def test_images_missing_from_storage_are_counted_after_the_download(tmp_path, monkeypatch):
    body = io.BytesIO()
    with zipfile.ZipFile(body, "w") as archive:
        archive.writestr("001-gen_a-0.png", b"\x89PNG")
        archive.writestr(
            "manifest.csv",
            "generation_id,status,file,note\ngen_a,completed,001-gen_a-0.png,\n"
            "gen_b,completed,,image missing from storage\n",
        )
    monkeypatch.setattr(batches, "_api", lambda *a, **k: _Archive(body.getvalue()))
    result = CliRunner().invoke(batch_cli, ["download", "bat_1", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "1 images and manifest.csv" in result.output
    assert "not found in storage, so not here: 1 image(s)" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["001-gen_a-0.png", "manifest.csv"]


@pytest.mark.parametrize(
    "member,size,says",
    [
        ("../outside.png", 10, "files a batch archive does not"),
        ("notes.txt", 10, "files a batch archive does not"),
        ("001-gen_a-0.png", 50 * 2**20, "unpacks to far more than it holds"),
    ],
)
def test_an_archive_the_server_would_not_write_is_not_opened(
    tmp_path, monkeypatch, member, size, says
):
    """A compromised server could send a zip bomb, or names of its own choosing."""
    body = io.BytesIO()
    with zipfile.ZipFile(body, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, b"\0" * size)
        archive.writestr("manifest.csv", "generation_id,status,file,note\n")
    monkeypatch.setattr(batches, "_api", lambda *a, **k: _Archive(body.getvalue()))
    folder = tmp_path / "ss27"
    result = CliRunner().invoke(batch_cli, ["download", "bat_1", str(folder)])
    assert result.exit_code == 1 and says in result.output, result.output
    assert list(folder.iterdir()) == [] and not (tmp_path / "outside.png").exists()


def test_a_folder_that_cannot_be_made_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr(batches, "_api", lambda *a, **k: _Archive(b""))
    (tmp_path / "looks").write_text("a file, not a folder")
    folder = tmp_path / "looks" / "ss27"
    result = CliRunner().invoke(batch_cli, ["download", "bat_1", str(folder)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output == f"Error: cannot make {folder}: Not a directory\n"


def test_a_disk_that_fills_up_is_one_sentence_and_leaves_no_part_file(tmp_path, monkeypatch):
    def full(resp, part):
        part.write_bytes(b"PK")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batches, "_api", lambda *a, **k: _Archive(b""))
    monkeypatch.setattr(batches, "_save", full)
    result = CliRunner().invoke(batch_cli, ["download", "bat_1", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output == f"Error: cannot write to {tmp_path}: No space left on device\n"
    assert list(tmp_path.iterdir()) == []
