"""Ids (app.models.new_id) and task ids come from os.urandom drawn in
chunks (app.randomness): unique, well formed, and a forked child never
repeats its parent's."""

from __future__ import annotations

import os
import re
import threading

from app import randomness
from app.models import new_id


def test_ids_are_unique_and_well_formed_across_threads():
    ids: list[str] = []

    def draw() -> None:
        ids.extend(new_id("gen") for _ in range(2000))

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == len(ids) == 16000
    assert all(re.fullmatch(r"gen_[0-9a-f]{24}", i) for i in ids)


def test_a_forked_child_does_not_repeat_its_parents_ids():
    new_id("gen")  # the parent holds a partly used chunk
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out without any cleanup
        os.write(write, new_id("gen").encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    assert child != new_id("gen")


def test_a_chunk_is_used_up_before_the_next_is_drawn(monkeypatch):
    drawn: list[int] = []
    real = os.urandom
    monkeypatch.setattr(randomness.os, "urandom", lambda n: drawn.append(n) or real(n))
    source = randomness.RandomBytes()
    taken = [source.take(12) for _ in range(randomness.RandomBytes.CHUNK // 12 + 1)]
    assert drawn == [randomness.RandomBytes.CHUNK, randomness.RandomBytes.CHUNK]
    assert len(set(taken)) == len(taken)
