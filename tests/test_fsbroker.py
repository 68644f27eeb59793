"""The embedded broker under concurrent producers and consumers.

kombu's filesystem transport creates a message file and then writes it, and a
consumer may take the file in between and read "" (kombu issue #1551): the
Celery worker dies on the JSONDecodeError and `bff dev` stops everything. The
test drives the transport exactly as the embedded configuration sets it up
(``celery_config``): producer processes (like `bff dev`'s web and beat)
publish while consumer threads poll the same folder."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections import Counter
from pathlib import Path
from queue import Empty

from kombu import Connection

from app.platform.config import Settings
from app.platform.queue import celery_config

PRODUCERS, CONSUMERS, PER_PRODUCER = 1, 3, 200
# Large bodies widen the window between creating a file and finishing its write.
PAD = "x" * 100_000


def embedded_connection(var_dir: Path) -> Connection:
    conf = celery_config(Settings.from_env({"BFF_VAR_DIR": str(var_dir)}))
    return Connection(
        conf["broker_url"],
        transport=conf.get("broker_transport"),
        transport_options=conf["broker_transport_options"],
    )


def produce(var_dir: Path, name: str, n: int, go) -> None:
    with embedded_connection(var_dir) as conn:
        queue = conn.SimpleQueue(name)
        go.wait()
        for i in range(PER_PRODUCER):
            queue.put(f"{n}-{i}" + PAD)


def test_every_message_is_received_whole_and_exactly_once(tmp_path):
    # A queue name of its own: kombu remembers bindings per process, and would
    # not write them to this test's folder had another test bound the name.
    name = f"race-{uuid.uuid4().hex}"
    # Declared once up front: concurrent first declarations race on kombu's
    # exchange table file, a different (one-time) problem than this test's.
    with embedded_connection(tmp_path) as conn:
        conn.SimpleQueue(name).close()

    # Producers are forked before any thread starts, then wait for `go`.
    fork = multiprocessing.get_context("fork")
    go = fork.Event()
    producers = [
        fork.Process(target=produce, args=(tmp_path, name, n, go)) for n in range(PRODUCERS)
    ]
    for p in producers:
        p.start()

    received: list[str] = []
    errors: list[Exception] = []
    lock = threading.Lock()
    producers_done = threading.Event()

    def consume() -> None:
        with embedded_connection(tmp_path) as conn:
            queue = conn.SimpleQueue(name)
            # Poll without sleeping, so consumers list the folder while the
            # producers are creating files in it; stop once the producers are
            # done and the folder is drained.
            while True:
                try:
                    message = queue.get_nowait()
                except Empty:
                    if producers_done.is_set():
                        return
                    continue
                except Exception as exc:  # the worker would die here; count and go on
                    with lock:
                        errors.append(exc)
                    continue
                message.ack()
                with lock:
                    received.append(message.payload.removesuffix(PAD))

    consumers = [threading.Thread(target=consume) for _ in range(CONSUMERS)]
    for t in consumers:
        t.start()
    go.set()
    for p in producers:
        p.join()
    producers_done.set()
    for t in consumers:
        t.join()

    assert [p.exitcode for p in producers] == [0] * PRODUCERS
    assert not errors, f"{len(errors)} reads failed, the first: {errors[0]!r}"
    assert [body for body, n in Counter(received).items() if n > 1] == []
    assert sorted(received) == sorted(
        f"{n}-{i}" for n in range(PRODUCERS) for i in range(PER_PRODUCER)
    )
    # Taken files are renamed beside the queue, then deleted: none is left over.
    assert list((tmp_path / "broker").rglob("*.msg*")) == []


def test_celery_connects_through_the_fixed_transport(tmp_path):
    """``broker_transport`` wins over the URL's scheme, for reads and writes."""
    from celery import Celery

    from app.platform import fsbroker

    celery_app = Celery(set_as_current=False)
    celery_app.config_from_object(celery_config(Settings.from_env({"BFF_VAR_DIR": str(tmp_path)})))
    assert celery_app.conf.broker_url == "filesystem://localhost/"
    for conn in (celery_app.connection_for_write(), celery_app.connection_for_read()):
        with conn:
            assert isinstance(conn.transport, fsbroker.Transport)


def test_draining_gives_the_worker_loop_back_within_a_tenth_of_a_second(tmp_path, monkeypatch):
    """Celery's loop for transports without an event loop drains with a 2 s
    timeout and acks finished tasks only between drains: a full prefetch
    window of finished tasks would hold up new work that long. The embedded
    transport waits at most ``DRAIN_WAIT`` for a message, whatever it is asked."""
    from kombu.transport import filesystem

    from app.platform import fsbroker

    asked: list[float | None] = []
    monkeypatch.setattr(
        filesystem.Transport, "drain_events", lambda self, conn, timeout=None: asked.append(timeout)
    )
    with embedded_connection(tmp_path) as conn:
        assert isinstance(conn.transport, fsbroker.Transport)
        conn.drain_events(timeout=2.0)
        conn.drain_events(timeout=0.05)
        conn.drain_events()  # no timeout: block until a message, as asked
    assert asked == [fsbroker.DRAIN_WAIT, 0.05, None] and fsbroker.DRAIN_WAIT <= 0.1


def test_a_message_of_a_lower_priority_number_is_taken_first(tmp_path):
    """As on the Redis broker (``test_queue_order``): priority 0 first, first
    in first out within a priority, so a single job sent behind a batch does
    not wait for the whole batch, and started generations finish first."""
    from app.platform.queue import priority

    name = f"order-{uuid.uuid4().hex}"  # (see the first test)
    sent = [
        ("batch analyze", priority("analyze", background=True)),
        ("batch generate", priority("generate", background=True)),
        ("single analyze", priority("analyze")),
        ("batch analyze 2", priority("analyze", background=True)),
        ("single route", priority("route")),
        ("maintenance", None),  # no priority: as 0
        ("single analyze 2", priority("analyze")),
    ]
    with embedded_connection(tmp_path) as conn:
        queue = conn.SimpleQueue(name)
        for body, pri in sent:
            queue.put(body, **({} if pri is None else {"priority": pri}))
        taken = []
        for _ in sent:
            message = queue.get_nowait()
            message.ack()
            taken.append(message.payload)
        queue.close()
    assert taken == [
        "maintenance",
        "single route",
        "single analyze",
        "single analyze 2",
        "batch generate",
        "batch analyze",
        "batch analyze 2",
    ]


def test_a_message_file_is_stamped_with_the_wall_clock_time(tmp_path):
    """The queue folder outlives a reboot, which restarts the monotonic clock:
    stamped by it, a message left from before the reboot would be taken after
    every newer message of its priority (by the previous boot's uptime). The
    wall clock goes on, so they stay first in, first out."""
    import time

    name = f"stamp-{uuid.uuid4().hex}"  # (see the first test)
    with embedded_connection(tmp_path) as conn:
        queue = conn.SimpleQueue(name)
        before = time.time_ns()
        queue.put("body", priority=4)
        after = time.time_ns()
        queue.close()
    (path,) = (tmp_path / "broker" / "queue").glob(f"*.{name}.msg")
    pri, stamp, _ = path.name.split("_", 2)
    assert pri == "4" and len(stamp) == 20 and before <= int(stamp) <= after
