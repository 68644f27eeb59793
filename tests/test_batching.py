"""The combiner (app.batching) on its own: a lone call is a batch of one at
once, calls arriving during a batch form the next one, a failing batch fails
all its calls and never leaves one waiting, and a forked child starts with
state of its own."""

from __future__ import annotations

import threading
import time

import pytest

from app import batching
from app.batching import Combiner


def _threads(n: int, target) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def _join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a call was left waiting"


def _queued(combiner: Combiner, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(combiner._here().queue) < n:
        assert time.monotonic() < deadline, "the calls never queued"
        time.sleep(0.001)


def _behind_a_held_batch(combiner, started: list, release, first, n: int, target) -> None:
    """``first`` leads a batch that ``run`` holds until ``release``; once it
    runs (``started`` is no longer empty), ``n`` calls of ``target`` queue
    behind it; then the batch is released and every call must finish."""
    leader = _threads(1, first)
    while not started:
        time.sleep(0.001)
    rest = _threads(n, target)
    _queued(combiner, n)
    release.set()
    _join(leader + rest)


def test_a_lone_call_is_its_own_batch_at_once():
    batches: list[list[int]] = []
    combiner: Combiner[int, int] = Combiner(lambda items: batches.append(list(items)) or items)
    assert [combiner.submit(i) for i in range(3)] == [0, 1, 2]
    assert batches == [[0], [1], [2]]


def test_calls_arriving_during_a_batch_make_the_next_batch():
    release, batches = threading.Event(), []

    def run(items):
        batches.append(list(items))
        if len(batches) == 1:
            release.wait(10)  # the first batch is in flight while the others arrive
        return [i * 10 for i in items]

    combiner: Combiner[int, int] = Combiner(run)
    results: dict[int, int] = {}
    _behind_a_held_batch(
        combiner,
        batches,
        release,
        lambda i: results.__setitem__(-1, combiner.submit(-1)),
        8,
        lambda i: results.__setitem__(i, combiner.submit(i)),
    )
    assert results == {i: i * 10 for i in range(-1, 8)}
    assert batches[0] == [-1] and sorted(batches[1]) == list(range(8)) and len(batches) == 2
    assert combiner._here().busy is False and combiner._here().queue == []


def test_a_batch_is_at_most_max_batch_long():
    release, batches = threading.Event(), []

    def run(items):
        batches.append(len(items))
        if len(batches) == 1:
            release.wait(10)
        return items

    combiner: Combiner[int, int] = Combiner(run, max_batch=3)
    _behind_a_held_batch(combiner, batches, release, combiner.submit, 7, combiner.submit)
    assert batches == [1, 3, 3, 1]


def test_a_failing_batch_fails_every_call_in_it_and_the_next_batch_still_runs():
    release, calls = threading.Event(), []

    def run(items):
        calls.append(list(items))
        if len(calls) == 1:
            release.wait(10)
            raise ValueError("the batch failed")
        return items

    combiner: Combiner[int, int] = Combiner(run)
    errors: dict[int, BaseException] = {}
    results: dict[int, int] = {}

    def call(i: int) -> None:
        try:
            results[i] = combiner.submit(i)
        except ValueError as exc:
            errors[i] = exc

    _behind_a_held_batch(combiner, calls, release, lambda i: call(100), 4, call)
    assert set(errors) == {100} and results == {i: i for i in range(4)}


def test_an_interrupted_leader_leaves_no_follower_waiting():
    release, calls = threading.Event(), []

    def run(items):
        calls.append(list(items))
        release.wait(10)
        raise KeyboardInterrupt  # not an Exception: it goes on up the leader's stack

    combiner: Combiner[int, int] = Combiner(run, max_batch=64)
    outcome: dict[int, str] = {}

    def call(i: int) -> None:
        try:
            combiner.submit(i)
        except KeyboardInterrupt:
            outcome[i] = "interrupted"
        except RuntimeError:
            outcome[i] = "failed"

    _behind_a_held_batch(combiner, calls, release, lambda i: call(100), 3, call)
    # Each leader's interruption goes on up its own stack (the next batch's
    # leader was interrupted too); its followers fail: nobody hangs.
    assert outcome[100] == "interrupted"
    assert sorted(outcome.values()) == ["failed", "failed", "interrupted", "interrupted"]


def test_wrong_number_of_results_fails_the_batch():
    combiner: Combiner[int, int] = Combiner(lambda items: [])
    with pytest.raises(RuntimeError, match="0 results for a batch of 1"):
        combiner.submit(1)
    assert combiner._here().busy is False


def test_a_forked_child_starts_with_its_own_state(monkeypatch):
    combiner: Combiner[int, int] = Combiner(lambda items: items)
    combiner.submit(1)
    parent = combiner._here()
    parent.busy = True  # as if a batch were in flight in the parent when it forked
    monkeypatch.setattr(batching.os, "getpid", lambda: parent.pid + 1)
    assert combiner.submit(2) == 2  # the child does not wait for the parent's batch
    assert combiner._here() is not parent


def test_many_threads_each_get_their_own_result():
    running, most = [0], [0]
    guard = threading.Lock()

    def run(items):
        with guard:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.0005)  # I/O: the GIL is released, others queue
        with guard:
            running[0] -= 1
        return [i * 2 for i in items]

    combiner: Combiner[int, int] = Combiner(run, max_batch=5)
    results: dict[int, int] = {}

    def call(t: int) -> None:
        for j in range(30):
            results[t * 100 + j] = combiner.submit(t * 100 + j)

    _join(_threads(16, call))
    assert results == {i: i * 2 for i in results} and len(results) == 16 * 30
    assert most[0] == 1  # one batch in flight at a time
    state = combiner._here()
    assert state.busy is False and state.queue == []


def test_max_batch_is_at_least_one():
    with pytest.raises(ValueError):
        Combiner(lambda items: items, max_batch=0)
