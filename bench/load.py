"""A closed-loop load driver for the pipeline benchmarks: keep ``inflight``
generations outstanding, submit the next as one finishes, and time each from
submit to its ``done`` event on Redis (our ``store`` stage and the baseline's
last task both publish it on ``bff:events:<id>``)."""

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
    """Subscribed to every generation's channel. Redis pub/sub ignores db
    numbers, so this also hears other users of the server (test sessions):
    ``drive`` keeps only the generations it submitted.

    It reads the subscription's raw bytes and decodes only ``done`` events:
    ours announces 15 events per generation and the bare chain 1, and a
    listener that parsed each with redis-py spent ~2 ms of CPU per generation
    of ours on the same two cores as the system it measures."""

    def __init__(self, redis_url: str) -> None:
        import redis

        self.events: queue.Queue[tuple[str, float, str]] = queue.Queue()
        self.pubsub = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe("bff:events:*")
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        time.sleep(0.2)  # the subscription is live before the first submit

    def _read(self) -> None:
        while True:
            try:
                message = self.pubsub.get_message(timeout=1.0)
            except Exception:  # closed
                return
            if message is None or not message["data"].startswith(_DONE):
                continue
            data = json.loads(message["data"])["data"]
            self.events.put((data["id"], time.monotonic(), data["status"]))

    def close(self) -> None:
        self.pubsub.close()
        self.thread.join(2)


_DONE = b'{"event": "done"'


def drive(
    listener: Listener,
    submit: Callable[[int], str],
    n: int,
    inflight: int,
    timeout: float = 600.0,
) -> Run:
    """Closed loop: ``inflight`` outstanding until ``n`` have finished."""
    run = Run()
    early: dict[str, tuple[float, str]] = {}  # done before submit() returned
    deadline = time.monotonic() + timeout
    run.started = time.monotonic()
    outstanding = 0
    while len(run.done) < n:
        if outstanding < inflight and len(run.submitted) < n:
            t0 = time.monotonic()
            gid = submit(len(run.submitted))
            run.submitted[gid] = t0
            outstanding += 1
            if gid in early:
                run.done[gid] = early.pop(gid)
                outstanding -= 1
            continue
        try:
            gid, t, status = listener.events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(
                f"{len(run.done)}/{n} generations finished within {timeout:.0f} s"
            ) from None
        if gid in run.submitted:
            if gid not in run.done:
                run.done[gid] = (t, status)
                outstanding -= 1
        else:
            early[gid] = (t, status)
    run.finished = max(t for t, _ in run.done.values())
    return run
