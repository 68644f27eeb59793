"""The closed-loop driver of the pipeline benchmarks, the same for ours and the
baselines: ``submitters`` threads keep ``inflight`` jobs outstanding, each
timed from the start of its submit to its ``done`` message on Redis (our
``store`` stage and the bare chain's last task both publish one on
``bff:events:<id>``)."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .harness import percentile


@dataclass
class Run:
    submitted: dict[str, float] = field(default_factory=dict)
    done: dict[str, tuple[float, str]] = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0
    submit_cpu: float = 0.0  # CPU seconds of the submitting threads inside submit()
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def latencies(self) -> list[float]:
        return sorted(self.done[g][0] - t for g, t in self.submitted.items() if g in self.done)

    @property
    def failed(self) -> int:
        return sum(1 for _, status in self.done.values() if status != "completed")

    @property
    def makespan(self) -> float:
        return self.finished - self.started

    @property
    def throughput(self) -> float:
        return len(self.done) / self.makespan if self.makespan else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)


class Listener:
    """Pattern-subscribed to every job's channel, with redis-py's pub/sub
    worker thread. Pub/sub ignores db numbers, so it also hears other users
    of the server (test sessions): ``drive`` keeps only the jobs it submitted."""

    def __init__(self, redis_url: str) -> None:
        import redis

        self.events: queue.Queue[tuple[str, float, str]] = queue.Queue()
        self.pubsub = redis.Redis.from_url(redis_url).pubsub()
        self.pubsub.psubscribe(**{"bff:events:*": self._on_message})
        # The confirmation: from here on, every publish reaches us.
        confirmed = self.pubsub.get_message(timeout=5.0)
        if confirmed is None or confirmed["type"] != "psubscribe":
            raise RuntimeError(f"no subscription confirmed: {confirmed!r}")
        self.thread = self.pubsub.run_in_thread(sleep_time=1.0, daemon=True)

    def _on_message(self, message: dict) -> None:
        now = time.monotonic()
        body = json.loads(message["data"])
        if body.get("event") == "done":
            self.events.put((body["data"]["id"], now, body["data"]["status"]))

    def close(self) -> None:
        self.thread.stop()
        self.thread.join(5)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Loop:
    """The shared state of one ``drive``: slots, counts, and jobs heard of
    before their submit returned."""

    def __init__(self, submit: Callable[[int], str], n: int, inflight: int) -> None:
        self.submit, self.run, self.lock = submit, Run(), threading.Lock()
        self.slots = threading.Semaphore(inflight)
        self.count = iter(range(n))
        self.early: dict[str, tuple[float, str]] = {}  # done before submit() returned
        self.errors: list[Exception] = []

    def submitter(self, timeout: float) -> None:
        cpu = 0.0
        try:
            while self.slots.acquire(timeout=timeout):
                with self.lock:
                    i = next(self.count, None)
                if i is None:
                    return
                c0, t0 = time.thread_time(), time.monotonic()
                gid = self.submit(i)
                cpu += time.thread_time() - c0
                with self.lock:
                    self.run.submitted[gid] = t0
                    if gid in self.early:
                        self._finish(gid, *self.early.pop(gid))
        except Exception as exc:
            self.errors.append(exc)
        finally:
            with self.lock:
                self.run.submit_cpu += cpu

    def heard(self, gid: str, t: float, status: str) -> None:
        with self.lock:
            if gid in self.run.submitted:
                self._finish(gid, t, status)
            else:  # not submitted yet, or someone else's
                self.early[gid] = (t, status)

    def _finish(self, gid: str, t: float, status: str) -> None:  # under the lock
        if gid not in self.run.done:
            self.run.done[gid] = (t, status)
            self.slots.release()


def drive(
    listener: Listener,
    submit: Callable[[int], str],
    n: int,
    inflight: int,
    submitters: int = 1,
    timeout: float = 600.0,
) -> Run:
    """Closed loop: at most ``inflight`` outstanding until ``n`` have finished."""
    loop = _Loop(submit, n, inflight)
    threads = [
        threading.Thread(target=loop.submitter, args=(timeout,), daemon=True)
        for _ in range(submitters)
    ]
    deadline = time.monotonic() + timeout
    loop.run.started = time.monotonic()
    for t in threads:
        t.start()
    while len(loop.run.done) < n and not loop.errors:
        try:
            loop.heard(*listener.events.get(timeout=1.0))
        except queue.Empty:
            if time.monotonic() > deadline:
                done = len(loop.run.done)
                raise TimeoutError(f"{done}/{n} finished within {timeout:.0f} s") from None
    for _ in threads:
        loop.slots.release()  # wake the submitters waiting for a slot that never comes
    for t in threads:
        t.join(30)
    if loop.errors:
        raise loop.errors[0]
    loop.run.finished = max(t for t, _ in loop.run.done.values())
    return loop.run
