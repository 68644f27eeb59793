"""What ``bff batch FILE`` reads from each kind of file: CSV with a header
row, JSON Lines, and a plain list of prompts (the first thing a designer
writes); a CSV without a ``prompt`` column is refused in words."""

from __future__ import annotations

import click
import pytest

from app.cli.batches import read_items


def test_csv_rows_are_requests_with_settings_in_their_columns(tmp_path):
    path = tmp_path / "looks.csv"
    path.write_text('prompt,size,count\nlinen shirt,16:9,2\n\n"wool coat, navy",,\n')
    assert read_items(path) == [
        {"prompt": "linen shirt", "settings": {"size": "16:9", "count": 2}},
        {"prompt": "wool coat, navy"},
    ]


def test_a_plain_list_is_one_prompt_a_line_commas_and_all(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("linen shirt\n\nwool coat, in a navy colourway\n")
    assert read_items(path) == [
        {"prompt": "linen shirt"},
        {"prompt": "wool coat, in a navy colourway"},
    ]


def test_a_csv_without_a_prompt_column_is_refused_saying_what_it_read(tmp_path):
    path = tmp_path / "looks.csv"
    path.write_text("linen shirt\nwool coat\n")
    with pytest.raises(click.ClickException) as exc:
        read_items(path)
    message = exc.value.message
    assert "none is 'prompt'" in message and "linen shirt" in message and ".txt" in message


def test_json_lines_are_requests_as_the_api_takes_them(tmp_path):
    path = tmp_path / "looks.jsonl"
    path.write_text('{"prompt": "a red coat", "settings": {"provider": "local"}}\n\n')
    assert read_items(path) == [{"prompt": "a red coat", "settings": {"provider": "local"}}]


@pytest.mark.parametrize(
    "name,text,says",
    [
        ("prompts.txt", "Prompt\tsize\nlinen shirt\t16:9\n", "looks like a header row"),
        ("prompts.txt", "prompts\nlinen shirt\n", "looks like a header row"),
        ("looks.csv", "prompt,size\nwool coat, navy,16:9\n", "quote a prompt with commas"),
        ("prompts.txt", "\n  \n", "no prompts"),
    ],
)
def test_what_would_send_the_wrong_prompts_is_refused_in_words(tmp_path, name, text, says):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(click.ClickException, match=says):
        read_items(path)


def test_a_prompt_in_square_brackets_is_a_prompt_not_json(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("[SS27] linen shirt\n")
    assert read_items(path) == [{"prompt": "[SS27] linen shirt"}]
